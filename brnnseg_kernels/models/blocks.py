"""Building blocks of the models: convolution stages and the channel-preserving ReNet block."""
from __future__ import annotations

from torch import Tensor, nn

from .. import cells
from ..checks import check_rnn, check_spatial_dims  # noqa: F401  (re-exported for the models)
from ..nn import renet, renet3d


def renet_layer(rnn: str, spatial_dims: int):
    """The ReNet layer class of a cell family (the cell table's row) for 2-D or 3-D maps."""
    fam = cells.family(rnn)
    return getattr(renet, fam.layer2d) if spatial_dims == 2 else getattr(renet3d, fam.layer3d)


def conv_nd(spatial_dims: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


class ConvBlock(nn.Sequential):
    """Two (3x3 convolution, batch norm, ReLU) stages: in_channels -> out_channels."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2):
        conv = conv_nd(spatial_dims)
        norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        super().__init__(conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels),
                         nn.ReLU(inplace=True),
                         conv(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels),
                         nn.ReLU(inplace=True))


class ReNetBlock(nn.Module):
    """x + proj_out(ReNet(proj_in(x))): bidirectional sweeps along every axis, channel count kept
    (like the attention modules U-Net variants put on skip connections).

    ``reduction`` r > 1 is the lightweight variant: a 1x1 convolution first reduces the channels to
    C/r and the sweeps run on those with hidden size C/(2r), cutting the recurrent parameters and
    FLOPs by about r^2 (the input projections by r). With r = 1 and even C the sweeps run on x
    directly with hidden size C/2 and no projection is needed."""

    def __init__(self, channels: int, rnn: str = "gru", reduction: int = 1, spatial_dims: int = 2):
        super().__init__()
        check_rnn("ReNetBlock", rnn)
        check_spatial_dims("ReNetBlock", spatial_dims)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"ReNetBlock: reduction must be an integer >= 1, got {reduction!r}")
        inner = max(2, channels // reduction)
        hidden = max(1, inner // 2)
        conv = conv_nd(spatial_dims)
        self.proj_in = conv(channels, inner, 1) if inner != channels else nn.Identity()
        self.rnn = renet_layer(rnn, spatial_dims)(inner, hidden)
        self.proj_out = conv(2 * hidden, channels, 1) if 2 * hidden != channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj_out(self.rnn(self.proj_in(x)))
