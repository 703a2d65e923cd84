"""Evaluation metrics (PSNR, SSIM, Dice, IoU); see :mod:`napari_vldun.evaluate.metrics`."""

from .metrics import PSNR_CAP, dice, dice_per_class, iou, iou_per_class, psnr, ssim

__all__ = ["PSNR_CAP", "dice", "dice_per_class", "iou", "iou_per_class", "psnr", "ssim"]
