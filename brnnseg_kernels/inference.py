"""Inference on any image size (``bk.inference``): ``sliding_window(model, image, roi_size, overlap)`` uses
MONAI's ``sliding_window_inference`` when MONAI is installed and the project's own tested implementation
otherwise; ``pad_to_multiple`` / ``predict_padded`` pad to a stride and crop back (``BRNNUNet.predict``).
The implementations live in ``brnnseg_kernels.models.inference``."""
from .models.inference import pad_to_multiple, predict_padded, sliding_window

__all__ = ["sliding_window", "pad_to_multiple", "predict_padded"]
