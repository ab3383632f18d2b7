"""Segmentation losses, each backed by one fused op: ``seg_loss`` (sigmoid: weighted BCE + boundary +
Dice, ``brnnseg::seg_loss_sums``) and ``ce_dice`` (softmax: cross-entropy + boundary + Dice,
``brnnseg::ce_dice_sums``)."""
from .ce_dice import CEDiceLoss, ce_dice_loss, ce_dice_sums
from .seg_loss import (BCEDiceLoss, BoundaryBCELoss, DiceLoss, WeightedBCEWithLogitsLoss, bce_dice_loss,
                       seg_loss_sums)

__all__ = ["BCEDiceLoss", "WeightedBCEWithLogitsLoss", "DiceLoss", "BoundaryBCELoss", "bce_dice_loss",
           "seg_loss_sums", "CEDiceLoss", "ce_dice_loss", "ce_dice_sums"]
