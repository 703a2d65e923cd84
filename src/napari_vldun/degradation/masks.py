"""Seeded k-space sampling masks (fastMRI-style Cartesian lines, CT-style radial spokes).

All masks are *centred* (DC at ``(H // 2, W // 2)``, matching :func:`fft2c`), of
shape ``(H, W)``, dtype float32 with values in ``{0, 1}``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch

__all__ = ["MaskResult", "cartesian_mask", "radial_mask", "mask_kind", "mask_kinds", "MASK_KINDS", "GOLDEN_ANGLE_DEG"]

#: What :func:`mask_kind` tells apart.
MASK_KINDS = ("cartesian", "radial")

#: Golden angle for projections over [0, 180) degrees: 180 / phi = 111.246...
GOLDEN_ANGLE_DEG = 180.0 * 2.0 / (1.0 + math.sqrt(5.0))


@dataclass
class MaskResult:
    """A sampling mask and what it samples.

    Attributes:
        mask: ``(H, W)`` float32 tensor in ``{0, 1}``, centred (DC at ``(H//2, W//2)``).
        fraction: actual sampled fraction, ``mask.mean()`` (1.0 = fully sampled).
        n_lines: Cartesian lines (columns/rows) or radial spokes used; ``None`` if not applicable.
    """

    mask: torch.Tensor
    fraction: float
    n_lines: Optional[int] = None


# ----------------------------------------------------------------------------- validation
def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a pair of positive ints (H, W), got {shape!r}") from None
    ok = len(dims) == 2 and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) > 0 for d in dims
    )
    if not ok:
        raise ValueError(f"shape must be a pair of positive ints (H, W), got {shape!r}")
    return int(dims[0]), int(dims[1])


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_accel(accel: object) -> float:
    a = _check_real(accel, "accel")
    if a < 1.0:
        raise ValueError(f"accel must be >= 1, got {a}")
    return a


def _check_seed(seed: object) -> Optional[int]:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return int(seed)


def _result(mask: np.ndarray, n_lines: Optional[int]) -> MaskResult:
    m = torch.from_numpy(mask.astype(np.float32))
    return MaskResult(mask=m, fraction=float(m.mean()), n_lines=n_lines)


# ----------------------------------------------------------------------------- Cartesian
def cartesian_mask(
    shape: Sequence[int],
    accel: float,
    center_fraction: float = 0.08,
    pattern: Literal["random", "equispaced"] = "random",
    seed: Optional[int] = None,
    axis: int = -1,
) -> MaskResult:
    """Cartesian line mask (fastMRI style): whole phase-encode lines are kept or dropped.

    ``N = shape[axis]`` candidate lines; the central ``round(N * center_fraction)`` lines
    are always kept, and lines are added until ``max(round(N / accel), n_center)``
    are sampled: uniformly without replacement (``"random"``) or at a regular spacing
    ``(N - n_center) / n_rest`` over the non-centre lines with a seeded sub-spacing
    offset (``"equispaced"``).

    Args:
        shape: ``(H, W)`` of the k-space grid.
        accel: acceleration ``R >= 1`` (``R == 1`` gives an all-ones mask).
        center_fraction: fraction in ``[0, 1]`` of fully sampled central lines.
        pattern: ``"random"`` or ``"equispaced"``.
        seed: seed of a local ``numpy.random.Generator``; ``None`` = non-deterministic.
        axis: axis indexing the lines (``-1``/``1``: columns, ``-2``/``0``: rows).
    Returns:
        :class:`MaskResult` with ``n_lines`` = number of sampled lines.
    """
    h, w = _check_shape(shape)
    a = _check_accel(accel)
    cf = _check_real(center_fraction, "center_fraction")
    if not 0.0 <= cf <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {cf}")
    if pattern not in ("random", "equispaced"):
        raise ValueError(f"pattern must be 'random' or 'equispaced', got {pattern!r}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in (-2, -1, 0, 1):
        raise ValueError(f"axis must be one of -2, -1, 0, 1, got {axis!r}")
    rng = np.random.default_rng(_check_seed(seed))
    n = (h, w)[axis]

    lines = np.zeros(n, dtype=bool)
    n_center = min(n, int(round(n * cf)))
    pad = (n - n_center + 1) // 2  # centre block contains index n // 2 when n_center >= 1
    lines[pad : pad + n_center] = True
    n_total = n if a == 1.0 else max(n_center, min(n, int(round(n / a))))
    n_rest = n_total - n_center
    if n_rest > 0:
        candidates = np.flatnonzero(~lines)
        if pattern == "random":
            chosen = rng.choice(candidates, size=n_rest, replace=False)
        else:
            spacing = len(candidates) / n_rest
            offset = rng.uniform(0.0, spacing)
            pos = np.floor(offset + spacing * np.arange(n_rest)).astype(int)
            chosen = candidates[np.clip(pos, 0, len(candidates) - 1)]
        lines[chosen] = True

    mask = np.zeros((h, w), dtype=bool)
    if axis in (-1, 1):
        mask[:, lines] = True
    else:
        mask[lines, :] = True
    return _result(mask, int(lines.sum()))


# ----------------------------------------------------------------------------- radial
def _point_reflect(mask: np.ndarray) -> np.ndarray:
    """``out[c + a, d + b] = mask[c - a, d - b]`` (c, d = H//2, W//2) where both are in range."""
    h, w = mask.shape
    ii = 2 * (h // 2) - np.arange(h)
    jj = 2 * (w // 2) - np.arange(w)
    vi, vj = (ii >= 0) & (ii < h), (jj >= 0) & (jj < w)
    out = np.zeros_like(mask)
    out[np.ix_(vi, vj)] = mask[np.ix_(ii[vi], jj[vj])]
    return out


def _spoke_angles(n: int, angles: str, seed: Optional[int]) -> np.ndarray:
    """Projection angles in radians, in ``[0, pi)``."""
    if angles == "uniform":
        step = math.pi / n
        offset = 0.0 if seed is None else float(np.random.default_rng(seed).uniform(0.0, step))
        return offset + step * np.arange(n)
    start = 0 if seed is None else int(np.random.default_rng(seed).integers(0, 100_000))
    return np.deg2rad(np.mod((start + np.arange(n)) * GOLDEN_ANGLE_DEG, 180.0))


def _draw_spokes(h: int, w: int, theta: np.ndarray) -> np.ndarray:
    """Rasterise full lines through the centre by dense sampling (step 0.5 px) and rounding."""
    ch, cw = h // 2, w // 2
    half = int(math.ceil(2.0 * (math.hypot(h, w) / 2.0 + 1.0)))
    t = 0.5 * np.arange(-half, half + 1)  # symmetric about 0, step 0.5 px
    # Round the offsets (not absolute coords) so that +t and -t map to mirrored pixels.
    di = np.rint(np.outer(-np.sin(theta), t)).astype(np.int64) + ch
    dj = np.rint(np.outer(np.cos(theta), t)).astype(np.int64) + cw
    keep = (di >= 0) & (di < h) & (dj >= 0) & (dj < w)
    mask = np.zeros(h * w, dtype=bool)
    mask[di[keep] * w + dj[keep]] = True
    mask = mask.reshape(h, w)
    mask[ch, cw] = True  # DC is always sampled
    return mask | _point_reflect(mask)


def radial_mask(
    shape: Sequence[int],
    n_spokes: Optional[int] = None,
    accel: Optional[float] = None,
    angles: Literal["uniform", "golden"] = "uniform",
    seed: Optional[int] = None,
) -> MaskResult:
    """Radial (sparse-view CT / radial MRI) mask of full spokes through the k-space centre.

    By the Fourier slice theorem a parallel-beam projection at angle ``theta`` fills the
    k-space line through DC at angle ``theta``; ``n_spokes`` angles in ``[0, pi)`` are
    drawn by sampling each line every 0.5 px and rounding to the grid. The DC pixel is
    always set and the mask is made point-symmetric about ``(H//2, W//2)`` by OR-ing it
    with its point reflection.

    Args:
        shape: ``(H, W)`` of the k-space grid.
        n_spokes: number of spokes (>= 1). Give exactly one of ``n_spokes`` / ``accel``.
        accel: target acceleration ``R >= 1``; ``n_spokes`` is searched so that the sampled
            fraction is closest to ``1 / R`` (``R == 1`` gives an all-ones mask).
        angles: ``"uniform"`` (``offset + k*pi/n``) or ``"golden"`` (``(start + k)*111.246 deg``).
        seed: rotates the angle offset (uniform, ``U[0, pi/n)``) or the golden-angle start index;
            ``None`` means offset 0 / start 0 (deterministic).
    Returns:
        :class:`MaskResult` with ``n_lines`` = number of spokes.
    """
    h, w = _check_shape(shape)
    if angles not in ("uniform", "golden"):
        raise ValueError(f"angles must be 'uniform' or 'golden', got {angles!r}")
    s = _check_seed(seed)
    if (n_spokes is None) == (accel is None):
        raise ValueError("give exactly one of n_spokes or accel")
    if n_spokes is not None:
        if isinstance(n_spokes, bool) or not isinstance(n_spokes, numbers.Integral):
            raise ValueError(f"n_spokes must be an int, got {type(n_spokes).__name__} {n_spokes!r}")
        if n_spokes < 1:
            raise ValueError(f"n_spokes must be >= 1, got {n_spokes}")
        n = int(n_spokes)
        return _result(_draw_spokes(h, w, _spoke_angles(n, angles, s)), n)

    a = _check_accel(accel)
    if a == 1.0:
        return _result(np.ones((h, w), dtype=bool), None)
    target = 1.0 / a
    cache: dict[int, np.ndarray] = {}

    def frac(k: int) -> float:
        if k not in cache:
            cache[k] = _draw_spokes(h, w, _spoke_angles(k, angles, s))
        return float(cache[k].mean())

    # Smallest n with frac(n) >= target (frac is ~monotone), then polish locally.
    lo, hi = 1, max(2, int(math.ceil(math.pi * math.hypot(h, w) / 2.0)) + 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if frac(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    neighbours = [k for k in range(lo - 2, lo + 3) if k >= 1]
    best = min(neighbours, key=lambda k: (abs(frac(k) - target), k))
    return _result(cache[best], best)


def mask_kinds(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The kind of every ``(H, W)`` mask in ``mask`` (..., H, W), flattened: a (N,) int64 tensor of indices
    into :data:`MASK_KINDS` (0 ``"cartesian"``: whole lines, all rows equal or all columns equal; 1
    ``"radial"``: radial spokes and any other 2-D pattern), on ``mask``'s device. Raises ValueError below 2-D."""
    if isinstance(mask, np.ndarray):
        m = torch.from_numpy(np.require(mask, requirements=["C", "W"]))  # copies only a read-only array
    else:
        m = torch.as_tensor(mask).detach()
    if m.ndim < 2:
        raise ValueError(f"a mask must be (..., H, W), got shape {tuple(m.shape)}")
    m = m.reshape(-1, *m.shape[-2:]) != 0
    lines = (m == m[:, :1, :]).flatten(1).all(1) | (m == m[:, :, :1]).flatten(1).all(1)
    return (~lines).long()


def mask_kind(mask: np.ndarray | torch.Tensor) -> str | None:
    """``"cartesian"`` when every ``(H, W)`` mask in ``mask`` (..., H, W) samples whole lines (all rows equal,
    or all columns equal), ``"radial"`` when none does (radial spokes and any other 2-D pattern), ``None``
    when the masks are of both kinds or ``mask`` is empty (:func:`mask_kinds` per mask)."""
    if len(mask.shape) < 2 or math.prod(mask.shape) == 0:
        return None
    kinds = mask_kinds(mask).unique()
    return MASK_KINDS[int(kinds[0])] if len(kinds) == 1 else None
