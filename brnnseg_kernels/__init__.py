"""brnnseg_kernels: fused bidirectional GRU/LSTM sweeps over feature maps (ReNet layers) for
image segmentation, with plain-PyTorch references and benchmarks against the cuDNN/PyTorch path."""
import torch  # noqa: F401  (loads libc10/libtorch before our library)

from ._compat import check_build as _check_build
from ._compat import check_isa_env as _check_isa_env


def build_info() -> dict:
    """What this build contains: torch version, whether CUDA kernels were built and for which archs."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:  # running from a tree that setup.py never built
        BUILD_INFO = {}
    return dict(BUILD_INFO)


_check_build(build_info())  # an ImportError naming both versions, not an undefined symbol
_check_isa_env()  # BRNNSEG_CPU_ISA: a ValueError for an unknown rung, before any kernel reads it
from . import _C  # noqa: F401,E402  (registers torch.ops.brnnseg.*)
from . import cells, dispatch, checks, ops, reference, functional, nn, losses, models, inference  # noqa: F401,E402

for _fam in cells.FAMILIES:  # the ReNet layers at the top level: bk.BiGRU2d, bk.BiLSTM2d, ...
    globals()[_fam.layer2d] = getattr(nn, _fam.layer2d)

explain = dispatch.explain  # bk.explain(model, x): which path every sweep takes, and why

__version__ = "0.1.0"

__all__ = [f.layer2d for f in cells.FAMILIES] + ["cells", "dispatch", "checks", "ops", "reference", "functional",
                                                 "nn", "losses", "models", "inference", "build_info",
                                                 "release_cpu_buffers", "cpu_isa", "explain"]


def cpu_isa() -> dict:
    """What the CPU kernels run on: ``vector`` (baseline, avx2, avx512: the GEMMs' and the loss loops'
    width), ``bf16`` (amx_bf16 where bfloat16 products run on AMX tiles, avx512_bf16 where on vdpbf16ps,
    none where bfloat16 sweeps' products run in float32), whether the CPU has AVX512-BF16 and AMX-BF16
    (``amx_bf16``: yes, no, or refused where the OS denied the tile state), and the cap
    ``BRNNSEG_CPU_ISA`` set (baseline, avx2, avx512, avx512_bf16, amx_bf16; none when unset)."""
    return dict(kv.split("=", 1) for kv in torch.ops.brnnseg.cpu_isa().split(";"))


def release_cpu_buffers() -> int:
    """Return the CPU kernels' idle cached buffers to the system; returns the bytes released.

    Large buffers of the CPU kernels (outputs, saved gates, gradients) come from a cache of freed
    blocks, so repeated calls do not fault in fresh memory; up to ``BRNNSEG_CPU_CACHE_MB`` (default
    1024, 0 disables) of idle blocks are kept."""
    return _C.release_cpu_buffers()

