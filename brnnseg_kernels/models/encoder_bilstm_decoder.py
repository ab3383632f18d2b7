"""CNN encoder -> bidirectional LSTM down every column -> decoder (the seed article's model, fixed)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import functional as F
from ..nn.renet import BidirectionalRNNWeights
from .blocks import ConvBlock
from ..checks import check_divisible

__all__ = ["EncoderBiLSTMDecoder"]


class EncoderBiLSTMDecoder(nn.Module):
    """A CNN encoder (``depth`` stages of two 3x3 convolutions and a 2x max-pool), a bidirectional
    LSTM running along the height over every column of the encoded map (one fused column sweep,
    all columns and both directions at once), and a decoder of transposed convolutions back to full
    resolution, ending in per-pixel logits.

    Arguments: in_channels, classes; base_channels (first stage width, doubled per stage);
    depth (H and W must be divisible by 2**depth); hidden_size of the LSTM per direction (default:
    half the encoder's output width, so the sweep keeps the channel count).
    The LSTM's parameters live in ``lstm`` named like ``torch.nn.LSTM(bidirectional=True)``.
    """

    def __init__(self, in_channels: int, classes: int, base_channels: int = 32, depth: int = 3,
                 hidden_size: int | None = None):
        super().__init__()
        for arg, val, lo in (("in_channels", in_channels, 1), ("classes", classes, 1),
                             ("base_channels", base_channels, 1), ("depth", depth, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"EncoderBiLSTMDecoder: {arg} must be an integer >= {lo}, got {val!r}")
        self.in_channels, self.depth = in_channels, depth
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        hidden = hidden_size if hidden_size is not None else max(1, widths[-1] // 2)
        self.encoder = nn.Sequential(ConvBlock(in_channels, widths[0]), *[
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(widths[i], widths[i + 1])) for i in range(depth)])
        self.lstm = BidirectionalRNNWeights("lstm", widths[-1], hidden)
        self.fuse = nn.Conv2d(2 * hidden, widths[-1], 1)
        self.decoder = nn.Sequential(*[
            nn.Sequential(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2), ConvBlock(widths[i], widths[i]))
            for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_divisible("EncoderBiLSTMDecoder", x, self.in_channels, 2, 2 ** self.depth)
        f = self.encoder(x)
        # Every column is one sequence along the height: the column sweep (axis 2).
        f = self.fuse(F.sweep(f, self.lstm.stacked(), "lstm", axis=2))
        return self.head(self.decoder(f))
