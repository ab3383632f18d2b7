"""Segmentation losses backed by one fused op (``brnnseg::seg_loss_sums``): see ``seg_loss``."""
from .seg_loss import (BCEDiceLoss, BoundaryBCELoss, DiceLoss, WeightedBCEWithLogitsLoss, bce_dice_loss,
                       seg_loss_sums)

__all__ = ["BCEDiceLoss", "WeightedBCEWithLogitsLoss", "DiceLoss", "BoundaryBCELoss", "bce_dice_loss",
           "seg_loss_sums"]
