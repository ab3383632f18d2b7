"""ReNet blocks inserted into a segmentation_models_pytorch model (``Unet``, ``FPN``, ...), keeping its
encoder and decoder weights: ``add_renet(model)``.

The blocks act on the encoder's feature maps between the encoder and the decoder, through a forward
hook on ``model.encoder``, so every existing parameter keeps its name (checkpoints of the original model
still load) and the new ones live under ``model.renet``. Each block is the residual ``ReNetBlock``
(x + proj_out(BiGRU2d(proj_in(x)))) with ``proj_out`` zero-initialised: right after ``add_renet`` the
model computes exactly what it computed before, and training moves away from there.
"""
from __future__ import annotations

from typing import Sequence, Union

from torch import nn

from .blocks import ReNetBlock

__all__ = ["add_renet"]


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError("add_renet needs segmentation_models_pytorch: pip install 'brnnseg_kernels[smp]' "
                          "(or pip install segmentation-models-pytorch)") from e
    return smp


def add_renet(model: nn.Module, where: Union[str, Sequence[int]] = "deepest", rnn: str = "gru",
              reduction: int = 4) -> nn.Module:
    """Adds ReNet blocks to ``model`` (a segmentation_models_pytorch model; changed in place and returned).

    where: "deepest" (the bottleneck feature map), "skips" (every encoder feature map except the input
        itself and the deepest), "all" (both), or a list of feature indices (0 is the input image, as in
        ``model.encoder.out_channels``). A decoder that does not read a map (FPN skips the stride-2 one)
        leaves its block unused.
    rnn: the ReNet blocks' cell family ("gru", "lstm", "rnn").
    reduction: channel reduction inside each block (4: a 1x1 convolution to C/4 channels, sweeps with
        hidden C/8, back to C; 1: sweeps on C channels).
    """
    _import_smp()
    encoder = getattr(model, "encoder", None)
    channels = getattr(encoder, "out_channels", None)
    if encoder is None or channels is None:
        raise ValueError("add_renet: model must be a segmentation_models_pytorch model (with .encoder.out_channels), "
                         f"got {type(model).__name__}")
    if hasattr(model, "renet"):
        raise ValueError("add_renet: this model already has ReNet blocks (model.renet)")
    last = len(channels) - 1
    if isinstance(where, str):
        if where not in ("deepest", "skips", "all"):
            raise ValueError(f"add_renet: where must be 'deepest', 'skips', 'all' or a list of indices, got {where!r}")
        idx = {"deepest": [last], "skips": list(range(1, last)), "all": list(range(1, last + 1))}[where]
    else:
        idx = sorted(set(int(i) for i in where))
        if any(not 1 <= i <= last for i in idx):
            raise ValueError(f"add_renet: feature indices must be in [1, {last}], got {list(where)}")
    blocks = nn.ModuleDict()
    for i in idx:
        block = ReNetBlock(channels[i], rnn, reduction, 2)
        if isinstance(block.proj_out, nn.Conv2d):
            nn.init.zeros_(block.proj_out.weight)
            nn.init.zeros_(block.proj_out.bias)
        blocks[str(i)] = block
    model.renet = blocks

    def hook(module, inputs, features):
        return [model.renet[str(i)](f) if str(i) in model.renet else f for i, f in enumerate(features)]

    model._renet_hook = encoder.register_forward_hook(hook)
    return model
