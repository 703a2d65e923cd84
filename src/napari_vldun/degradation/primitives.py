"""Image-domain degradation primitives for training the degradation classifier.

Every primitive takes an image ``x`` of shape ``(..., H, W)`` (torch tensor or numpy
array, intensities in [0, 1]) and returns the same kind, shape and float dtype
(integer input becomes float32), clamped to [0, 1]. Randomness comes only from a
local ``torch.Generator`` seeded by ``seed``, so results are reproducible and the
global RNG state is untouched. Lengths/sigmas are in pixels.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .fft import ArrayLike, _check_finite, _float_dtype, _restore, _to_tensor
from .kspace import degrade
from .masks import _check_real, _check_seed

__all__ = [
    "gaussian_noise", "rician_noise", "gaussian_blur", "motion_blur", "low_resolution",
    "undersampling", "identity", "PRIMITIVES", "DEGRADATION_PROMPTS", "random_primitive",
]


def _prepare(x: ArrayLike) -> tuple[torch.Tensor, bool, torch.dtype]:
    """Validate ``x`` and return ``(float tensor of the same shape, was_numpy, float dtype)``."""
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"x must have shape (..., H, W), got ndim={getattr(x, 'ndim', None)}")
    t, was_np = _to_tensor(x)
    if t.is_complex():
        raise ValueError("x must be a real-valued image")
    _check_finite(t, "x")
    dtype = _float_dtype(t)
    return t.to(dtype), was_np, dtype


def _finish(y: torch.Tensor, was_np: bool, dtype: torch.dtype) -> ArrayLike:
    return _restore(y.clamp(0.0, 1.0).to(dtype), was_np)


def _generator(seed: Optional[int], device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    s = _check_seed(seed)
    if s is None:
        g.seed()
    else:
        g.manual_seed(s)
    return g


def _nonneg(value: object, name: str) -> float:
    v = _check_real(value, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _conv(t: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2-D convolution of ``(..., H, W)`` with a ``(kh, kw)`` kernel, reflect padding."""
    shape = t.shape
    h, w = shape[-2:]
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    flat = t.reshape(-1, 1, h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    flat = F.pad(flat, (pw, pw, ph, ph), mode=mode)
    out = F.conv2d(flat, kernel.to(flat)[None, None])
    return out.reshape(shape)


# ----------------------------------------------------------------------------- primitives
def gaussian_noise(x: ArrayLike, sigma: float, seed: Optional[int] = None) -> ArrayLike:
    """Additive white Gaussian noise of std ``sigma`` (intensity units), clamped to [0, 1]."""
    s = _nonneg(sigma, "sigma")
    t, was_np, dtype = _prepare(x)
    n = torch.randn(t.shape, generator=_generator(seed, t.device), device=t.device, dtype=dtype)
    return _finish(t + s * n, was_np, dtype)


def rician_noise(x: ArrayLike, sigma: float, seed: Optional[int] = None) -> ArrayLike:
    """Rician noise ``|x + n_r + i n_i|`` with ``n_r, n_i ~ N(0, sigma^2)`` (MRI magnitude noise)."""
    s = _nonneg(sigma, "sigma")
    t, was_np, dtype = _prepare(x)
    g = _generator(seed, t.device)
    nr = torch.randn(t.shape, generator=g, device=t.device, dtype=dtype)
    ni = torch.randn(t.shape, generator=g, device=t.device, dtype=dtype)
    return _finish(torch.sqrt((t + s * nr) ** 2 + (s * ni) ** 2), was_np, dtype)


def gaussian_blur(x: ArrayLike, sigma: float) -> ArrayLike:
    """Separable Gaussian blur with std ``sigma`` px (kernel radius ``ceil(3 sigma)``, reflect pad)."""
    s = _nonneg(sigma, "sigma")
    t, was_np, dtype = _prepare(x)
    if s == 0:
        return _finish(t.clone(), was_np, dtype)
    r = max(1, int(math.ceil(3.0 * s)))
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (ax / s) ** 2)
    k = (k / k.sum()).to(dtype)
    y = _conv(_conv(t, k[None, :]), k[:, None])
    return _finish(y, was_np, dtype)


def motion_blur(x: ArrayLike, length: int, angle_deg: float = 0.0) -> ArrayLike:
    """Linear motion blur: average along a centred line of ``length`` px at ``angle_deg``.

    The angle is counter-clockwise from the +column (x) axis as displayed (rows point down).
    The line kernel is built by dense sampling (step 0.25 px) with bilinear splatting and
    normalised to sum 1; ``length == 1`` is the identity.
    """
    if isinstance(length, bool) or not isinstance(length, numbers.Integral):
        raise ValueError(f"length must be an int, got {type(length).__name__} {length!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    ang = math.radians(_check_real(angle_deg, "angle_deg"))
    t, was_np, dtype = _prepare(x)
    if length == 1:
        return _finish(t.clone(), was_np, dtype)
    half = (length - 1) / 2.0
    r = int(math.ceil(half)) + 1
    size = 2 * r + 1
    s = torch.linspace(-half, half, 4 * length + 1, dtype=torch.float64)
    pr, pc = r - s * math.sin(ang), r + s * math.cos(ang)
    k = torch.zeros(size, size, dtype=torch.float64)
    r0, c0 = pr.floor(), pc.floor()
    fr, fc = pr - r0, pc - c0
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                        (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        k.index_put_(((r0 + dr).long(), (c0 + dc).long()), wgt, accumulate=True)
    k = (k / k.sum()).to(dtype)
    return _finish(_conv(t, k), was_np, dtype)


def low_resolution(x: ArrayLike, scale: float) -> ArrayLike:
    """Area-downsample by ``scale`` in (0, 1] (size ``max(1, round(H*scale))``), bicubic up to (H, W)."""
    sc = _check_real(scale, "scale")
    if not 0.0 < sc <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {sc}")
    t, was_np, dtype = _prepare(x)
    if sc == 1.0:
        return _finish(t.clone(), was_np, dtype)
    shape = t.shape
    h, w = shape[-2:]
    flat = t.reshape(-1, 1, h, w)
    small = F.interpolate(flat, size=(max(1, round(h * sc)), max(1, round(w * sc))), mode="area")
    up = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return _finish(up.reshape(shape), was_np, dtype)


def undersampling(
    x: ArrayLike, accel: float, kind: str = "cartesian", seed: Optional[int] = None
) -> ArrayLike:
    """Zero-filled k-space undersampling (magnitude), see :func:`.kspace.degrade`; x is 2-4 D."""
    t, was_np, dtype = _prepare(x)
    y, _ = degrade(t, kind, accel, seed=seed)
    return _finish(y, was_np, dtype)


def identity(x: ArrayLike) -> ArrayLike:
    """The ``"clean"`` class: a validated, clamped copy of ``x``."""
    t, was_np, dtype = _prepare(x)
    return _finish(t.clone(), was_np, dtype)


#: Degradation class name -> primitive (keys match :data:`DEGRADATION_PROMPTS`).
PRIMITIVES: dict[str, Callable[..., ArrayLike]] = {
    "noise": gaussian_noise,
    "blur": gaussian_blur,
    "motion": motion_blur,
    "low_resolution": low_resolution,
    "undersampling": undersampling,
    "clean": identity,
}

#: Degradation class name -> fixed CLIP text prompt.
DEGRADATION_PROMPTS: dict[str, str] = {
    "noise": "Noisy medical image with severe grain",
    "blur": "Blurry medical image with defocused anatomy",
    "motion": "Medical image with motion blur artifacts",
    "low_resolution": "Low-resolution medical image with pixelated details",
    "undersampling": "Medical image with aliasing and streak artifacts from undersampling",
    "clean": "Clean high-quality medical image",
}


def random_primitive(
    x: ArrayLike, name: str, seed: Optional[int] = None, return_params: bool = False
):
    """Apply class ``name`` with a strength drawn from a seeded generator.

    Ranges: noise sigma ~ U(0.02, 0.10), Gaussian or Rician with p = 0.5; blur sigma ~
    U(0.8, 2.5) px; motion length ~ U{5..15} px, angle ~ U(0, 180) deg; low_resolution
    scale ~ U(0.25, 0.5); undersampling accel ~ U(2, 8), Cartesian or radial with p = 0.5;
    clean: none.

    Returns:
        The degraded image, or ``(image, params)`` if ``return_params``.
    """
    if name not in PRIMITIVES:
        raise ValueError(f"name must be one of {sorted(PRIMITIVES)}, got {name!r}")
    g = _generator(seed, torch.device("cpu"))

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    sub = int(torch.randint(0, 2**31 - 1, (), generator=g))  # seed for the primitive itself
    if name == "noise":
        params = {"sigma": u(0.02, 0.10), "seed": sub}
        fn = rician_noise if float(torch.rand((), generator=g)) < 0.5 else gaussian_noise
        params["type"] = fn.__name__
        y = fn(x, params["sigma"], seed=sub)
    elif name == "blur":
        params = {"sigma": u(0.8, 2.5)}
        y = gaussian_blur(x, **params)
    elif name == "motion":
        params = {"length": int(torch.randint(5, 16, (), generator=g)), "angle_deg": u(0.0, 180.0)}
        y = motion_blur(x, **params)
    elif name == "low_resolution":
        params = {"scale": u(0.25, 0.5)}
        y = low_resolution(x, **params)
    elif name == "undersampling":
        kind = "radial" if float(torch.rand((), generator=g)) < 0.5 else "cartesian"
        params = {"accel": u(2.0, 8.0), "kind": kind, "seed": sub}
        y = undersampling(x, **params)
    else:
        params = {}
        y = identity(x)
    return (y, params) if return_params else y
