"""npe2 writers: Image and Labels layers to NIfTI (``.nii`` / ``.nii.gz``) with
:func:`napari_vldun.io.write_nifti`.

Geometry: a layer read by :mod:`napari_vldun._reader` (or made by a VL-DUN widget from one) carries
``metadata["vldun_volume"]``; when the layer still has that shape and the transform the reader set,
the file's own affine and NIfTI header are written back exactly. Otherwise the affine is built from
the layer's transform (affine @ rotate / shear / scale / translate, in data axis order) and
converted back to RAS (the inverse of the reader's mapping, see :mod:`napari_vldun._reader`).
napari's Save dialog asks before replacing a file, so an existing file is overwritten; the write is
atomic and a symbolic link at the path is refused (:mod:`napari_vldun.io.atomic`), never followed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._reader import VOLUME_KEY
from .io import Volume, write_nifti
from .io.volume import REVERSE3

__all__ = ["write_image", "write_labels", "layer_volume"]


def _same(a, b) -> bool:
    try:
        return np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-6)
    except (TypeError, ValueError):
        return False


def _layer_affine(meta: dict, nd: int) -> np.ndarray:
    """Data index -> napari world (data axis order) as (nd+1) x (nd+1)."""
    from napari.utils.transforms import Affine

    phys = Affine(scale=meta.get("scale", np.ones(nd)), translate=meta.get("translate", np.zeros(nd)),
                  rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=nd).affine_matrix
    outer = meta.get("affine")
    if outer is None:
        outer = np.eye(nd + 1)
    elif hasattr(outer, "affine_matrix"):
        outer = outer.affine_matrix
    outer = np.asarray(outer, float)
    if outer.shape != (nd + 1, nd + 1):
        outer = np.eye(nd + 1)
    return outer @ phys


def layer_volume(data: np.ndarray, meta: dict):
    """A :class:`~napari_vldun.io.Volume` (``like=`` for ``write_nifti``) for a layer's data + meta."""
    arr = np.asarray(data)
    nd = arr.ndim
    info = (meta.get("metadata") or {}).get(VOLUME_KEY)
    if info and tuple(info.get("shape", ())) == arr.shape:
        t = info.get("napari", {})
        unchanged = _same(meta.get("scale", t.get("scale")), t.get("scale")) and _same(
            meta.get("translate", t.get("translate")), t.get("translate"))
        layer_aff = meta.get("affine")
        layer_aff = getattr(layer_aff, "affine_matrix", layer_aff)
        if layer_aff is not None:
            unchanged = unchanged and _same(layer_aff, t.get("affine", np.eye(nd + 1)))
        if unchanged:
            return Volume(data=np.broadcast_to(np.float32(0), arr.shape), spacing=tuple(info["spacing"]),
                          affine=np.asarray(info["affine"], float), modality=info.get("modality"),
                          source=str(info.get("source", "")), meta=dict(info.get("meta") or {}))
    a = _layer_affine(meta, nd)
    full = np.eye(4)
    if nd == 3:
        full = a
    elif nd == 2:
        full[1:, 1:] = a
    else:
        raise ValueError(f"NIfTI export needs a 2-D or 3-D layer, got {nd}-D data {arr.shape}")
    affine = REVERSE3 @ full
    spacing = tuple(float(s) for s in np.linalg.norm(a[:nd, :nd], axis=0))
    return Volume(data=np.broadcast_to(np.float32(0), arr.shape), spacing=spacing, affine=affine,
                  meta={"format": "napari", "note": "affine from the napari layer transform"})


def _write(path: str, data: Any, meta: dict, labels: bool) -> list[str]:
    if isinstance(data, (list, tuple)):  # multiscale: the full resolution
        data = data[0]
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise ValueError(f"NIfTI export needs a 2-D or 3-D layer, got shape {arr.shape}")
    if meta.get("rgb"):
        raise ValueError("RGB layers cannot be written as a grey-level NIfTI")
    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        p = p.with_name(p.name + ".nii.gz")
    like = layer_volume(arr, meta)
    if labels:
        arr = arr.astype(np.int64) if arr.dtype.kind not in "biu" else arr
        write_nifti(arr, p, like=like, overwrite=True)
    else:
        write_nifti(arr.astype(np.float32, copy=False), p, like=like, overwrite=True, dtype=np.float32)
    return [str(p)]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Image layers -> NIfTI (float32)."""
    return _write(path, data, meta, labels=False)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers -> NIfTI (uint8 / int16 / int32)."""
    return _write(path, data, meta, labels=True)
