"""File-level jobs shared by the CLI: degrade a file, predict a file or DICOM folder, the demo.

Every input and output path is checked before any work: an output is refused if it already exists
(unless ``overwrite=True``) or is a symbolic link (always). Outputs are NIfTI aligned with the input
(same affine and axis order), plus an overview PNG and a metrics JSON (strict JSON: a NaN or infinite
metric is written as ``null``); a DICOM series input also gets its labels as a DICOM SEG. A job's outputs
are written to temporary files and moved into place together at the end
(:func:`napari_vldun.io.atomic_outputs`): an error, a full disk or Ctrl-C leaves none of them behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import __version__
from .degradation.measurement import Measurement, MeasurementError
from .metrics import dice, iou, psnr, ssim
from .inference import (InferenceError, LoadedModel, Prediction, Progress, check_tiling, compile_loaded,
                        iter_predict, label_set_warning, load_model, passes)
from .io import read_image, read_label, write_nifti, write_png
from .io.atomic import OutputPathError, atomic_outputs, check_out_dir, check_outputs, write_json, write_with
from .io.dicom_seg import DicomSegError, SegSource, build_dicom_seg
from .io.normalize import UNIT_RANGE_MAX, from_unit_range, restore_units, to_unit_range, unit_bounds
from .io.lock import locks_output

__all__ = ["UNIT_RANGE_MAX", "to_unit_range", "from_unit_range", "restore_units", "unit_bounds", "check_out_dir",
           "check_inputs", "degrade_file", "predict_file", "run_demo", "list_samples", "sample_measurement",
           "sample_dir", "Measurement"]

#: Suffixes :func:`degrade_file` (and ``_write_array``) can write.
ARRAY_SUFFIXES = (".nii", ".nii.gz", ".png", ".npy")


def sample_dir() -> Path:
    """Bundled samples (top-level ``sample_data/<name>/``, installed as ``napari_vldun.sample_data``)."""
    from importlib.resources import files

    return Path(str(files("napari_vldun.sample_data")))


def check_inputs(**paths: str | Path | None) -> None:
    """Every given input path exists: ``check_inputs(input=..., **{"--labels": ...})``; else
    ``FileNotFoundError`` naming the argument and the path."""
    for arg, p in paths.items():
        if isinstance(p, (str, Path)) and not Path(p).expanduser().exists():
            raise FileNotFoundError(f"{arg} {p}: not found (no such file or folder)")


def _check_array_target(path: Path, shape: tuple[int, ...] | None = None, what: str = "output") -> None:
    """The suffix (and, given the array ``shape``, the slice count for a PNG) of an array output."""
    name = path.name.lower()
    if not name.endswith(ARRAY_SUFFIXES):
        raise ValueError(f"{what} {path}: must end in .nii, .nii.gz, .png or .npy")
    if shape is not None and name.endswith(".png") and len(shape) == 3 and shape[0] != 1:
        raise ValueError(f"{what} {path}: a PNG holds one slice, the image has {shape[0]}; write .nii.gz")


def _write_array(array: np.ndarray, path: Path, like, overwrite: bool) -> None:
    _check_array_target(path, array.shape)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        write_nifti(array, path, like=like, overwrite=overwrite)
    elif name.endswith(".png"):
        write_png(array.reshape(array.shape[-2:]), path, overwrite=overwrite, vrange=(0.0, 1.0))
    else:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, array.astype(np.float32), allow_pickle=False)

        write_with(path, save, overwrite)


def degrade_file(input_path: str | Path, output_path: str | Path, *, mask: str, accel: float, seed: int = 0,
                 center_fraction: float = 0.08, overwrite: bool = False,
                 kspace_out: str | Path | None = None) -> dict:
    """Read an image, normalise it to [0, 1], undersample every slice's k-space with the same
    mask, write the magnitude (and, with ``kspace_out``, the measurement as ``.npz``, see
    :meth:`Measurement.save`). Returns the sampling fraction and the normalisation used."""
    from .io import read_image  # lazy: tests patch napari_vldun.io.read_image

    out = Path(output_path).expanduser()
    _check_array_target(out)
    if kspace_out and Path(kspace_out).suffix != ".npz":
        raise ValueError(f"--kspace-out {kspace_out}: the measurement is written as .npz")
    targets = check_outputs([out] + ([Path(kspace_out)] if kspace_out else []), overwrite)
    if len(set(targets)) != len(targets):
        raise ValueError(f"--kspace-out {kspace_out}: the same file as the output")
    check_inputs(input=input_path)
    vol = read_image(input_path)
    _check_array_target(out, vol.data.shape)
    data, norm = to_unit_range(vol)
    kwargs = {"center_fraction": center_fraction} if mask == "cartesian" else {}
    y, meas = Measurement.simulate(data, mask, accel, seed=seed, **kwargs)
    summary = {"output": str(out), "mask": mask, "accel": accel, "seed": seed, "fraction": round(meas.fraction, 4),
               "normalisation": norm}
    with atomic_outputs(targets, overwrite) as tmp:
        _write_array(np.asarray(y, np.float32), tmp[out], vol, overwrite=True)
        if kspace_out:
            meas.save(tmp[targets[1]], overwrite=True)
            summary["kspace"] = str(kspace_out)
    return summary


def _slice_metrics(pred: Prediction, image: np.ndarray, clean: np.ndarray | None, ref_labels: np.ndarray | None,
                   n_classes: int | None) -> dict:
    m: dict = {}
    if clean is not None and pred.restored is not None:
        m["psnr_input"] = float(np.mean([psnr(a, c) for a, c in zip(image, clean)]))
        m["ssim_input"] = float(np.mean([ssim(a, c) for a, c in zip(image, clean)]))
        m["psnr"] = float(np.mean([psnr(a, c) for a, c in zip(pred.restored, clean)]))
        m["ssim"] = float(np.mean([ssim(a, c) for a, c in zip(pred.restored, clean)]))
    if ref_labels is not None and pred.labels is not None and n_classes:
        m["dice"] = float(dice(pred.labels, ref_labels, n_classes))
        m["iou"] = float(iou(pred.labels, ref_labels, n_classes))
    return m


def _show_slice(labels: np.ndarray | None, n: int) -> int:
    """The slice with the most labelled pixels, else the middle one."""
    if labels is not None and labels.any():
        return int(np.argmax((labels > 0).reshape(n, -1).sum(1)))
    return n // 2


def _check_label_values(ref: np.ndarray, path, loaded: LoadedModel, label_set: str | None,
                        chosen: bool = False) -> None:
    """Reference labels must be classes of the label set they are scored against (``label_set``; when
    it is not known yet, the largest of the checkpoint's). ``ValueError`` naming the file and the fix."""
    sets = loaded.model.cfg.label_sets
    if not sets or ref.size == 0:
        return
    lo, hi = int(ref.min()), int(ref.max())
    n = len(sets[label_set]) if label_set is not None else max(len(v) for v in sets.values())
    if lo >= 0 and hi < n:
        return
    where = (f"the label set {label_set!r} (chosen from the predicted modality; pass --label-set to pick one)"
             if chosen else f"--label-set {label_set}" if label_set is not None
             else f"the largest label set of {Path(loaded.source).name}")
    raise ValueError(f"--labels {path}: holds values {lo}..{hi}, but {where} has classes 0..{n - 1}; "
                     "give labels of that set or the matching --label-set")


def _check_finite(pred: Prediction, source: str) -> None:
    """Refuse non-finite model outputs (a corrupt checkpoint, an overflow) before anything is written."""
    for name, a in (("restored image", pred.restored), ("stage maps", pred.stages),
                    ("modality probabilities", pred.modality_probs),
                    ("degradation probabilities", pred.degradation_probs)):
        if a is not None and not np.isfinite(a).all():
            raise InferenceError(
                f"the model ({source}) produced {int((~np.isfinite(a)).sum())} NaN or infinite values in the "
                f"{name}; nothing was written. Check the checkpoint (--weights) or try --device cpu")


def _no_seg_hint(make):
    """``make()``; a :class:`~napari_vldun.io.dicom_seg.DicomSegError` gets the way around it added."""
    try:
        return make()
    except DicomSegError as exc:
        raise DicomSegError(f"{exc}; pass --no-dicom-seg (dicom_seg=False) to write the other outputs without "
                            "labels.seg.dcm") from exc


@locks_output("out_dir", "predict")  # one run per output folder (io.lock)
def predict_file(input_path: str | Path, out_dir: str | Path, *, weights: str | Path | None = None,
                 device: str = "auto", label_set: str | None = None, labels: str | Path | None = None,
                 clean: str | Path | None = None, overwrite: bool = False, stages: bool = False,
                 progress: bool = True, loaded: LoadedModel | None = None,
                 kspace: str | Path | Measurement | None = None,
                 cascades: int | None = None, precision: str = "fp32", tile: int | None = None,
                 dicom_seg: bool = True, compile: bool = False, tta: bool = False,
                 postprocess: bool = True) -> dict:
    """Restore and segment a file or DICOM folder slice by slice; write ``restored.nii.gz``,
    ``labels.nii.gz``, ``overview.png`` and ``metrics.json`` into ``out_dir``; return the summary.
    For a DICOM series (a folder, or one single-frame ``.dcm``) the labels are also written as
    ``labels.seg.dcm``, a DICOM SEG referencing the series (:mod:`napari_vldun.io.dicom_seg`), unless
    ``dicom_seg=False``.

    ``kspace``: the known acquisition of the input (a ``.npz`` from :meth:`Measurement.save`, or a
    :class:`Measurement`), checked against the input, for data consistency; ``cascades`` passes of
    the network with it (default: the checkpoint's for the mask's kind; fewer is faster). Without ``kspace``
    there is one pass. ``compile``: run a ``torch.compile``d copy of the model (faster on volumes of many
    slices; the first slice compiles; eager where no compiler exists, see :func:`~napari_vldun.inference.compile_loaded`).
    ``tta``: segment with test-time flips (4x the time); ``postprocess``: apply the checkpoint's
    connected-component rule (:mod:`~napari_vldun.postprocess`) to the labels.

    All paths, the model and the reference labels are checked before the network runs; the outputs are
    checked to be finite and then written together (all or none). ``metrics.json`` is strict JSON: a
    metric that is undefined (NaN, e.g. Dice without foreground) is ``null``."""
    from tqdm import tqdm

    from .io.figures import overview_figure  # lazy: tests patch napari_vldun.io.figures.overview_figure

    out = check_out_dir(out_dir)
    names_out = ["restored.nii.gz", "labels.nii.gz", "overview.png", "metrics.json"]
    if stages:
        names_out += [f"stages_{b}.nii.gz" for b in ("full", "low", "high")]
    check_outputs([out / n for n in names_out], overwrite, "--out")
    check_inputs(input=input_path, **{"--labels": labels, "--clean": clean,
                                      "--kspace": kspace if isinstance(kspace, (str, Path)) else None})
    loaded = loaded or load_model(weights, device)
    if compile:
        loaded = compile_loaded(loaded)
    if label_set is not None and label_set not in loaded.label_sets:
        raise InferenceError(f"--label-set {label_set!r} is not in this checkpoint; it has {sorted(loaded.label_sets)}")
    vol = read_image(input_path)
    seg_source = SegSource.from_meta(vol.meta, vol.shape) if dicom_seg else None
    seg_datasets = None
    if seg_source is not None:  # refused before the network runs: a taken target, unreadable sources
        check_outputs([out / "labels.seg.dcm"], overwrite, "--out")
        seg_datasets = _no_seg_hint(seg_source.datasets)
    image, norm = to_unit_range(vol)
    image3 = image[None] if image.ndim == 2 else image
    clean_a = ref = None
    if clean is not None:
        clean_a, _ = to_unit_range(read_image(clean))
        clean_a = clean_a.reshape(image3.shape) if clean_a.size == image3.size else None
        if clean_a is None:
            raise ValueError(f"--clean {clean}: clean reference shape differs from the input {image.shape}")
    if labels is not None:
        ref = read_label(labels, like=vol).astype(np.int64).reshape(image3.shape)
    elif getattr(vol, "label", None) is not None:
        ref = np.asarray(vol.label).astype(np.int64).reshape(image3.shape)
    ref_name = labels if labels is not None else f"(in {input_path})"
    if ref is not None:
        _check_label_values(ref, ref_name, loaded, label_set)
    measurement = None
    if kspace is not None:
        try:
            measurement = Measurement.load(kspace) if isinstance(kspace, (str, Path)) else kspace
            if measurement.kspace.size == image3.size:
                measurement = Measurement.of(measurement.kspace.reshape(image3.shape),
                                             measurement.mask.reshape((-1, *image3.shape[-2:])), image3.shape)
            measurement.check(image3)
        except MeasurementError as exc:
            raise InferenceError(str(exc)) from None
    n_passes = passes(loaded, measurement is not None, cascades,
                      None if measurement is None else measurement.mask)  # refuses a bad count first
    used_tile = check_tiling(loaded.model, loaded.device, image3.shape[-2:], tile, stages)  # refuses before work
    t0 = time.perf_counter()
    pred = None
    with tqdm(total=image3.shape[0], desc="restore+segment", unit="slice", disable=not progress) as bar:
        for item in iter_predict(loaded, image3, label_set=label_set, precision=precision, tile=tile,
                                 measurement=measurement, cascades=cascades, tta=tta, postprocess=postprocess):
            if isinstance(item, Progress):
                bar.update(1)
            else:
                pred = item
    wall = time.perf_counter() - t0
    assert pred is not None
    _check_finite(pred, loaded.source)
    if ref is not None and pred.label_set is not None:
        _check_label_values(ref, ref_name, loaded, pred.label_set, chosen=label_set is None)
    z = _show_slice(pred.labels, image3.shape[0])
    with_stages = None
    if stages:
        with_stages = next(x for x in iter_predict(loaded, image3, label_set=pred.label_set, slices=[z],
                                                   return_stages=True, precision=precision,
                                                   measurement=measurement, cascades=cascades)
                           if isinstance(x, Prediction))
        _check_finite(with_stages, loaded.source)
    cfg = loaded.model.cfg
    names = cfg.label_sets.get(pred.label_set, []) if pred.label_set else []
    colors = cfg.label_colors.get(pred.label_set) if pred.label_set else None
    shape = image.shape
    seg = None
    if seg_datasets is not None and pred.labels is not None:
        seg = _no_seg_hint(lambda: build_dicom_seg(
            pred.labels.reshape(shape), seg_datasets, names, series_description="napari-vldun labels",
            algorithm_version=__version__, checkpoint=Path(loaded.source).name))
        names_out.insert(names_out.index("labels.nii.gz") + 1, "labels.seg.dcm")
    written = [n for n in names_out if not (n == "restored.nii.gz" and pred.restored is None)
               and not (n == "labels.nii.gz" and pred.labels is None)]
    targets = {n: out / n for n in written}
    summary = {
        "input": str(input_path),
        "shape": list(shape),
        "weights": loaded.source,
        "random_weights": loaded.random_weights,
        "device": str(loaded.device),
        "normalisation": norm,
        "label_set": pred.label_set,
        "label_names": names,
        "data_consistency": measurement is not None,
        "cascades": n_passes,
        "precision": precision,
        "compiled": loaded.compiled,
        "compile_note": loaded.compile_note,
        "tile": used_tile,
        "tta": pred.tta,
        "postprocessing": None if pred.postprocessing is None else pred.postprocessing.describe(names or None),
        "label_set_warning": label_set_warning(loaded.model, pred.modality_probs, pred.label_set, label_set is not None),
        "seconds": round(wall, 3),
        "seconds_per_slice": round(wall / image3.shape[0], 4),
        "modality_probs": None if pred.modality_probs is None else dict(zip(cfg.modalities, np.round(pred.modality_probs.mean(0), 4).tolist())),
        "degradation_probs": None if pred.degradation_probs is None else dict(zip(cfg.degradations, np.round(pred.degradation_probs.mean(0), 4).tolist())),
        "metrics": _slice_metrics(pred, image3, clean_a, ref, len(names) or None),
        "outputs": [str(p) for p in targets.values()],
        "dicom_seg": None if seg is None else {
            "file": str(targets["labels.seg.dcm"]), "source_series_uid": str(vol.meta.get("series_uid")),
            "source_instances": len(seg_datasets), "segments": [str(d.SegmentLabel) for d in seg.SegmentSequence]},
    }
    if loaded.random_weights:
        summary["warning"] = "no trained checkpoint: the model ran with random weights, outputs are meaningless"
    with atomic_outputs(targets.values(), overwrite, "--out") as tmp:
        if pred.restored is not None:
            restored = restore_units(pred.restored, norm, np.asarray(vol.data).reshape(image3.shape), image3)
            _write_array(restored.reshape(shape), tmp[targets["restored.nii.gz"]], vol, overwrite=True)
        if pred.labels is not None:
            _write_array(pred.labels.reshape(shape).astype(np.uint8), tmp[targets["labels.nii.gz"]], vol,
                         overwrite=True)
        if seg is not None:
            seg.save_as(tmp[targets["labels.seg.dcm"]])
        if with_stages is not None:
            for b, name in enumerate(("full", "low", "high")):
                _write_array(with_stages.stages[0, :, b], tmp[targets[f"stages_{name}.nii.gz"]], None,
                             overwrite=True)
        overview_figure(
            tmp[targets["overview.png"]], image3[z], None if pred.restored is None else pred.restored[z],
            None if pred.labels is None else pred.labels[z], colors,
            clean=None if clean_a is None else clean_a[z], true_labels=None if ref is None else ref[z],
            title=f"{Path(input_path).name}  slice {z}  ({loaded.source if loaded.random_weights else Path(loaded.source).name})",
            overwrite=True)
        write_json(tmp[targets["metrics.json"]], summary, overwrite=True)
    return summary


def list_samples() -> dict[str, dict]:
    """Bundled samples: name -> meta.json content (with file paths)."""
    samples = {}
    for meta in sorted(sample_dir().glob("*/meta.json")):
        d = json.loads(meta.read_text())
        d["dir"] = str(meta.parent)
        samples[meta.parent.name] = d
    return samples


def sample_measurement(sample: str) -> Measurement:
    """The acquisition of a bundled sample's degraded image (:class:`Measurement`, (Z, H, W)).

    The samples are simulated (``scripts/make_sample_data.py``): the k-space is the recorded mask
    (kind, acceleration, seed in ``meta.json``) applied to the clean image's centred FFT, exactly what
    an acquisition with that mask measures."""
    s = list_samples()[sample]
    deg = s["degradation"]
    clean = np.asarray(read_image(Path(s["dir"]) / s["files"]["clean"]).data, np.float32)
    clean = clean[None] if clean.ndim == 2 else clean
    kw = {"center_fraction": deg.get("center_fraction", 0.08)} if deg["mask"] == "cartesian" else {}
    return Measurement.simulate(clean, deg["mask"], deg["accel"], seed=deg["seed"], **kw)[1]


def run_demo(out_dir: str | Path = "vldun-demo", *, sample: str = "acdc", weights: str | Path | None = None,
             device: str = "auto", overwrite: bool = False, data_consistency: bool = True,
             cascades: int | None = None, precision: str = "fp32", compile: bool = False) -> dict:
    """Run the model on a bundled sample (its degraded image), scored against its clean image and labels;
    with its acquisition (:func:`sample_measurement`) for data consistency (over ``cascades`` passes,
    default the checkpoint's) unless told otherwise."""
    samples = list_samples()
    if sample not in samples:
        raise InferenceError(f"unknown sample {sample!r}; bundled samples: {sorted(samples)}")
    s = samples[sample]
    d = Path(s["dir"])
    return predict_file(d / s["files"]["degraded"], out_dir, weights=weights, device=device,
                        label_set=s.get("label_set"), labels=d / s["files"]["labels"],
                        clean=d / s["files"]["clean"], overwrite=overwrite,
                        kspace=sample_measurement(sample) if data_consistency else None, cascades=cascades,
                        precision=precision, compile=compile)
