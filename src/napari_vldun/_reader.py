"""npe2 reader: NIfTI, NRRD, DICOM (file or series folder) and ACDC-style HDF5 into napari layers.

Reading is :func:`napari_vldun.io.read_image` / :func:`~napari_vldun.io.read_label`; this module only
turns a :class:`~napari_vldun.io.Volume` into napari layer data.

Geometry (how the file's affine becomes napari's transform)
-----------------------------------------------------------
``Volume.affine`` maps data indices ``(z, y, x)`` to RAS millimetres. napari's world axes follow the
data axes, so the affine is first expressed in data axis order ``M = REVERSE3 @ Volume.affine``
(world rows S, A, R); its linear part is ``D @ diag(spacing)`` with unit direction columns ``D``.

* ``scale`` is always the voxel spacing in data axis order (mm), ``units`` are mm for NIfTI / NRRD /
  DICOM.
* Axis-aligned volumes (``|D|`` is the identity -- the usual case): ``translate`` is the world
  position of voxel 0 and no ``affine`` is set. Axis *flips* of the file (e.g. a LAS NIfTI) are not
  applied, so the array shows as stored; layers from files of the same grid still overlay exactly.
* Oblique or axis-permuted volumes: ``affine`` is ``[[D, origin], [0, 1]]`` (a rotation or
  reflection with the origin), ``scale`` stays the spacing.

``metadata["vldun_volume"]`` keeps the full geometry (spacing, affine, the NIfTI header, modality,
source) and the transform set above, so :mod:`napari_vldun._writer` writes a NIfTI back with the
original affine and header when the layer's shape and transform are unchanged.

A file whose name marks it as labels (``*label*``, ``*seg*``, ``*mask*``, ``*_gt*``) and whose
values are integers opens as a Labels layer, and so does any integer-valued volume of at most
:data:`MAX_LABEL_VALUES` distinct values >= 0 including 0 (a label map named otherwise); an HDF5
file with ``image`` and ``label`` datasets gives an Image and a Labels layer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .io import read_image, read_label
from .io.readers import suffix_of
from .io.volume import REVERSE3

__all__ = ["napari_get_reader", "read_paths", "layers_from_file", "volume_layer_kwargs", "READER_SUFFIXES"]

#: Suffixes this reader claims (``io.read_image`` understands more; napari has readers for those).
READER_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".h5", ".hdf5")
_LABEL_NAME = re.compile(r"(label|labels|seg|segmentation|mask|_gt\b|_gt[._-])", re.IGNORECASE)
#: ``layer.metadata`` key where this reader keeps the file geometry (:class:`~napari_vldun.io.Volume`).
VOLUME_KEY = "vldun_volume"
#: ``layer.metadata`` key of a known acquisition (the Degrade dock, the bundled samples):
#: ``{"kspace": (Z, H, W) complex64, "mask": (H, W) float32, "normalisation": params}``, the k-space of
#: the layer's data in [0, 1] units (see :func:`napari_vldun._widgets._layers.layer_measurement`).
MEASUREMENT_KEY = "vldun_measurement"


def _suffix(path: Path) -> str:
    return suffix_of(path)


def _is_dicom_dir(path: Path) -> bool:
    """A folder holding at least one ``.dcm`` file or a file with the DICOM preamble."""
    if path.suffix.lower() in (".zarr", ".n5", ".ome"):
        return False
    try:
        files = [p for p in path.iterdir() if p.is_file()]
    except OSError:
        return False
    if any(p.suffix.lower() == ".dcm" for p in files):
        return True
    for p in files[:20]:
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False


def _supported(path: Any) -> bool:
    p = Path(str(path))
    if p.is_dir():
        return _is_dicom_dir(p)
    return _suffix(p) in READER_SUFFIXES


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """npe2 ``get_reader``: :func:`read_paths` for supported paths, ``None`` otherwise."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_supported(p) for p in paths):
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list[tuple]:
    """Layer data tuples of every file (or DICOM folder) in ``path``."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: list[tuple] = []
    for p in paths:
        out.extend(layers_from_file(p))
    return out


def napari_transform(volume) -> dict:
    """scale / translate (/ affine) for napari from a Volume (see the module docstring)."""
    nd = volume.data.ndim
    m = REVERSE3 @ np.asarray(volume.affine, float)  # rows: world S, A, R
    if nd == 2:
        m = m[1:, 1:]
    lin, origin = m[:nd, :nd], m[:nd, nd]
    spacing = np.asarray(volume.spacing, float)
    norms = np.linalg.norm(lin, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    d = lin / safe[None, :]
    if np.allclose(np.abs(d), np.eye(nd), atol=1e-4):
        return {"scale": tuple(spacing), "translate": tuple(origin), "display": "axis-aligned: scale + translate"}
    aff = np.eye(nd + 1)
    aff[:nd, :nd] = d
    aff[:nd, nd] = origin
    return {"scale": tuple(spacing), "translate": (0.0,) * nd, "affine": aff,
            "display": "oblique: directions and origin in the napari affine"}


def volume_metadata(volume, transform: dict) -> dict:
    """What the writer needs to write the volume back aligned (kept in ``metadata["vldun_volume"]``)."""
    return {
        "source": volume.source, "shape": tuple(volume.data.shape), "spacing": tuple(volume.spacing),
        "affine": np.asarray(volume.affine, float).copy(), "modality": volume.modality,
        "meta": dict(volume.meta), "napari": {k: v for k, v in transform.items()},
    }


def volume_layer_kwargs(volume, name: str, extra_metadata: dict | None = None) -> dict:
    """Layer kwargs (name, scale, translate, affine, units, metadata) of a Volume."""
    t = napari_transform(volume)
    kwargs: dict[str, Any] = {"name": name, "scale": t["scale"], "translate": t["translate"]}
    if "affine" in t:
        kwargs["affine"] = t["affine"]
    if volume.meta.get("format") in ("nifti", "nrrd", "dicom"):
        kwargs["units"] = ("mm",) * volume.data.ndim
    meta = {VOLUME_KEY: volume_metadata(volume, t)}
    if extra_metadata:
        meta.update(extra_metadata)
    kwargs["metadata"] = meta
    return kwargs


def _display_name(path: Path) -> str:
    name = path.name
    for suf in READER_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


#: A volume with at most this many distinct non-negative integer values (0 among them) is a label map.
MAX_LABEL_VALUES = 32


def _integer_valued(volume) -> bool:
    dtype = str(volume.meta.get("original_dtype", ""))
    if dtype.startswith(("int", "uint", "bool", "<i", "<u", "|u", "|i", ">i", ">u")):
        return True
    data = np.asarray(volume.data)
    return data.dtype.kind in "iub" or bool(np.all(data == np.round(data)))


def label_values_like(data: np.ndarray, max_values: int = MAX_LABEL_VALUES) -> bool:
    """True for a label map: non-negative integer values, 0 among them, at most ``max_values`` distinct ones
    (a strided sample is checked first, so that an image is turned down without a full ``np.unique``)."""
    data = np.asarray(data)
    if data.size == 0 or not np.isfinite(data).all():
        return False
    for arr in (data.ravel()[:: max(1, data.size // 20_000)], data):
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            return False
        values = np.unique(arr)
        if values.size > max_values or values[0] < 0:
            return False
    return bool(values[0] == 0)


def _looks_like_labels(path: Path, volume) -> bool:
    """Labels: a label-like file name with integer values >= 0, or any integer volume of few values (see
    :func:`label_values_like`: e.g. BraTS ``OTMultiClass.nii.gz``, 0..4)."""
    if _LABEL_NAME.search(_display_name(path)):
        return _integer_valued(volume) and float(volume.data.min()) >= 0
    return _integer_valued(volume) and label_values_like(volume.data)


def layers_from_file(path: str | Path) -> list[tuple]:
    """One Image (or Labels) layer per file; HDF5 with a ``label`` dataset adds a Labels layer."""
    p = Path(str(path)).expanduser()
    vol = read_image(p)
    name = _display_name(p)
    if _looks_like_labels(p, vol):
        lab = read_label(p, like=vol)
        return [(lab, volume_layer_kwargs(vol, name), "labels")]
    kwargs = volume_layer_kwargs(vol, name)
    lo, hi = float(np.min(vol.data)), float(np.max(vol.data))
    kwargs.update(colormap="gray", contrast_limits=(lo, hi if hi > lo else lo + 1.0))
    out = [(vol.data, kwargs, "image")]
    if vol.label is not None:
        lkw = volume_layer_kwargs(vol, f"{name} labels")
        out.append((np.asarray(vol.label), lkw, "labels"))
    return out
