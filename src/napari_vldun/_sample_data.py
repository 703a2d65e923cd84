"""npe2 sample data: the bundled samples (:func:`napari_vldun.pipeline.list_samples`).

Each sample opens as three layers: ``<name> clean`` and ``<name> degraded`` (Images, [0, 1]) and
``<name> labels`` (Labels with the label set's class names and colours). The geometry comes from the
NIfTI files; ``meta.json``'s ``spacing_mm`` (Z, Y, X) is the source's real voxel size, overriding the scale,
or ``null`` when the source records none (ACDC's HDF5 volumes, the COVID JPEGs): measurements then give no
volumes (:func:`._widgets._layers.known_spacing`); ``metadata
["vldun_sample"]`` holds the title, licence (name and full text), citation and degradation, and the
degraded layer's ``metadata["vldun_measurement"]`` its acquisition (for data consistency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._reader import MEASUREMENT_KEY, volume_layer_kwargs
from ._widgets._labels import label_colormap, label_features
from .io import read_image, read_label
from .model.config import LABEL_COLORS, LABEL_SETS
from .pipeline import list_samples, sample_measurement

__all__ = ["sample_layers", "acdc", "brain", "ct"]


def _licence_text(d: Path, meta: dict) -> str:
    name = (meta.get("files") or {}).get("licence")
    if name and (d / name).is_file():
        return (d / name).read_text(errors="replace")
    return ""


def sample_layers(name: str) -> list[tuple]:
    """Layer data tuples (clean, degraded, labels) of bundled sample ``name``."""
    samples = list_samples()
    if name not in samples:
        raise ValueError(f"unknown sample {name!r}; bundled samples: {sorted(samples)}")
    meta = samples[name]
    d = Path(meta["dir"])
    files = meta["files"]
    label_set = meta.get("label_set")
    names = list(LABEL_SETS.get(label_set, ())) if label_set else []
    colours = list(LABEL_COLORS.get(label_set, ())) if label_set else []
    info = {
        "name": name, "title": meta.get("title", name), "modality": meta.get("modality"),
        "label_set": label_set, "label_names": names, "label_colors": colours,
        "licence": meta.get("licence", ""), "licence_text": _licence_text(d, meta),
        "citation": meta.get("citation", ""), "source": meta.get("source", ""),
        "degradation": meta.get("degradation", {}),
        "spacing_mm": meta.get("spacing_mm"), "spacing_note": meta.get("spacing_note", ""),
    }
    extra = {"vldun_sample": info}

    def kwargs(vol, layer_name: str) -> dict:
        kw = volume_layer_kwargs(vol, layer_name, extra)
        spacing = meta.get("spacing_mm")
        if spacing is not None and len(spacing) == vol.data.ndim:
            kw["scale"] = tuple(float(s) for s in spacing)
        return kw

    clean = read_image(d / files["clean"])
    degraded = read_image(d / files["degraded"])
    labels = read_label(d / files["labels"], like=clean)
    deg = meta.get("degradation") or {}
    deg_text = f"{deg.get('mask', '')} {deg.get('accel', ''):g}x".strip() if deg.get("accel") else ""
    out = [
        (clean.data, {**kwargs(clean, f"{name} clean"), "colormap": "gray", "contrast_limits": (0.0, 1.0)}, "image"),
        (degraded.data, {**kwargs(degraded, f"{name} degraded" + (f" ({deg_text})" if deg_text else "")),
                         "colormap": "gray", "contrast_limits": (0.0, 1.0)}, "image"),
    ]
    if deg.get("mask"):
        meas = sample_measurement(name)
        if meas.shape == np.shape(degraded.data):
            meta_d = dict(out[1][1]["metadata"])
            meta_d[MEASUREMENT_KEY] = {"kspace": meas.kspace, "mask": meas.mask,
                                       "normalisation": {"method": "none", "lo": 0.0, "hi": 1.0}}
            out[1][1]["metadata"] = meta_d
    lkw = kwargs(clean, f"{name} labels")
    if names:
        lkw["colormap"] = label_colormap(colours)
        lkw["features"] = label_features(names, colours)
    lkw["opacity"] = 0.5
    out.append((np.asarray(labels), lkw, "labels"))
    return out


def acdc() -> list[tuple]:
    """Cardiac cine MRI (ACDC) with RV / myocardium / LV labels."""
    return sample_layers("acdc")


def brain() -> list[tuple]:
    """Brain MRI T1c with glioma labels (BraTS)."""
    return sample_layers("brain")


def ct() -> list[tuple]:
    """Lung CT slice with COVID-19 infection labels."""
    return sample_layers("ct")
