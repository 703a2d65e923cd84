"""One known acquisition: the measured k-space and its sampling mask, as one object.

deepinv's physics objects are the model: every consumer (inference, the pipeline, the docks, the
training data) takes a :class:`Measurement` instead of loose ``kspace=, mask=`` pairs, and the rules
that go with it live here once: simulating it from a clean image, the zero-filled image, the
data-consistency projection, the check that it belongs to an image, and its ``.npz`` file.

Shapes: ``kspace`` (Z, H, W) complex64, the centred orthonormal k-space of the [0, 1] image
(zeros where not sampled); ``mask`` (H, W) or (Z, H, W) float32 in {0, 1}.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..io.atomic import write_with
from .consistency import data_consistency
from .fft import ifft2c
from .kspace import acquire
from .masks import mask_kind

__all__ = ["Measurement", "MeasurementError"]


class MeasurementError(ValueError):
    """A k-space / mask pair that cannot be used: the message names the fault and the fix."""


@dataclass(frozen=True, eq=False)
class Measurement:
    """A known acquisition ``y = M . F(x)``: ``kspace`` (Z, H, W) complex64 and ``mask`` (H, W) or
    (Z, H, W) float32 {0, 1}. Build it with :meth:`simulate`, :meth:`load` or :meth:`of` (checked)."""

    kspace: np.ndarray
    mask: np.ndarray

    # ------------------------------------------------------------------ construction
    @classmethod
    def of(cls, kspace, mask, shape: Optional[tuple[int, int, int]] = None) -> "Measurement":
        """A checked measurement from arrays: ``kspace`` (Z, H, W) or (H, W) complex, ``mask`` (H, W) or
        (Z, H, W) {0, 1}; with ``shape`` (Z, H, W), also that it fits an image of that shape. The mask comes
        back as (Z, H, W). Raises :class:`MeasurementError`."""
        k, m = np.asarray(kspace), np.asarray(mask)
        if k.ndim == 2:
            k = k[None]
        if k.ndim != 3:
            raise MeasurementError(f"k-space must be (Z, H, W) or (H, W), got shape {k.shape}")
        z, h, w = shape if shape is not None else k.shape
        if m.ndim == 2:  # one mask for every slice: a broadcast view, not Z copies
            m = np.broadcast_to(m.astype(np.float32), (k.shape[0], h, w)) if m.shape == (h, w) else m[None]
        if k.shape != (z, h, w) or m.shape != (z, h, w):
            raise MeasurementError(f"k-space {k.shape} and mask {m.shape} do not match the image's {z} slices of "
                                   f"{h}x{w}; give (Z, H, W) k-space and an (H, W) or (Z, H, W) mask")
        if not np.isfinite(k).all():
            raise MeasurementError("the k-space holds NaN or infinite values")
        if m.size and not np.isin(m, (0, 1)).all():
            raise MeasurementError("the sampling mask must hold only 0 and 1")
        return cls(k.astype(np.complex64, copy=False), m.astype(np.float32, copy=False))

    @classmethod
    def simulate(cls, x: np.ndarray, kind: str, accel: float, seed: Optional[int] = None,
                 **mask_kwargs) -> tuple[np.ndarray, "Measurement"]:
        """Undersample the clean image ``x`` (H, W) or (Z, H, W) in [0, 1] with a seeded ``kind`` mask
        ("cartesian" | "radial") at ``accel``: ``(zero-filled magnitude float32, measurement)``. One mask for
        every slice (as a scanner's protocol)."""
        vol = np.asarray(x, np.float32)
        zf, k, m = acquire(vol, kind, accel, seed=seed, **mask_kwargs)
        k = np.asarray(k)
        return np.asarray(zf, np.float32), cls.of(k, np.asarray(m.mask), k.shape if k.ndim == 3 else None)

    # ------------------------------------------------------------------ what it gives
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kspace.shape)

    @property
    def kind(self) -> Optional[str]:
        """"cartesian" / "radial" (:func:`~napari_vldun.degradation.mask_kind`), None for mixed masks."""
        return mask_kind(self.mask)

    @property
    def fraction(self) -> float:
        """Share of k-space sampled (0..1)."""
        return float(np.mean(self.mask)) if self.mask.size else 0.0

    def slice(self, z: int) -> "Measurement":
        """The (1, H, W) measurement of slice ``z``."""
        return Measurement(self.kspace[z:z + 1], self.mask[z:z + 1])

    def zero_filled(self) -> np.ndarray:
        """``|F^-1(kspace)|`` (Z, H, W) float32: the image a scanner shows for this acquisition."""
        return np.abs(np.asarray(ifft2c(self.kspace))).astype(np.float32)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Data consistency of a (Z, 1, H, W) real estimate: its k-space replaced by the measured one where
        sampled (:func:`~napari_vldun.degradation.data_consistency`)."""
        k = torch.from_numpy(self.kspace)[:, None].to(x.device)
        m = torch.from_numpy(np.ascontiguousarray(self.mask))[:, None].to(x.device)
        return data_consistency(x, k, m)

    def mismatch(self, image: np.ndarray) -> float:
        """Relative RMS difference between ``image`` (Z, H, W) and :meth:`zero_filled`: ~1e-7 when the
        k-space was measured from this image, large otherwise."""
        zf = self.zero_filled().astype(np.float64)
        ref = np.asarray(image, np.float64).reshape(zf.shape)
        return float(np.sqrt(np.mean((zf - ref) ** 2)) / max(float(np.sqrt(np.mean(ref**2))), 1e-8))

    def check(self, image: np.ndarray, tol: float = 1e-3) -> None:
        """Refuse a measurement that does not belong to ``image`` (Z, H, W) (:meth:`mismatch` > ``tol``):
        data consistency would pull the result towards another image (e.g. one rescaled or clipped after the
        k-space was written). Raises :class:`MeasurementError`."""
        if np.asarray(image).size != self.kspace.size:
            raise MeasurementError(f"the k-space {self.shape} does not match the image {np.shape(image)}")
        err = self.mismatch(image)
        if err > tol:
            raise MeasurementError(
                f"the k-space does not belong to this image: its zero-filled magnitude differs by {err:.2%} "
                "(RMS); give the image written with it, unscaled (see `vldun degrade --kspace-out`)")

    # ------------------------------------------------------------------ file
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write ``.npz`` (no pickles): the shape, the mask (uint8) and only the sampled values, so a 4x
        acquisition takes about a quarter of the space. Atomic; an existing file is refused unless
        ``overwrite``."""
        k = self.kspace
        m = self.mask > 0
        m = m[0] if m.ndim == 3 and bool((m == m[:1]).all()) else m  # one mask for every slice: store it once
        full = np.broadcast_to(m, k.shape)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, shape=np.array(k.shape), mask=m.astype(np.uint8), values=k[full])

        write_with(path, save, overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "Measurement":
        """Read :meth:`save`'s file. Raises FileNotFoundError, or :class:`MeasurementError` naming the file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"k-space file {p} not found")
        bad = (f"{p}: not a k-space file written by `vldun degrade --kspace-out` (an .npz holding the arrays "
               "shape, mask and values); give the .npz written with this image")
        try:
            f = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # not .npy/.npz (numpy's hints do not apply)
            raise MeasurementError(bad) from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise MeasurementError(f"{bad} (this is a single .npy array)")
        with f:
            missing = [k for k in ("shape", "mask", "values") if k not in f.files]
            if missing:
                raise MeasurementError(f"{bad} (it lacks {', '.join(missing)})")
            try:
                shape, m, values = tuple(int(v) for v in f["shape"]), f["mask"] > 0, f["values"]
            except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile):
                raise MeasurementError(f"{bad} (its arrays are unreadable or corrupt)") from None
        full = np.broadcast_to(m, shape) if m.shape != tuple(shape) else m
        if full.shape != tuple(shape) or int(full.sum()) != values.size:
            raise MeasurementError(
                f"{p}: the mask {m.shape} and {values.size} sampled values do not fit the shape {shape}")
        k = np.zeros(shape, np.complex64)
        k[full] = values
        return cls.of(k, m.astype(np.float32))
