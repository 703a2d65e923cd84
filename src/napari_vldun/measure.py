"""Measurements of results, Qt-free: per-label areas / volumes / intensities, Dice per class and slice,
the normalised entropy of a segmentation softmax (a per-pixel uncertainty), and saving a result set
(restored image, labels, uncertainty, measurements CSV, provenance JSON; the labels as a DICOM SEG too for a
DICOM series input) as one atomic set of files.

The napari docks call these functions; they need no display and are tested without one. Arrays are in
the :mod:`napari_vldun.io.volume` convention: ``(Z, H, W)`` stacks (a 2-D ``(H, W)`` image is one slice),
spacings ``(dz, dy, dx)`` in mm.
"""

from __future__ import annotations

import csv
import io
import math
import platform
import re
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence

import numpy as np

from . import __version__
from .metrics import dice_per_class
from .io import write_nifti
from .io.atomic import atomic_outputs, check_out_dir, write_text
from .io.dicom_seg import SegExport, write_dicom_seg

__all__ = ["label_measurements", "measurements_csv", "write_measurements_csv", "dice_table",
           "versions", "result_file_names", "save_results", "iter_save_results", "safe_stem"]


# ------------------------------------------------------------------------- label measurements
def _stack(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (Z, H, W), got shape {a.shape}")
    return a


def _spacing3(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm from a 3-entry spacing, or ``(1, dy, dx)`` from a 2-entry one."""
    s = [float(v) for v in spacing]
    if len(s) == 2:
        s = [1.0, *s]
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be 2 or 3 positive numbers (mm), got {tuple(spacing)}")
    return s[0], s[1], s[2]


def label_measurements(labels: np.ndarray, image: np.ndarray | None, spacing: Sequence[float] | None,
                       class_names: Sequence[str] = (), *, slices: Iterable[int] | None = None) -> list[dict]:
    """Per foreground label of ``labels`` (Z, H, W) int (0 = background): one dict with

    * ``label``, ``name`` (``class_names[label]``, else ``"label N"``),
    * ``voxels`` (count), ``volume_ml`` (voxels * dz * dy * dx / 1000, ``spacing`` (dz, dy, dx) in mm;
      a 2-entry ``(dy, dx)`` counts 1 mm slices; ``None``: the spacing is unknown, volumes and areas are NaN),
    * ``slices`` (the measured slice indices) and ``area_mm2`` (one area per measured slice, mm^2),
    * ``mean_intensity`` of ``image`` (Z, H, W) float over the label's voxels (NaN values of the image,
      e.g. slices not computed, are left out; NaN when none is left or ``image`` is None).

    Every class of ``class_names`` (but the background) gets a row, present or not, as does any other
    label found. ``slices``: measure only these slices (default all). Raises ValueError for negative or
    non-integer labels, mismatched shapes or a bad spacing.
    """
    lab = _stack(labels, "labels")
    if lab.dtype.kind == "f":
        if not (np.isfinite(lab).all() and (lab == np.rint(lab)).all()):
            raise ValueError("labels must hold integers")
    elif lab.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {lab.dtype}")
    img = None
    if image is not None:
        img = _stack(image, "image").astype(np.float64, copy=False)
        if img.shape != lab.shape:
            raise ValueError(f"image shape {img.shape} differs from the labels' {lab.shape}")
    dz, dy, dx = _spacing3(spacing) if spacing is not None else (math.nan,) * 3
    idx = list(range(lab.shape[0])) if slices is None else [int(z) for z in slices]
    if any(not 0 <= z < lab.shape[0] for z in idx):
        raise ValueError(f"slices {idx} out of range for {lab.shape[0]} slice(s)")
    lab = lab[idx].astype(np.int64)
    if lab.size and int(lab.min()) < 0:
        raise ValueError("labels must not be negative")
    top = max(int(lab.max()) if lab.size else 0, len(class_names) - 1, 0)
    per_slice = np.stack([np.bincount(lab[i].ravel(), minlength=top + 1) for i in range(len(idx))]) \
        if idx else np.zeros((0, top + 1), np.int64)
    if img is not None and idx:
        vals = img[idx]
        finite = np.isfinite(vals)
        sums = np.bincount(lab[finite], weights=vals[finite], minlength=top + 1)
        counts = np.bincount(lab[finite], minlength=top + 1)
    else:
        sums = counts = np.zeros(top + 1)
    present = set(np.flatnonzero(per_slice.sum(0)).tolist()) | set(range(1, len(class_names)))
    rows = []
    for v in sorted(present - {0}):
        n = int(per_slice[:, v].sum())
        rows.append({
            "label": int(v),
            "name": str(class_names[v]) if v < len(class_names) else f"label {v}",
            "voxels": n,
            "volume_ml": n * dz * dy * dx / 1000.0,
            "mean_intensity": float(sums[v] / counts[v]) if counts[v] else math.nan,
            "slices": list(idx),
            "area_mm2": [float(c) * dy * dx for c in per_slice[:, v]],
        })
    return rows


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


def measurements_csv(rows: Sequence[dict]) -> str:
    """CSV text of :func:`label_measurements` rows: ``source`` (when the rows carry one), ``label``,
    ``name``, ``voxels``, ``volume_ml``, ``mean_intensity`` and one ``area_mm2_slice_<z>`` column per
    measured slice (empty where a row did not measure that slice, and for NaN)."""
    all_slices = sorted({int(z) for r in rows for z in r.get("slices", [])})
    head = (["source"] if any("source" in r for r in rows) else []) + [
        "label", "name", "voxels", "volume_ml", "mean_intensity"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head + [f"area_mm2_slice_{z}" for z in all_slices])
    for r in rows:
        areas = dict(zip(r.get("slices", []), r.get("area_mm2", [])))
        w.writerow([_cell(r.get(k, "")) for k in head] + [_cell(areas.get(z, "")) for z in all_slices])
    return buf.getvalue()


def write_measurements_csv(path: str | Path, rows: Sequence[dict], overwrite: bool = False) -> Path:
    """Write :func:`measurements_csv` atomically; ``FileExistsError`` for an existing file unless
    ``overwrite`` (:mod:`napari_vldun.io.atomic`)."""
    return write_text(path, measurements_csv(rows), overwrite)


# ------------------------------------------------------------------------- Dice tables
def dice_table(pred: np.ndarray, true: np.ndarray, num_classes: int, class_names: Sequence[str] = (),
               slices: Iterable[int] | None = None) -> dict:
    """Dice of ``pred`` vs ``true`` (Z, H, W) int labels per foreground class, over ``slices`` (default all)
    together and slice by slice (:func:`napari_vldun.metrics.dice_per_class`):
    ``{"classes": [names], "per_class": {name: dice | None}, "per_slice": [{"slice": z, "dice": {name: ...}}]}``.
    ``None``: the class is absent from both (per slice as over all); 0.0: predicted but absent."""
    p, t = _stack(pred, "pred labels"), _stack(true, "true labels")
    idx = list(range(p.shape[0])) if slices is None else [int(z) for z in slices]
    names = [str(class_names[k]) if k < len(class_names) else f"label {k}" for k in range(1, num_classes)]

    def named(d: dict) -> dict:
        return {names[k - 1]: d[k] for k in range(1, num_classes)}

    return {"classes": names, "per_class": named(dice_per_class(p[idx], t[idx], num_classes)),
            "per_slice": [{"slice": z, "dice": named(dice_per_class(p[z], t[z], num_classes))} for z in idx]}


# ------------------------------------------------------------------------- saving a result set
def versions() -> dict[str, str]:
    """Versions of napari-vldun, torch, numpy, napari (when importable) and Python, for provenance."""
    out = {"napari_vldun": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for mod in ("torch", "napari", "nibabel"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - absent or broken: not recorded
            pass
    return out


def safe_stem(name: str) -> str:
    """A file-name stem from a layer name: runs of characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_`` (no folder separators); ``"result"`` when nothing is left."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return stem or "result"


#: The files of a saved result set, by part (``<stem>_`` in front of each).
RESULT_FILES = {"restored": "restored.nii.gz", "labels": "labels.nii.gz", "dicom_seg": "labels.seg.dcm",
                "uncertainty": "uncertainty.nii.gz", "measurements": "measurements.csv", "summary": "results.json"}


def result_file_names(folder: str | Path, stem: str, parts: Iterable[str]) -> dict[str, Path]:
    """``{part: folder / "<stem>_<file>"}`` for the ``parts`` of :data:`RESULT_FILES`."""
    folder = Path(folder).expanduser()
    return {p: folder / f"{safe_stem(stem)}_{RESULT_FILES[p]}" for p in parts}


def save_results(folder: str | Path, stem: str, **kwargs) -> dict[str, Path]:
    """Write a result set at once (:func:`iter_save_results` run to the end); returns ``{part: path}``."""
    gen = iter_save_results(folder, stem, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_save_results(folder: str | Path, stem: str, *, summary: dict, restored: np.ndarray | None = None,
                      labels: np.ndarray | None = None, uncertainty: np.ndarray | None = None, like=None,
                      measurements: Sequence[dict] | None = None, dicom_seg: SegExport | None = None,
                      overwrite: bool = False
                      ) -> Generator[tuple[int, int, Path], None, dict[str, Path]]:
    """Write a result set into ``folder`` as ``<stem>_restored.nii.gz`` (float32), ``<stem>_labels.nii.gz``
    (uint8 / int16), ``<stem>_uncertainty.nii.gz`` (float32), ``<stem>_measurements.csv`` and
    ``<stem>_results.json`` (``summary`` plus ``files`` and ``versions``; strict JSON, NaN -> null); parts
    that are None are left out. Arrays are (Z, H, W) or (H, W) with the geometry of ``like`` (a
    :class:`~napari_vldun.io.Volume`, e.g. from :func:`napari_vldun._writer.layer_volume`; None: 1 mm).
    With ``dicom_seg`` (a :class:`~napari_vldun.io.dicom_seg.SegExport`: the input was a DICOM series) the
    labels are also written as ``<stem>_labels.seg.dcm`` referencing that series
    (:func:`~napari_vldun.io.dicom_seg.write_dicom_seg`); its source files must still be there
    (:class:`~napari_vldun.io.dicom_seg.DicomSegError`, a ``ValueError``, before any work otherwise).

    A generator: yields ``(files written, files in all, next path)`` before each file and returns
    ``{part: path}``. All files are
    placed together at the end (:func:`napari_vldun.io.atomic.atomic_outputs`: temporary files in
    ``folder``, renamed once all are written); an error, or closing the generator early (cancel), leaves
    nothing behind, and no file outside ``folder`` is touched. Existing files are refused before any
    work (``FileExistsError`` naming every one) unless ``overwrite``."""
    from .io.atomic import write_json  # lazy: tests patch napari_vldun.io.atomic.write_json

    check_out_dir(folder, "output folder")
    arrays = {"restored": restored, "labels": labels, "uncertainty": uncertainty}
    parts = [p for p, a in arrays.items() if a is not None]
    if dicom_seg is not None and labels is not None:
        dicom_seg.source.check()  # the series it references is still there: refuse before any work
        parts.insert(parts.index("labels") + 1, "dicom_seg")
    parts += (["measurements"] if measurements is not None else []) + ["summary"]
    paths = result_file_names(folder, stem, parts)
    for p in parts:
        a = arrays.get(p)
        if a is not None and like is not None and tuple(np.shape(a)) != tuple(like.data.shape):
            raise ValueError(f"{p} has shape {np.shape(a)}, the input {tuple(like.data.shape)}")
    doc = {**summary, "files": {p: str(path) for p, path in paths.items()}, "versions": versions()}
    if measurements is not None:
        doc.setdefault("measurements", list(measurements))
    with atomic_outputs(paths.values(), overwrite, "save results") as tmp:
        for i, p in enumerate(parts):
            yield i, len(parts), paths[p]
            if p in ("restored", "uncertainty"):
                write_nifti(np.asarray(arrays[p], np.float32), tmp[paths[p]], like=like, overwrite=True,
                            dtype=np.float32)
            elif p == "labels":
                write_nifti(np.asarray(labels), tmp[paths[p]], like=like, overwrite=True)
            elif p == "dicom_seg":
                write_dicom_seg(np.asarray(labels), dicom_seg.source, dicom_seg.classes, tmp[paths[p]],
                                slices=dicom_seg.slices, series_description=dicom_seg.series_description,
                                algorithm_version=doc["versions"]["napari_vldun"], checkpoint=dicom_seg.checkpoint,
                                overwrite=True)
            elif p == "measurements":
                write_measurements_csv(tmp[paths[p]], measurements, overwrite=True)
            else:
                write_json(tmp[paths[p]], doc, overwrite=True)
    return paths
