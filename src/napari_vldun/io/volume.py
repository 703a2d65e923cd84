"""The :class:`Volume` container, :class:`ImageReadError` and geometry helpers.

Axis convention (used everywhere in ``napari_vldun``)
------------------------------------------------------
``Volume.data`` is ``(Z, H, W)`` for volumes and ``(H, W)`` for 2-D images, i.e.
*slice, row, column*, with slices along the first axis as napari shows them.

``Volume.affine`` is a 4x4 matrix mapping the homogeneous index of ``data``
``(z, y, x, 1)`` -- in the axis order of ``data`` -- to world millimetres in RAS+
(x: Right, y: Anterior, z: Superior, as in NIfTI).  A 2-D image is treated as a
single slice: its ``(row, col)`` index maps through ``affine @ (0, row, col, 1)``.
DICOM and NRRD LPS coordinates are flipped to RAS when read.

The NIfTI storage order ``(i, j, k)`` is the reverse of ``data``'s order, so
``nifti_array == data.transpose(2, 1, 0)`` and ``nifti_affine == affine @ REVERSE3``
(``REVERSE3`` is its own inverse).  Writers use this to write back aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Volume", "ImageReadError", "REVERSE3", "LPS_TO_RAS", "default_affine",
           "check_array", "as_label"]

#: Permutation (z, y, x, 1) <-> (i=x, j=y, k=z, 1); symmetric and self-inverse.
REVERSE3 = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
#: Flip of the first two world axes (LPS <-> RAS).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageReadError(ValueError):
    """A medical image could not be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Volume:
    """An image with its geometry.

    Attributes
    ----------
    data : float32 array, ``(Z, H, W)`` or ``(H, W)`` (see module docstring).
    spacing : voxel size in mm, one entry per axis of ``data`` (same order).
    affine : (4, 4) float64, index of ``data`` (z, y, x, 1) -> RAS world mm.
    modality : ``"CT"``, ``"MR"`` or ``None`` (unknown).
    source : path it was read from (``""`` if built in memory).
    meta : free-form provenance: ``format``, ``original_dtype``, ``axes``,
        ``transpose`` (the permutation applied to the file's array), notes, ...
    label : optional integer label array with the same shape as ``data``.
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    label: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != self.data.ndim:
            raise ValueError(
                f"spacing {self.spacing} does not match data shape {self.data.shape}"
            )
        if self.label is not None and self.label.shape != self.data.shape:
            raise ValueError(
                f"label shape {self.label.shape} != image shape {self.data.shape}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    def __repr__(self) -> str:  # keep it short: arrays can be huge
        return (
            f"Volume(shape={self.shape}, spacing={self.spacing}, "
            f"modality={self.modality!r}, source={self.source!r}, "
            f"label={'yes' if self.label is not None else 'no'})"
        )


def default_affine(spacing: tuple[float, ...]) -> np.ndarray:
    """Axis-aligned affine for ``data`` with ``spacing`` (last axis -> world x).

    The matching NIfTI affine (``affine @ REVERSE3``) is ``diag(sx, sy, sz, 1)``.
    """
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [1.0] + sp
    return np.diag([sp[2], sp[1], sp[0], 1.0]) @ REVERSE3


def check_array(
    arr: np.ndarray, path: str | Path, *, finite: bool = True, trailing_only: bool = False
) -> np.ndarray:
    """Validate an image array: non-empty, 2-D/3-D (4-D singletons squeezed), finite.

    ``trailing_only`` restricts squeezing to axes after the third (keeps geometry
    of NIfTI/NRRD files, whose first three axes are spatial).  Raises :class:`ImageReadError` naming ``path`` and the problem.
    """
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ImageReadError(path, f"empty image (array of shape {arr.shape} has 0 voxels)")
    if arr.ndim > 3:
        arr = squeeze_to_3d(arr, path, trailing_only=trailing_only)
    if arr.ndim not in (2, 3):
        raise ImageReadError(
            path, f"wrong dimensionality: shape {arr.shape} ({arr.ndim}-D); expected 2-D or 3-D"
        )
    if finite and arr.dtype.kind in "fc":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            what = f"all {bad} voxels" if bad == arr.size else f"{bad} of {arr.size} voxels"
            raise ImageReadError(path, f"non-finite values (NaN/inf) in {what}")
    return arr


def squeeze_to_3d(
    arr: np.ndarray, path: str | Path, *, trailing_only: bool = False
) -> np.ndarray:
    """Drop singleton axes of a >3-D array (trailing ones first), else raise."""
    shape = arr.shape
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3 and trailing_only:
        raise ImageReadError(
            path,
            f"wrong dimensionality: shape {shape} ({len(shape)}-D) is a true 4-D "
            "(e.g. time series) image; expected 2-D or 3-D",
        )
    if arr.ndim > 3:
        extra = [i for i, n in enumerate(arr.shape) if n == 1]
        if len(extra) < arr.ndim - 3:
            raise ImageReadError(
                path,
                f"wrong dimensionality: shape {shape} ({len(shape)}-D) has no singleton "
                "axis to drop; expected 2-D or 3-D",
            )
        arr = np.squeeze(arr, axis=tuple(extra[: arr.ndim - 3]))
    return arr


def as_label(arr: np.ndarray, path: str | Path, *, mask255: bool = False) -> np.ndarray:
    """Integer labels (uint8 when they fit, else int16/int32).

    With ``mask255`` (8-bit picture masks) a ``{0, 255}`` mask becomes ``{0, 1}``.
    """
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ImageReadError(path, "label contains NaN/inf values")
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded, atol=1e-3):
            raise ImageReadError(path, "label has non-integer values")
        arr = rounded
    elif arr.dtype.kind not in "biu":
        raise ImageReadError(path, f"label has unsupported dtype {arr.dtype}")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if mask255 and lo >= 0 and hi == 255 and np.isin(np.unique(arr), (0, 255)).all():
        arr, hi = arr // 255, 1
    if 0 <= lo and hi <= 255:
        return arr.astype(np.uint8)
    dt = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
    return arr.astype(dt)
