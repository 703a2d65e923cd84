"""k-space degradation operator ``y = F^-1(M . F(x))`` (VL-DUN forward model).

``F`` is the centred orthonormal 2-D FFT (:func:`fft2c`) and ``M`` a binary sampling
mask (:mod:`.masks`): Cartesian lines for accelerated MRI, radial spokes for sparse-view CT.
The zero-filled reconstruction ``y`` is what the restoration network receives.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
import torch

from .fft import ArrayLike, _check_finite, _float_dtype, _restore, _to_tensor, fft2c, ifft2c
from .masks import MaskResult, cartesian_mask, radial_mask

__all__ = ["undersample", "degrade", "acquire"]

MaskLike = Union[torch.Tensor, np.ndarray, MaskResult]


def undersample(x: ArrayLike, mask: MaskLike, return_complex: bool = False) -> ArrayLike:
    """Zero-filled undersampling ``y = ifft2c(mask * fft2c(x))``.

    Args:
        x: image of shape ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``, real or complex,
            torch tensor or numpy array (intensities, typically in [0, 1]).
        mask: ``(H, W)`` sampling mask (tensor, array or :class:`MaskResult`), centred,
            broadcast over the leading dimensions. Non-binary weights are applied as-is.
        return_complex: return the complex zero-filled image instead of its magnitude.
    Returns:
        Same kind (torch/numpy) and shape as ``x``. Magnitude ``|y|`` in the input's float
        dtype (float32 for integer input) by default, or complex64/complex128 if
        ``return_complex``. Torch output lives on ``x``'s device.
    Raises:
        ValueError: ``x`` not 2-4 D, ``x`` containing NaN/inf, or mask shape != ``x.shape[-2:]``.
    """
    ndim = getattr(x, "ndim", None)
    if ndim is None or not 2 <= ndim <= 4:
        raise ValueError(f"x must be 2-D (H, W), 3-D (C, H, W) or 4-D (B, C, H, W), got ndim={ndim}")
    t, was_np = _to_tensor(x)
    _check_finite(t, "x")
    real_dtype = _float_dtype(t)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(real_dtype)

    m = mask.mask if isinstance(mask, MaskResult) else mask
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(np.ascontiguousarray(m))
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"mask must be a tensor, array or MaskResult, got {type(mask).__name__}")
    if tuple(m.shape) != tuple(t.shape[-2:]):
        raise ValueError(
            f"mask shape {tuple(m.shape)} does not match the image's last two dims {tuple(t.shape[-2:])}"
        )
    m = m.to(device=t.device, dtype=real_dtype)

    y = ifft2c(fft2c(t) * m)
    out = y if return_complex else y.abs().to(real_dtype)
    return _restore(out, was_np)


def degrade(
    x: ArrayLike,
    kind: Literal["cartesian", "radial"],
    accel: Optional[float],
    seed: Optional[int] = None,
    *,
    return_complex: bool = False,
    **mask_kwargs,
) -> tuple[ArrayLike, MaskResult]:
    """Build a mask for ``x.shape[-2:]`` and apply :func:`undersample`.

    Args:
        x: image ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` (torch or numpy).
        kind: ``"cartesian"`` (:func:`cartesian_mask`) or ``"radial"`` (:func:`radial_mask`).
        accel: acceleration ``R >= 1``. For ``"radial"`` it may be ``None`` when
            ``n_spokes`` is passed in ``mask_kwargs``.
        seed: mask seed (see the mask functions).
        return_complex: forwarded to :func:`undersample`.
        **mask_kwargs: extra mask arguments (``center_fraction``, ``pattern``, ``axis``,
            ``n_spokes``, ``angles``).
    Returns:
        ``(y, mask_result)``: the zero-filled image and the mask used.
    """
    ndim = getattr(x, "ndim", None)
    if ndim is None or not 2 <= ndim <= 4:
        raise ValueError(f"x must be 2-D (H, W), 3-D (C, H, W) or 4-D (B, C, H, W), got ndim={ndim}")
    shape = tuple(int(s) for s in x.shape[-2:])
    if kind == "cartesian":
        res = cartesian_mask(shape, accel, seed=seed, **mask_kwargs)
    elif kind == "radial":
        res = radial_mask(shape, accel=accel, seed=seed, **mask_kwargs)
    else:
        raise ValueError(f"kind must be 'cartesian' or 'radial', got {kind!r}")
    return undersample(x, res, return_complex=return_complex), res


def acquire(x: ArrayLike, kind: Literal["cartesian", "radial"], accel: Optional[float], seed: Optional[int] = None,
            **mask_kwargs) -> tuple[ArrayLike, ArrayLike, MaskResult]:
    """:func:`degrade` keeping the measurement: ``(magnitude, kspace, mask_result)``.

    ``magnitude`` is the zero-filled image (as :func:`degrade`), ``kspace`` the measured centred k-space
    ``M . F(x)`` (complex, same shape and kind as ``x``; zeros where not sampled), for data consistency.
    """
    yc, m = degrade(x, kind, accel, seed=seed, return_complex=True, **mask_kwargs)
    t, was_np = _to_tensor(yc)
    return _restore(t.abs().to(_float_dtype(t)), was_np), fft2c(yc), m
