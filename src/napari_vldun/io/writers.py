"""Write arrays back to disk aligned with the :class:`Volume` they came from.

Arrays are in the :mod:`napari_vldun.io.volume` convention: ``(Z, H, W)`` or
``(H, W)``.  NIfTI files store the reverse order ``(X, Y, Z)``; the writer
transposes back and uses the matching affine, so a NIfTI read with
:func:`read_image` and written with ``like=`` reproduces the file's array order,
affine and header.  All writes go through :mod:`napari_vldun.io.atomic`: atomic (temp file in
the same folder, then a rename), never through a symbolic link, ``0o666 & ~umask`` permissions,
and an existing file is refused unless ``overwrite=True``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .volume import REVERSE3, Volume

__all__ = ["write_nifti", "write_png"]


def _label_dtype(arr: np.ndarray) -> np.dtype:
    """uint8 if labels fit in 0..255, else int16 (int32 if needed)."""
    if arr.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 255:
        return np.dtype(np.uint8)
    if lo >= -32768 and hi <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def write_nifti(
    array: np.ndarray, path: str | Path, like: Volume | None = None, *,
    overwrite: bool = False, dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write a ``(Z, H, W)`` or ``(H, W)`` array as NIfTI (``.nii`` / ``.nii.gz``).

    Geometry comes from ``like``: a volume read from NIfTI gets its original
    header and affine back exactly; any other volume gets ``like.affine``
    (converted to NIfTI axis order).  Without ``like`` the affine is identity
    (1 mm voxels).  ``dtype`` defaults to uint8/int16 for integer or bool arrays
    (labels) and float32 otherwise.  Returns the written path.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False,
    :class:`~napari_vldun.io.atomic.OutputPathError` (a ``ValueError``) if it is a symbolic
    link, ``ValueError`` for a bad suffix, dimensionality or a shape that differs from
    ``like.data.shape``.
    """
    import nibabel as nib

    path = Path(path).expanduser()
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"{path}: NIfTI path must end with .nii or .nii.gz")
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D or 3-D array, got shape {arr.shape}")
    if like is not None and tuple(arr.shape) != tuple(like.data.shape):
        raise ValueError(
            f"{path}: array shape {arr.shape} differs from like.data.shape {like.data.shape}")
    if dtype is None:
        dtype = _label_dtype(arr) if arr.dtype.kind in "biu" else np.float32
    dtype = np.dtype(dtype)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    out = np.ascontiguousarray(arr.transpose(tuple(range(arr.ndim))[::-1])).astype(dtype)

    meta = like.meta if like is not None else {}
    hdr = meta.get("nifti_header") if meta.get("format") == "nifti" else None
    if hdr is not None and meta.get("nifti_affine") is not None:
        affine = np.asarray(meta["nifti_affine"], np.float64)
        hdr = hdr.copy()
        hdr.set_data_shape(out.shape)
        img = nib.Nifti1Image(out, affine, header=hdr)  # header kept: same affine
    else:
        affine = like.affine @ REVERSE3 if like is not None else np.eye(4)
        img = nib.Nifti1Image(out, affine)
        code = "scanner" if meta.get("format") in ("dicom", "nrrd") else "aligned"
        img.set_sform(affine, code=code)
        img.set_qform(affine, code=code)
        img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(dtype)
    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def write_png(
    array2d: np.ndarray, path: str | Path, overwrite: bool = False, *,
    vrange: tuple[float, float] | None = None,
) -> Path:
    """Write a 2-D ``(H, W)`` array as an 8-bit grayscale PNG for quick looks.

    Intensities are scaled from ``vrange`` (default: the array's min/max) to
    0..255 and clipped; a constant array gives black.  NaNs become 0.
    """
    from PIL import Image

    path = Path(path).expanduser()
    arr = np.asarray(array2d, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{path}: write_png needs a 2-D array, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if vrange is None:
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0, 0)
    else:
        lo, hi = (float(v) for v in vrange)
    scaled = np.zeros(arr.shape) if hi <= lo else (arr - lo) / (hi - lo)
    scaled = np.where(finite, np.clip(scaled, 0.0, 1.0), 0.0)
    img8 = np.rint(scaled * 255.0).astype(np.uint8)
    with atomic_path(path, overwrite) as tmp:
        Image.fromarray(img8).save(str(tmp), format="PNG")
    return path
