"""Run under torchrun by tests/test_demo.py: a few DDP training steps of the demo trainer (gloo on the
CPU), then every rank saves its weights so the test can compare them."""
import os
import sys

import torch

from brnnseg_kernels.demo.data import SyntheticSegmentation
from brnnseg_kernels.demo.run import build_model, make_loss
from brnnseg_kernels.demo.train import TrainConfig, fit, init_distributed, rank

out = sys.argv[1]
torch.set_num_threads(1)
device = init_distributed("cpu")
data = SyntheticSegmentation("long-range", 8, "train", 0, 32).tensors()
val = SyntheticSegmentation("long-range", 4, "val", 0, 32).tensors()
model = build_model("brnn-unet", 0, base_channels=4, depth=2)
hist = fit("ddp", model, make_loss(2.0), data, val, TrainConfig(epochs=2, batch_size=2, progress=False, device=device),
           os.path.join(out, "ddp.pt"))
torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank()}.pt"))
torch.distributed.destroy_process_group()
