"""Segmentation models built from the fused layers (NCHW / NCDHW in, per-pixel logits out).

* ``BRNNUNet`` / ``BRNNUNet3d``: U-Net whose skip connections and bottleneck pass through ReNet
  blocks; ``rnn_in_skips=False, rnn_at_bottleneck=False`` is the plain CNN U-Net for comparisons.
* ``EncoderBiLSTMDecoder``: CNN encoder, a bidirectional LSTM down every column of the feature map,
  decoder back to full resolution (the seed article's architecture, done right).
* ``ReNetBlock``: the channel-preserving block they use (residual; ``reduction`` > 1 is the
  lightweight variant: 1x1 channel reduction before the sweeps).
* ``pad_to_multiple`` / ``predict_padded`` / ``sliding_window``: inference on any image size;
  ``BRNNUNet.predict(x)`` pads to the model's stride and crops back.
* ``BRNNUNet(..., encoder="resnet34")``: any timm encoder (``features_only``) under the ReNet U-Net;
  ``add_renet(model)``: ReNet blocks into a segmentation_models_pytorch model (extras ``[timm]``,
  ``[smp]``).
"""
from .blocks import ConvBlock, ReNetBlock
from .encoder_bilstm_decoder import EncoderBiLSTMDecoder
from .inference import pad_to_multiple, predict_padded, sliding_window
from .smp import add_renet
from .unet import BRNNUNet, BRNNUNet3d, timm_encoder

__all__ = ["BRNNUNet", "BRNNUNet3d", "EncoderBiLSTMDecoder", "ReNetBlock", "ConvBlock", "pad_to_multiple",
           "predict_padded", "sliding_window", "add_renet", "timm_encoder"]
