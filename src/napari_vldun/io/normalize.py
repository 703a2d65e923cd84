"""Intensity normalisation of MRI / CT arrays to float32 in [0, 1].

All functions accept any shape (``(Z, H, W)``, ``(H, W)``, ...), never modify
their input and never divide by zero: a constant image gives all zeros.  For a
constant image of value ``c`` the recorded bounds are ``lo = c, hi = c + 1``, so
the inverse map ``x * (hi - lo) + lo`` gives ``c`` back (not 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .volume import Volume

__all__ = ["CT_WINDOWS", "normalize", "normalize_ct", "normalize_minmax",
           "normalize_mri", "looks_like_hu"]

#: Named CT windows as (lower, upper) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "soft_tissue": (-160.0, 240.0),
    "brain": (0.0, 80.0),
    "bone": (-450.0, 1050.0),
    "wide": (-1000.0, 1000.0),
}


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(x - lo) / (hi - lo) clipped to [0, 1]; zeros if ``hi <= lo``."""
    x = np.asarray(x, dtype=np.float32)
    if not hi > lo:
        return np.zeros(x.shape, np.float32)
    out = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def normalize_minmax(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (float32); a constant array gives zeros."""
    x = np.asarray(x)
    if x.size == 0:
        return x.astype(np.float32)
    return _rescale(x, float(np.min(x)), float(np.max(x)))


def _foreground(x: np.ndarray, min_frac: float = 0.05) -> tuple[np.ndarray | None, str]:
    """Mask excluding a constant background plateau at the minimum value.

    If the minimum value (0 for most MRI, the z-score floor for BraTS) covers at
    least ``min_frac`` of the voxels, voxels equal to it are background;
    otherwise the whole volume is used.
    """
    xmin = x.min()
    bg = x == xmin
    frac = float(bg.mean())
    if min_frac <= frac < 1.0:
        return ~bg, f"foreground (voxels != background value {float(xmin):g})"
    return None, "whole volume"


def normalize_mri(
    x: np.ndarray, lower_pct: float = 0.5, upper_pct: float = 99.5, *,
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Percentile clipping to [0, 1] (float32).

    The ``lower_pct``/``upper_pct`` percentiles are computed over the foreground:
    voxels different from the minimum value when that value forms a background
    plateau (>= 5 % of voxels), else over the whole volume.  Values below/above
    the percentiles are clipped to 0/1.  With ``return_params`` also returns the
    parameters used (``lo``, ``hi``, percentiles, ``mask``, ``note``).
    """
    x = np.asarray(x, dtype=np.float32)
    if not 0.0 <= lower_pct < upper_pct <= 100.0:
        raise ValueError(f"need 0 <= lower_pct < upper_pct <= 100, got {lower_pct}, {upper_pct}")
    params: dict[str, Any] = {"method": "mri", "lower_pct": lower_pct, "upper_pct": upper_pct}
    if x.size == 0 or float(x.max()) == float(x.min()):
        c = float(x.flat[0]) if x.size else None
        params.update(lo=c, hi=None if c is None else c + 1.0, mask=None,
                      note="constant image: returned zeros (lo = its value, so the inverse gives it back)")
        out = np.zeros(x.shape, np.float32)
        return (out, params) if return_params else out
    mask, how = _foreground(x)
    vals = x[mask] if mask is not None else x
    lo, hi = (float(v) for v in np.percentile(vals, [lower_pct, upper_pct]))
    if not hi > lo:  # e.g. a binary-looking image: fall back to min/max
        lo, hi = float(vals.min()), float(x.max())
        params["note"] = "percentiles equal; used foreground min/max"
    params.update(lo=lo, hi=hi, mask=how)
    out = _rescale(x, lo, hi)
    return (out, params) if return_params else out


def _window(window: tuple[float, float] | str) -> tuple[tuple[float, float], str | None]:
    if isinstance(window, str):
        key = window.lower().replace("-", "_").replace(" ", "_")
        if key not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; known: {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[key], key
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"CT window must have lower < upper, got {window}")
    return (lo, hi), None


def normalize_ct(
    x_hu: np.ndarray, window: tuple[float, float] | str = (-1000.0, 1000.0), *,
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Window CT values (HU) to [0, 1]: ``lower -> 0``, ``upper -> 1``, clipped.

    ``window`` is ``(lower, upper)`` in HU or a name from :data:`CT_WINDOWS`
    (``lung``, ``soft_tissue``, ``brain``, ``bone``, ``wide``).
    """
    (lo, hi), name = _window(window)
    out = _rescale(x_hu, lo, hi)
    params = {"method": "ct", "window": (lo, hi), "window_name": name, "lo": float(lo), "hi": float(hi)}
    return (out, params) if return_params else out


def looks_like_hu(x: np.ndarray) -> bool:
    """True if ``x`` looks like CT in HU: integer-valued, min <= -500, max > 300."""
    x = np.asarray(x)
    if x.size == 0:
        return False
    if float(x.min()) > -500 or float(x.max()) <= 300:
        return False
    if x.dtype.kind in "iu":
        return True
    sample = x.ravel()[:: max(1, x.size // 100_000)]
    return bool(np.all(sample == np.rint(sample)))


def normalize(
    volume: Volume | np.ndarray, method: str = "auto", *,
    window: tuple[float, float] | str = (-1000.0, 1000.0),
    lower_pct: float = 0.5, upper_pct: float = 99.5, modality: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalise a volume to float32 [0, 1]; returns ``(array, params)``.

    ``method``: ``"auto"`` (CT windowing if the modality is ``"CT"`` or the values
    look like HU, see :func:`looks_like_hu`; else MRI percentile clipping),
    ``"ct"``, ``"mri"`` or ``"minmax"``.  ``params`` records what was done
    (method, window or percentiles and the resulting lo/hi) for provenance.
    The input is not modified.
    """
    if isinstance(volume, Volume):
        x, modality = volume.data, modality or volume.modality
    else:
        x = np.asarray(volume)
    method = method.lower()
    reason = "requested"
    if method == "auto":
        if (modality or "").upper() == "CT":
            method, reason = "ct", "modality CT"
        elif looks_like_hu(x):
            method, reason = "ct", "intensities look like HU"
        else:
            method, reason = "mri", f"modality {modality or 'unknown'}, not HU-like"
    if method == "ct":
        out, params = normalize_ct(x, window, return_params=True)
    elif method == "mri":
        out, params = normalize_mri(x, lower_pct, upper_pct, return_params=True)
    elif method == "minmax":
        x = np.asarray(x)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        out = normalize_minmax(x)
        params = {"method": "minmax", "lo": lo, "hi": hi}
        if not hi > lo:
            params.update(hi=lo + 1.0, note="constant image: returned zeros (lo = its value, so the inverse "
                                          "gives it back)")
    else:
        raise ValueError(f"unknown method {method!r}; use auto, ct, mri or minmax")
    if method == "ct" and x.size and float(np.max(x)) == float(np.min(x)):
        params["note"] = "constant image (windowed in HU, not zeroed)"
    params["reason"] = reason
    return out, params


#: Largest value still taken as "already in [0, 1]" (zero-filled overshoot).
UNIT_RANGE_MAX = 1.5


def to_unit_range(volume) -> tuple[np.ndarray, dict]:
    """Volume data -> float32 in [0, 1] (CT window / MRI percentiles, see :func:`io.normalize`).

    Floating-point data already in ``[0, UNIT_RANGE_MAX]`` is kept as is: a zero-filled magnitude of
    a [0, 1] image overshoots 1 by Gibbs ringing (ACDC at 4x: up to ~1.1), and rescaling it would
    change the intensity scale the model was trained on.
    """
    data = np.asarray(volume.data, dtype=np.float32)
    raw_float = str(getattr(volume, "meta", {}).get("original_dtype", "float32")).startswith("float")
    if data.size and np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= UNIT_RANGE_MAX and raw_float:
        return data, {"method": "none", "lo": 0.0, "hi": 1.0}
    return normalize(volume)


def from_unit_range(x: np.ndarray, params: dict) -> np.ndarray:
    """Map [0, 1] values back to the input's intensity units (inverse of the linear rescale).

    ``params`` from :func:`to_unit_range`; missing or ``None`` bounds (a constant image) map as identity."""
    lo, hi = unit_bounds(params)
    return (x * (hi - lo) + lo).astype(np.float32)


def restore_units(restored: np.ndarray, params: dict, original: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """The network's [0, 1] output in the input's units, not clipped at the normalisation window.

    ``from_unit_range(restored) + (original - from_unit_range(seen))``: ``seen`` is what the network was given
    for ``original`` (same shape; default: the clipped rescale of ``original``, or ``original`` itself for
    ``method="none"``), so where the window clipped the input (bright enhancement above the 99.5th
    percentile, bone above a CT window) the part outside the window comes back from the input."""
    orig = np.asarray(original, np.float32)
    if seen is None:
        lo, hi = unit_bounds(params)
        seen = orig if params.get("method") == "none" or not hi > lo else np.clip((orig - lo) / (hi - lo), 0.0, 1.0)
    outside = orig - from_unit_range(np.asarray(seen, np.float32), params)
    return (from_unit_range(np.asarray(restored, np.float32), params) + outside).astype(np.float32)


def unit_bounds(params: dict) -> tuple[float, float]:
    """``(lo, hi)`` of the linear map behind a normalisation; ``(0, 1)`` when it has none."""
    lo, hi = params.get("lo"), params.get("hi")
    return (0.0, 1.0) if lo is None or hi is None else (float(lo), float(hi))
