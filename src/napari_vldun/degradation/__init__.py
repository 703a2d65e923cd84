"""Degradation models for VL-DUN: centred FFT, k-space masks, undersampling, primitives.

The k-space forward model is ``y = F^-1(M . F(x))`` with ``F`` the centred orthonormal
2-D FFT (:func:`fft2c`) and ``M`` a Cartesian (MRI) or radial (sparse-view CT) mask.
No Qt imports here.
"""

from .consistency import data_consistency, measure, mirror, reflect
from .fft import fft2c, ifft2c
from .kspace import acquire, degrade, undersample
from .masks import GOLDEN_ANGLE_DEG, MASK_KINDS, MaskResult, cartesian_mask, mask_kind, radial_mask
from .primitives import (
    DEGRADATION_PROMPTS,
    PRIMITIVES,
    gaussian_blur,
    gaussian_noise,
    identity,
    low_resolution,
    motion_blur,
    random_primitive,
    rician_noise,
    undersampling,
)

__all__ = [
    "data_consistency",
    "measure",
    "mirror",
    "reflect",
    "fft2c",
    "ifft2c",
    "MaskResult",
    "cartesian_mask",
    "radial_mask",
    "mask_kind",
    "MASK_KINDS",
    "GOLDEN_ANGLE_DEG",
    "undersample",
    "degrade",
    "acquire",
    "gaussian_noise",
    "rician_noise",
    "gaussian_blur",
    "motion_blur",
    "low_resolution",
    "undersampling",
    "identity",
    "PRIMITIVES",
    "DEGRADATION_PROMPTS",
    "random_primitive",
]
