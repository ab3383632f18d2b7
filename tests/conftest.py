import os
import sys
import tempfile

import torch

# Without a GPU, the Triton kernels run on CPU tensors through the interpreter; with one, compiled
# (TRITON_INTERPRET=1 set by hand still asks for the interpreter). Decided before triton is imported.
assert "triton" not in sys.modules, "conftest must run before triton is imported"
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# A fresh inductor cache per run: a cached graph would keep the fake kernels of an older build.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="brnnseg-inductor-"))

import pytest  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_seed():
    # Fresh random inputs every run, but a failure prints the seed so it can be replayed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed
