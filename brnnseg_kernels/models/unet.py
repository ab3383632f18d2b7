"""U-Net with ReNet blocks on its skip connections and bottleneck (2-D and 3-D)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_divisible, check_rnn, check_spatial_dims
from .blocks import ConvBlock, ReNetBlock, conv_nd

__all__ = ["BRNNUNet", "BRNNUNet3d", "check_divisible"]


class BRNNUNet(nn.Module):
    """U-Net whose skip connections and bottleneck pass through ReNet blocks.

    Arguments:
        in_channels, classes: input channels and output logit channels.
        base_channels: channels of the first stage; stage i has base_channels * 2**i.
        depth: number of 2x down-sampling stages; H and W must be divisible by 2**depth.
        rnn: the ReNet blocks' cell family, a row of ``brnnseg_kernels.cells``: "gru", "lstm", ...
        rnn_in_skips: pass every skip connection through a ReNet block.
        rnn_at_bottleneck: pass the bottleneck through a ReNet block.
        rnn_reduction: channel reduction of the ReNet blocks (1 = full; 4 = the lightweight option).
        spatial_dims: 2 (images, (N, C, H, W)) or 3 (volumes, (N, C, D, H, W); ``BRNNUNet3d``).

    ``rnn_in_skips=False, rnn_at_bottleneck=False`` is the plain CNN U-Net with the same encoder and
    decoder. Output: (N, classes, *spatial) logits.
    """

    def __init__(self, in_channels: int, classes: int, base_channels: int = 32, depth: int = 4, rnn: str = "gru",
                 rnn_in_skips: bool = True, rnn_at_bottleneck: bool = True, rnn_reduction: int = 1,
                 spatial_dims: int = 2):
        super().__init__()
        name = type(self).__name__
        for arg, val, lo in (("in_channels", in_channels, 1), ("classes", classes, 1),
                             ("base_channels", base_channels, 2), ("depth", depth, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"{name}: {arg} must be an integer >= {lo}, got {val!r}")
        check_rnn(name, rnn)
        check_spatial_dims(name, spatial_dims)
        self.in_channels, self.classes, self.depth, self.spatial_dims = in_channels, classes, depth, spatial_dims
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]

        def renet(c):
            return ReNetBlock(c, rnn, rnn_reduction, spatial_dims)

        self.stem = ConvBlock(in_channels, widths[0], spatial_dims)
        self.down = nn.ModuleList(nn.Sequential(pool(2), ConvBlock(widths[i], widths[i + 1], spatial_dims))
                                  for i in range(depth))
        self.skips = nn.ModuleList(renet(widths[i]) if rnn_in_skips else nn.Identity() for i in range(depth))
        self.bottleneck = renet(widths[depth]) if rnn_at_bottleneck else nn.Identity()
        self.up = nn.ModuleList(up(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.decode = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], spatial_dims) for i in range(depth))
        self.head = conv_nd(spatial_dims)(widths[0], classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_divisible(type(self).__name__, x, self.in_channels, self.spatial_dims, 2 ** self.depth)
        feats = [self.stem(x)]
        for stage in self.down:
            feats.append(stage(feats[-1]))
        y = self.bottleneck(feats[-1])
        for i in reversed(range(self.depth)):
            y = self.decode[i](torch.cat([self.up[i](y), self.skips[i](feats[i])], dim=1))
        return self.head(y)


class BRNNUNet3d(BRNNUNet):
    """:class:`BRNNUNet` for volumes (N, C, D, H, W): 3-D convolutions and ``BiGRU3d``/``BiLSTM3d``
    blocks sweeping depth, height and width. Defaults to depth 3 and 16 base channels."""

    def __init__(self, in_channels: int, classes: int, base_channels: int = 16, depth: int = 3, rnn: str = "gru",
                 rnn_in_skips: bool = True, rnn_at_bottleneck: bool = True, rnn_reduction: int = 1):
        super().__init__(in_channels, classes, base_channels, depth, rnn, rnn_in_skips, rnn_at_bottleneck,
                         rnn_reduction, spatial_dims=3)
