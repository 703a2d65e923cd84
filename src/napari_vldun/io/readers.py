"""Read medical images into :class:`Volume` objects, keeping their geometry.

See :mod:`napari_vldun.io.volume` for the axis convention: ``data`` is ``(Z, H, W)``
or ``(H, W)``; ``affine`` maps ``(z, y, x, 1)`` indices of ``data`` to RAS mm.
Every failure raises :class:`ImageReadError` whose message names the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .volume import (LPS_TO_RAS, REVERSE3, ImageReadError, Volume, as_label,
                     check_array, default_affine)

__all__ = ["SUPPORTED_SUFFIXES", "file_stem", "read_image", "read_label", "suffix_of"]

#: File suffixes understood by :func:`read_image` (a folder is read as a DICOM series).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".h5", ".hdf5",
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy",
)

Raw = tuple[np.ndarray, dict[str, Any]]  # array in (Z, H, W)/(H, W) order + geometry


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` treated as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def file_stem(path: str | Path) -> str:
    """The file name without its (longest) supported suffix, matched case-insensitively
    (``"Case1.NII.GZ"`` -> ``"Case1"``); :attr:`Path.stem` for any other name. Used to match
    image and label files of two folders by name."""
    name = Path(path).name
    low = name.lower()
    for suf in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


# --------------------------------------------------------------------- formats
def _read_nifti(path: Path, label: bool) -> Raw:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    arr = np.asanyarray(img.dataobj)  # applies scl_slope/inter; raises if truncated
    arr = check_array(arr, path, trailing_only=True, finite=not label)
    nd = arr.ndim
    perm = tuple(range(nd))[::-1]  # (X, Y, Z) -> (Z, Y, X); (X, Y) -> (Y, X)
    zooms = [float(z) for z in hdr.get_zooms()[:nd]]
    nifti_affine = np.array(img.affine, dtype=np.float64)
    meta = {
        "format": "nifti", "original_dtype": str(hdr.get_data_dtype()),
        "transpose": perm, "nifti_shape": tuple(arr.shape),
        "nifti_affine": nifti_affine.copy(), "nifti_header": hdr.copy(),
        "sform_code": int(hdr["sform_code"]), "qform_code": int(hdr["qform_code"]),
        "axes": "data = nifti_array.transpose(%s) -> (Z, Y, X)" % (perm,),
    }
    return arr.transpose(perm), {"spacing": tuple(zooms[::-1]),
                                 "affine": nifti_affine @ REVERSE3, "meta": meta}


def _read_nrrd(path: Path, label: bool) -> Raw:
    import nrrd

    arr, hdr = nrrd.read(str(path), index_order="C")  # C order: (Z, Y, X)
    arr = check_array(arr, path, trailing_only=False, finite=not label)
    nd = arr.ndim
    meta: dict[str, Any] = {"format": "nrrd", "original_dtype": str(arr.dtype),
                            "transpose": None, "axes": "(Z, Y, X), C index order"}
    dirs = hdr.get("space directions")
    space = str(hdr.get("space", "")).lower()
    affine = default_affine((1.0,) * nd)
    if dirs is not None:
        rows = [np.asarray(d, float) for d in dirs if d is not None and np.all(np.isfinite(d))]
        if len(rows) == nd and all(r.size == 3 for r in rows):
            aff = np.eye(4)
            for a in range(nd):  # data axis a <-> header axis nd-1-a
                aff[:3, 3 - nd + a] = rows[nd - 1 - a]
            origin = hdr.get("space origin")
            if origin is not None and np.all(np.isfinite(origin)):
                aff[:3, 3] = np.asarray(origin, float)
            if space in ("left-posterior-superior", "lps"):
                aff = LPS_TO_RAS @ aff
            elif space not in ("right-anterior-superior", "ras"):
                meta["note"] = f"NRRD space {space!r} used as RAS"
            if nd == 2:  # unit normal for the implicit slice axis
                nrm = np.cross(aff[:3, 2], aff[:3, 1])
                aff[:3, 0] = nrm / (np.linalg.norm(nrm) or 1.0)
            affine = aff
    spacing = tuple(float(np.sqrt(np.sum(affine[:3, 3 - nd + a] ** 2))) for a in range(nd))
    if dirs is None and "spacings" in hdr:
        spacing = tuple(float(s) for s in hdr["spacings"][::-1][:nd])
        affine = default_affine(spacing)
    meta["space"] = space or None
    return arr, {"spacing": spacing, "affine": affine, "meta": meta}


def _read_h5(path: Path, label: bool) -> Raw:
    import h5py

    with h5py.File(str(path), "r") as f:
        key = "label" if label else "image"
        if key not in f:
            raise ImageReadError(path, f"no '{key}' dataset (keys: {sorted(f.keys())})")
        arr = np.asarray(f[key][()])
        lab = np.asarray(f["label"][()]) if (not label and "label" in f) else None
    arr = check_array(arr, path, finite=not label)
    meta = {"format": "hdf5", "original_dtype": str(arr.dtype), "transpose": None,
            "note": "no spacing stored; spacing set to 1.0", "axes": "as stored"}
    sp = (1.0,) * arr.ndim
    return arr, {"spacing": sp, "affine": default_affine(sp), "meta": meta, "label": lab}


def _to_gray(arr: np.ndarray, meta: dict[str, Any], path: Path, label: bool) -> np.ndarray:
    """(H, W, 3|4) colour -> (H, W); exact if the channels are equal."""
    rgb = arr[..., :3]
    if np.all(rgb == rgb[..., :1]):
        meta["color"] = "RGB(A) with equal channels: first channel kept"
        return np.ascontiguousarray(rgb[..., 0])
    if label:
        raise ImageReadError(path, "colour image cannot be used as a label mask")
    meta["color"] = "RGB(A) converted to gray: 0.299 R + 0.587 G + 0.114 B"
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _read_picture(path: Path, label: bool) -> Raw:
    meta: dict[str, Any] = {"format": suffix_of(path)[1:], "transpose": None,
                            "axes": "(H, W) or pages (Z, H, W)"}
    if suffix_of(path) in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(str(path)) as tf:
            series = tf.series[0]
            arr, axes = series.asarray(), series.axes
        if axes.endswith("S") and arr.shape[-1] in (3, 4):
            arr = _to_gray(arr, meta, path, label)
    else:
        from PIL import Image

        with Image.open(str(path)) as im:
            mode = im.mode
            if mode == "P" and not label:
                im = im.convert("RGBA")
            elif mode in ("LA", "PA"):
                im = im.convert("RGBA" if mode == "PA" else "L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.array(im)
        meta["pil_mode"] = mode
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = _to_gray(arr, meta, path, label)
    meta["original_dtype"] = str(arr.dtype)
    arr = check_array(arr, path, finite=not label)
    sp = (1.0,) * arr.ndim
    return arr, {"spacing": sp, "affine": default_affine(sp), "meta": meta}


def _read_npy(path: Path, label: bool) -> Raw:
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    arr = np.load(str(path), allow_pickle=False)
    meta = {"format": "npy", "original_dtype": str(arr.dtype), "transpose": None,
            "axes": "as stored, assumed (Z, H, W) or (H, W)"}
    if arr.dtype.kind not in "biuf":
        raise ImageReadError(path, f"unsupported dtype {arr.dtype}")
    arr = check_array(arr, path, finite=not label)
    sp = (1.0,) * arr.ndim
    return arr, {"spacing": sp, "affine": default_affine(sp), "meta": meta}


#: decoder packages for compressed DICOM transfer syntaxes (pydicom's pixel-data plugins), installed with the package.
DICOM_DECODERS = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    """``ds.pixel_array``; a compressed transfer syntax that no installed plugin decodes is an
    :class:`ImageReadError` naming the syntax and the packages that decode it (not "corrupt")."""
    try:
        return ds.pixel_array
    except Exception as exc:
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if uid is not None and getattr(uid, "is_compressed", False) and (
                "missing" in str(exc).lower() or "plugin" in str(exc).lower()
                or isinstance(exc, (NotImplementedError, ImportError))):
            raise ImageReadError(path, f"its pixel data is compressed ({uid.name}) and no installed decoder reads "
                                 f"it: install {DICOM_DECODERS} (JPEG, JPEG-LS, JPEG 2000), or pyjpegls "
                                 "for JPEG-LS") from exc
        raise


def _read_dicom(path: Path, label: bool) -> Raw:
    import pydicom

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    series: dict[str, list[Any]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception:
            if not path.is_dir():
                raise
            continue  # not DICOM: skip in folders
        if "PixelData" in ds:
            series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append(ds)
    if not series:
        raise ImageReadError(path, "no readable DICOM images (no files with pixel data)")
    uid, dss = max(series.items(), key=lambda kv: len(kv[1]))
    meta: dict[str, Any] = {"format": "dicom", "series_uid": uid, "n_files": len(dss),
                            "transpose": None, "axes": "(slice, row, col)"}
    if len(series) > 1:
        meta["note"] = f"{len(series)} series found; kept the largest ({len(dss)} files)"
        warnings.warn(f"{path}: {meta['note']}", stacklevel=4)
    ds0 = dss[0]
    iop = getattr(ds0, "ImageOrientationPatient", None)  # (row_dir, col_dir)
    orient = None if iop is None or len(iop) != 6 else (
        np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    normal = np.cross(*orient) if orient is not None else None
    pos = [getattr(d, "ImagePositionPatient", None) for d in dss]
    if normal is not None and all(p is not None for p in pos):
        key = [float(np.dot(normal, np.asarray(p, float))) for p in pos]
        meta["sorted_by"] = "ImagePositionPatient along slice normal"
    else:
        key = [float(getattr(d, "InstanceNumber", i) or i) for i, d in enumerate(dss)]
        meta["sorted_by"] = "InstanceNumber"
    order = np.argsort(key, kind="stable")
    dss = [dss[i] for i in order]
    # the instances in data order (slice k <- source_files[k]), for a DICOM SEG that references them
    meta["source_files"] = [str(Path(d.filename).resolve()) for d in dss]  # dcmread sets filename
    meta["sop_instance_uids"] = [str(getattr(d, "SOPInstanceUID", "")) for d in dss]
    slices = []
    for d in dss:
        px = _dicom_pixels(d, path)
        if not label:
            slope = float(getattr(d, "RescaleSlope", 1) or 1)
            inter = float(getattr(d, "RescaleIntercept", 0) or 0)
            px = px.astype(np.float32) * np.float32(slope) + np.float32(inter)
        slices.append(px)
    meta["original_dtype"] = str(_dicom_pixels(dss[0], path).dtype)
    if len({px.shape for px in slices}) > 1:
        raise ImageReadError(path, f"DICOM slices have different shapes "
                             f"{sorted({px.shape for px in slices})}")
    arr = slices[0] if len(slices) == 1 else np.stack(slices)
    if arr.ndim == 3 and len(slices) == 1:
        meta["note"] = "multi-frame DICOM: frame geometry from SliceThickness only"
    arr = check_array(arr, path, finite=not label)
    ps = [float(x) for x in getattr(ds0, "PixelSpacing", [1.0, 1.0])]
    thick = float(getattr(ds0, "SpacingBetweenSlices", 0) or
                  getattr(ds0, "SliceThickness", 0) or 1.0)
    aff = np.eye(4)  # LPS: columns (slice, row, col) directions, then origin
    row_dir, col_dir = orient if orient is not None else (np.eye(3)[0], np.eye(3)[1])
    n = np.cross(row_dir, col_dir)
    step = n * thick
    if len(dss) > 1 and meta["sorted_by"].startswith("Image"):
        p = np.asarray([np.asarray(d.ImagePositionPatient, float) for d in dss])
        step = (p[-1] - p[0]) / (len(dss) - 1)
        gaps = np.diff(p @ n)
        if gaps.size and np.ptp(gaps) > 1e-3 * max(abs(gaps.mean()), 1e-6):
            meta["note"] = "non-uniform slice spacing; mean spacing used"
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = step, col_dir * ps[0], row_dir * ps[1]
    if pos[0] is not None:
        aff[:3, 3] = np.asarray(dss[0].ImagePositionPatient, float)
    aff = LPS_TO_RAS @ aff
    spacing: tuple[float, ...] = (float(np.sqrt(np.sum(step**2))), ps[0], ps[1])
    if arr.ndim == 2:
        spacing = spacing[1:]
    mod = str(getattr(ds0, "Modality", "")) or None
    return arr, {"spacing": spacing, "affine": aff, "meta": meta, "modality": mod}


_READERS: dict[str, Callable[[Path, bool], Raw]] = {
    ".nii": _read_nifti, ".nii.gz": _read_nifti, ".nrrd": _read_nrrd, ".nhdr": _read_nrrd,
    ".dcm": _read_dicom, ".h5": _read_h5, ".hdf5": _read_h5, ".png": _read_picture,
    ".jpg": _read_picture, ".jpeg": _read_picture, ".tif": _read_picture,
    ".tiff": _read_picture, ".npy": _read_npy,
}


def _read_raw(path: str | Path, label: bool) -> Raw:
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageReadError(path, "file not found (missing file or folder)")
    suffix = "<dir>" if path.is_dir() else suffix_of(path)
    reader = _read_dicom if path.is_dir() else _READERS.get(suffix)
    if reader is None:
        raise ImageReadError(
            path, f"unsupported extension {suffix!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)} or a DICOM folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        return reader(path, label)
    except ImageReadError:
        raise
    except MemoryError as exc:  # e.g. a damaged length field asks for gigabytes
        raise ImageReadError(
            path, "could not be read: not enough memory for what its header declares (a corrupt size "
            "field, or an image too large for this machine)") from exc
    except Exception as exc:  # library-specific errors -> one error type naming the file
        raise ImageReadError(
            path, "could not be read: corrupt, truncated or unsupported file "
            f"({type(exc).__name__}: {exc})") from exc


# ------------------------------------------------------------------ public API
def read_image(path: str | Path) -> Volume:
    """Read an image as a float32 :class:`Volume` ``(Z, H, W)`` or ``(H, W)``.

    Dispatches on the suffix (see :data:`SUPPORTED_SUFFIXES`); a folder is read as
    a DICOM series.  HDF5 files with a ``label`` dataset fill ``Volume.label``.
    """
    arr, info = _read_raw(path, label=False)
    lab = info.get("label")
    if lab is not None:
        lab = as_label(check_array(lab, path, finite=False), path)
        if lab.shape != arr.shape:
            raise ImageReadError(
                path, f"label shape {lab.shape} differs from image shape {arr.shape}")
    return Volume(
        data=np.ascontiguousarray(arr, dtype=np.float32), spacing=info["spacing"],
        affine=info["affine"], modality=info.get("modality"), source=str(path),
        meta=info["meta"], label=lab,
    )


def read_label(path: str | Path, like: Volume | None = None) -> np.ndarray:
    """Read an integer label map in the same axis order as :func:`read_image`.

    Returns uint8 (or int16/int32 if needed); PNG/JPEG-style ``{0, 255}`` masks
    become ``{0, 1}``.  With ``like``, the shape must equal ``like.data.shape``.
    """
    arr, info = _read_raw(path, label=True)
    picture = info["meta"].get("format") in ("png", "jpg", "jpeg", "tif", "tiff")
    lab = as_label(arr, path, mask255=picture)
    if like is not None and lab.shape != like.data.shape:
        raise ImageReadError(
            path, f"label shape {lab.shape} differs from image shape {like.data.shape}"
            f" ({like.source or 'in memory'})")
    return lab
