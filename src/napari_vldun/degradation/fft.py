"""Centred, orthonormal 2-D FFT helpers and small tensor-conversion utilities.

Convention (used by every k-space operator in this package): k-space arrays are
*centred*, i.e. the DC coefficient of an ``(H, W)`` image sits at index
``(H // 2, W // 2)``; the transform is unitary (``norm="ortho"``), so
``||fft2c(x)||_2 == ||x||_2`` and ``ifft2c(fft2c(x)) == x`` up to round-off.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = ["fft2c", "ifft2c"]

_DIMS = (-2, -1)


def _to_tensor(x: ArrayLike) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy arrays are wrapped without copying when possible."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _restore(t: torch.Tensor, was_numpy: bool) -> ArrayLike:
    """Convert back to numpy when the caller passed numpy."""
    return t.detach().cpu().numpy() if was_numpy else t


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    """Working real dtype: keep float32/float64 (and the real part of complex), else float32."""
    if t.dtype in (torch.float64, torch.complex128):
        return torch.float64
    return torch.float32


def _check_finite(t: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or inf."""
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: image contains NaN or inf values")


def _check_ndim(x: Any) -> int:
    ndim = getattr(x, "ndim", None)
    if ndim is None or ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W), got {ndim}")
    return ndim


def fft2c(x: ArrayLike) -> ArrayLike:
    """Centred orthonormal 2-D FFT over the last two dimensions.

    Args:
        x: image of shape ``(..., H, W)``, real or complex (torch or numpy).
    Returns:
        Complex k-space of the same shape (complex64 for float32/integer input,
        complex128 for float64/complex128), DC at ``(H // 2, W // 2)``. Same kind
        (torch/numpy) as the input.
    """
    _check_ndim(x)
    t, was_np = _to_tensor(x)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float32)
    k = torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS
    )
    return _restore(k, was_np)


def ifft2c(k: ArrayLike) -> ArrayLike:
    """Inverse of :func:`fft2c` (centred orthonormal 2-D inverse FFT, last two dims).

    Args:
        k: centred k-space of shape ``(..., H, W)`` (complex or real; torch or numpy).
    Returns:
        Complex image of the same shape and kind as the input.
    """
    _check_ndim(k)
    t, was_np = _to_tensor(k)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float32)
    x = torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS
    )
    return _restore(x, was_np)
