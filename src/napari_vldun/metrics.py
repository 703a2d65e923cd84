"""Image-quality and segmentation metrics: PSNR, SSIM, Dice, IoU.

Pure functions on torch tensors or numpy arrays (any device; computed on the CPU
in float64).  Image shapes: ``(H, W)`` is one image; ``(B, H, W)`` is a batch of
``B`` single-channel images; ``(B, C, H, W)`` is a batch of ``B`` images with
``C`` channels.  Batched inputs give the mean of the per-image values (or the
per-image values with ``reduction="none"``).  Intensities are expected in
``[0, data_range]``.

Label maps are integer arrays ``(H, W)`` or ``(Z, H, W)`` with values in
``[0, num_classes)``; overlap metrics are computed over all voxels together
(volume Dice for ``(Z, H, W)``, not a mean of slice Dices).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PSNR_CAP", "psnr", "ssim", "dice_per_class", "dice", "iou_per_class", "iou"]

Array = Union[np.ndarray, torch.Tensor]

#: PSNR reported for a perfect reconstruction (and upper bound of every PSNR).
PSNR_CAP = 100.0


def _to_f64(x: Array) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    return x.detach().to("cpu", torch.float64)


def _as_bchw(pred: Array, target: Array) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _to_f64(pred), _to_f64(target)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    if p.ndim == 2:
        p, t = p[None, None], t[None, None]
    elif p.ndim == 3:
        p, t = p[:, None], t[:, None]
    elif p.ndim != 4:
        raise ValueError(f"expected (H, W), (B, H, W) or (B, C, H, W), got shape {tuple(p.shape)}")
    if not (torch.isfinite(p).all() and torch.isfinite(t).all()):
        raise ValueError("pred/target contain NaN or inf")
    return p, t


def _reduce(values: torch.Tensor, reduction: str):
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values.numpy()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(pred: Array, target: Array, data_range: float = 1.0, reduction: str = "mean"):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` per image.

    Each image's PSNR is capped at :data:`PSNR_CAP` (100 dB; also when MSE == 0).
    Returns a float (mean over the batch) or, with ``reduction="none"``, a float64
    array of per-image values.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    p, t = _as_bchw(pred, target)
    mse = ((p - t) ** 2).flatten(1).mean(1)
    val = torch.full_like(mse, PSNR_CAP)
    pos = mse > 0
    val[pos] = torch.clamp(10.0 * torch.log10(data_range ** 2 / mse[pos]), max=PSNR_CAP)
    return _reduce(val, reduction)


def _gaussian_window(win_size: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2.0
    g = torch.exp(-0.5 * (ax / sigma) ** 2)
    return g / g.sum()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
             sigma: float = 1.5, K1: float = 0.01, K2: float = 0.03) -> torch.Tensor:
    """The SSIM map of :func:`ssim` on (B, C, H, W) tensors, differentiable, in their dtype:
    (B, C, H - win_size + 1, W - win_size + 1) (valid region only). The training loss uses it too."""
    b, c, h, w = pred.shape
    g = _gaussian_window(win_size, sigma).to(device=pred.device, dtype=pred.dtype)
    gh, gw = g.view(1, 1, win_size, 1), g.view(1, 1, 1, win_size)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x.reshape(b * c, 1, h, w), gh), gw)

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_p, mu_t = filt(pred), filt(target)
    var_p = filt(pred * pred) - mu_p ** 2
    var_t = filt(target * target) - mu_t ** 2
    cov = filt(pred * target) - mu_p * mu_t
    smap = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return smap.reshape(b, c, h - win_size + 1, w - win_size + 1)


def ssim(pred: Array, target: Array, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, reduction: str = "mean", K1: float = 0.01, K2: float = 0.03):
    """Structural similarity (Wang et al. 2004) with a Gaussian window.

    Local statistics use a normalised separable Gaussian window of ``win_size`` taps
    (odd) and std ``sigma``, population (biased) covariances, ``C1 = (K1 R)^2``,
    ``C2 = (K2 R)^2`` with ``R = data_range``.  The SSIM map is computed on the
    *valid* region only (no padding: ``(H - win_size + 1, W - win_size + 1)``) and
    averaged there, then over channels -- this equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=R)``, which crops the same border.
    Returns the mean over the batch (float) or per-image values (``reduction="none"``).
    """
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd int, got {win_size}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    p, t = _as_bchw(pred, target)
    b, c, h, w = p.shape
    if h < win_size or w < win_size:
        raise ValueError(f"images ({h}x{w}) are smaller than win_size={win_size}")
    smap = ssim_map(p, t, data_range, win_size, sigma, K1, K2)
    per_image = smap.reshape(b, c, -1).mean(-1).mean(-1)
    return _reduce(per_image, reduction)


def _labels(x: Array, name: str, num_classes: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.rint(a)):
            raise ValueError(f"{name} must hold integer labels")
    elif a.dtype.kind not in "biu":
        raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (Z, H, W), got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(f"{name} values must be in [0, {num_classes}), got "
                         f"[{a.min()}, {a.max()}]")
    return a


def _counts(pred: Array, true: Array, num_classes: int):
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + 1), got {num_classes}")
    p = _labels(pred, "pred_labels", num_classes)
    t = _labels(true, "true_labels", num_classes)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != true shape {t.shape}")
    conf = np.bincount(t.ravel() * num_classes + p.ravel(),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    return inter, conf.sum(0), conf.sum(1)  # |P & T|, |P|, |T| per class


def _per_class(pred, true, num_classes, kind: str):
    """``({class: value or None}, |T| per class)``."""
    inter, n_pred, n_true = _counts(pred, true, num_classes)
    out: dict[int, Optional[float]] = {}
    for k in range(1, num_classes):
        if n_true[k] == 0:
            out[k] = None if n_pred[k] == 0 else 0.0
        elif kind == "dice":
            out[k] = float(2.0 * inter[k] / (n_pred[k] + n_true[k]))
        else:
            out[k] = float(inter[k] / (n_pred[k] + n_true[k] - inter[k]))
    return out, n_true


def _mean_present(pred, true, num_classes, kind: str) -> float:
    per, n_true = _per_class(pred, true, num_classes, kind)
    vals = [per[k] for k in per if n_true[k] > 0]
    return float(np.mean(vals)) if vals else math.nan


def dice_per_class(pred_labels: Array, true_labels: Array, num_classes: int
                   ) -> dict[int, Optional[float]]:
    """Dice ``2|P&T| / (|P| + |T|)`` of every foreground class ``1..num_classes-1``.

    A class absent from the ground truth gives ``None`` when it is also absent from the
    prediction, and ``0.0`` when it is predicted (false positives only).
    """
    return _per_class(pred_labels, true_labels, num_classes, "dice")[0]


def dice(pred_labels: Array, true_labels: Array, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in the ground truth.

    Classes absent from the ground truth are excluded (even if predicted: see
    :func:`dice_per_class` for those).  Returns ``nan`` when the ground truth has no
    foreground class at all.
    """
    return _mean_present(pred_labels, true_labels, num_classes, "dice")


def iou_per_class(pred_labels: Array, true_labels: Array, num_classes: int
                  ) -> dict[int, Optional[float]]:
    """IoU (Jaccard) ``|P&T| / |P or T|`` of every foreground class.

    ``None`` / ``0.0`` for classes absent from the ground truth, as :func:`dice_per_class`.
    """
    return _per_class(pred_labels, true_labels, num_classes, "iou")[0]


def iou(pred_labels: Array, true_labels: Array, num_classes: int) -> float:
    """Mean IoU over the foreground classes present in the ground truth (``nan`` if none)."""
    return _mean_present(pred_labels, true_labels, num_classes, "iou")


def whole_dice(pred_labels: Array, true_labels: Array) -> float:
    """Dice of "any foreground label" vs background (BraTS's whole tumour); ``nan`` when the ground truth has
    no foreground."""
    p = torch.as_tensor(np.asarray(pred_labels)) > 0
    t = torch.as_tensor(np.asarray(true_labels)) > 0
    if not bool(t.any()):
        return math.nan
    return float(2.0 * (p & t).sum() / (p.sum() + t.sum()))


def stages_monotone(stage_psnrs: Sequence[float], tol_db: float = 0.01) -> bool:
    """True when a slice's PSNR never falls (by more than ``tol_db``) from one stage estimate to the next."""
    v = list(stage_psnrs)
    return all(b >= a - tol_db for a, b in zip(v, v[1:]))
