"""Smoke test of an installed wheel, run from outside the source tree (CI: `make wheel-check`):
import, `info`, a BiGRU2d forward+backward and both fused losses on the CPU, py.typed, the local version and the
build record, and no test-only simulator extension in the package."""
import importlib.util
import os
import subprocess
import sys

import torch

import brnnseg_kernels as bk

here = os.path.dirname(os.path.abspath(bk.__file__))
assert "site-packages" in here, f"imported from {here}, not from the installed wheel"
assert importlib.util.find_spec("brnnseg_kernels._sim") is None, "the simulator extension is in the wheel"
info = bk.build_info()
minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
tag = ("cu" + info["torch_cuda"].replace(".", "")) if info["with_cuda"] else "cpu"
from importlib.metadata import version  # noqa: E402

assert version("brnnseg_kernels").endswith(f"+{tag}torch{minor}"), (version("brnnseg_kernels"), tag, minor)
out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "info"], capture_output=True, text=True, check=True)
print(out.stdout)

torch.manual_seed(0)
layer = bk.BiGRU2d(4, 6)
x = torch.randn(2, 4, 9, 7, requires_grad=True)
y = layer(x)
y.square().mean().backward()
ref = bk.reference.renet("gru", x.detach(), {"rows": layer.rows.stacked(), "cols": layer.cols.stacked()})
assert torch.allclose(y, ref, rtol=1e-4, atol=1e-5) and torch.isfinite(x.grad).all()
logits = torch.randn(2, 1, 16, 16, requires_grad=True)
loss = bk.losses.BCEDiceLoss(pos_weight=5.0, boundary_weight=2.0)(logits, torch.rand(2, 1, 16, 16) > 0.5)
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
logits = torch.randn(2, 4, 16, 16, requires_grad=True)
loss = bk.losses.CEDiceLoss(boundary_weight=2.0)(logits, torch.randint(0, 4, (2, 16, 16)))
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
assert os.path.exists(os.path.join(here, "py.typed")), "py.typed is not in the wheel"
# The measured CUDA backend table (never slower than cuDNN on the GPUs it was measured on).
from brnnseg_kernels import tuning  # noqa: E402

assert tuning.table("sm_90") is not None, "tuning/sm90.json is not in the wheel"
print(f"wheel smoke test passed: brnnseg_kernels {version('brnnseg_kernels')}, CUDA kernels {info['with_cuda']}")
