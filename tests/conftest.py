import os

# Triton kernels run on CPU tensors through the interpreter; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import tempfile  # noqa: E402

# A fresh inductor cache per run: a cached graph would keep the fake kernels of an older build.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="brnnseg-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_seed():
    # Fresh random inputs every run, but a failure prints the seed so it can be replayed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed
