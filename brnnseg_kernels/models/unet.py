"""U-Net with ReNet blocks on its skip connections and bottleneck (2-D and 3-D), on its own CNN encoder or
on any timm encoder (``encoder="resnet34"``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_divisible, check_rnn, check_spatial_dims
from .blocks import ConvBlock, ReNetBlock, conv_nd
from .inference import predict_padded


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError("BRNNUNet(encoder=...) needs timm: pip install 'brnnseg_kernels[timm]' "
                          "(or pip install timm)") from e
    return timm


def timm_encoder(name: str, in_channels: int, weights: Optional[str] = None) -> nn.Module:
    """A timm model as a feature extractor (``features_only=True``). weights: None (random init),
    "imagenet" (timm's pretrained weights: timm downloads them unless they are in its cache), or the path
    of a state_dict file for the encoder (loaded with ``weights_only=True``)."""
    timm = _import_timm()
    if weights not in (None, "imagenet") and not isinstance(weights, str):
        raise ValueError(f"encoder_weights must be None, 'imagenet' or a file path, got {weights!r}")
    try:
        enc = timm.create_model(name, features_only=True, pretrained=weights == "imagenet", in_chans=in_channels)
    except RuntimeError as e:
        raise ValueError(f"encoder: timm has no model {name!r} with features_only=True ({e})") from e
    if weights not in (None, "imagenet"):
        enc.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return enc

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
        encoder: None (the U-Net's own CNN encoder) or the name of a timm model (``"resnet34"``,
            ``"efficientnet_b0"``, ``"convnext_tiny"``, ...) used with ``features_only=True`` (2-D only;
            needs ``pip install brnnseg_kernels[timm]``). Its feature maps are the skips (ReNet blocks on
            them as above) and the deepest one the bottleneck; the decoder upsamples stage by stage and
            back to the input size. base_channels and depth are then unused.
        encoder_weights: None (default: random init, nothing downloaded), "imagenet" (timm's pretrained
            weights, from its cache or downloaded), or the path of a state_dict file for the encoder.

    ``rnn_in_skips=False, rnn_at_bottleneck=False`` is the plain CNN U-Net with the same encoder and
    decoder. Output: (N, classes, *spatial) logits. Input sizes must be multiples of ``stride``;
    :meth:`predict` pads any size and crops back.
    """

    def __init__(self, in_channels: int, classes: int, base_channels: int = 32, depth: int = 4, rnn: str = "gru",
                 rnn_in_skips: bool = True, rnn_at_bottleneck: bool = True, rnn_reduction: int = 1,
                 spatial_dims: int = 2, encoder: Optional[str] = None, encoder_weights: Optional[str] = None):
        super().__init__()
        name = type(self).__name__
        self.encoder = None
        if encoder is not None:
            if spatial_dims != 2:
                raise ValueError(f"{name}: a timm encoder is 2-D only, got spatial_dims={spatial_dims}")
            self._build_on_timm(in_channels, classes, rnn, rnn_in_skips, rnn_at_bottleneck, rnn_reduction, encoder,
                                encoder_weights)
            return
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

    def _build_on_timm(self, in_channels, classes, rnn, rnn_in_skips, rnn_at_bottleneck, rnn_reduction, encoder,
                       encoder_weights):
        name = type(self).__name__
        for arg, val in (("in_channels", in_channels), ("classes", classes)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: {arg} must be an integer >= 1, got {val!r}")
        check_rnn(name, rnn)
        self.in_channels, self.classes, self.spatial_dims = in_channels, classes, 2
        self.encoder = timm_encoder(encoder, in_channels, encoder_weights)
        widths = list(self.encoder.feature_info.channels())
        self.reductions = list(self.encoder.feature_info.reduction())
        self.depth = len(widths) - 1

        def renet(c):
            return ReNetBlock(c, rnn, rnn_reduction, 2)

        self.skips = nn.ModuleList(renet(widths[i]) if rnn_in_skips else nn.Identity() for i in range(self.depth))
        self.bottleneck = renet(widths[-1]) if rnn_at_bottleneck else nn.Identity()
        self.decode = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i], 2) for i in range(self.depth))
        self.head = nn.Conv2d(widths[0], classes, 1)

    @property
    def stride(self) -> int:
        """The factor input sizes must be multiples of (the encoder's largest reduction)."""
        return max(self.reductions) if self.encoder is not None else 2 ** self.depth

    def predict(self, x: Tensor) -> Tensor:
        """Logits for any input size: pads (replicate) to a multiple of ``stride``, runs the model without
        gradients, crops back. The model's train/eval mode is left as it is (call ``eval()`` first)."""
        return predict_padded(self, x, self.stride)

    def _forward_timm(self, x: Tensor) -> Tensor:
        feats = self.encoder(x)
        y = self.bottleneck(feats[-1])
        for i in reversed(range(self.depth)):
            y = F.interpolate(y, size=feats[i].shape[-2:], mode="nearest")
            y = self.decode[i](torch.cat([y, self.skips[i](feats[i])], dim=1))
        y = self.head(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False) \
            if y.shape[-2:] != x.shape[-2:] else y

    def forward(self, x: Tensor) -> Tensor:
        check_divisible(type(self).__name__, x, self.in_channels, self.spatial_dims, self.stride)
        if self.encoder is not None:
            return self._forward_timm(x)
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
