"""File-level jobs shared by the CLI: degrade a file, predict a file or DICOM folder, the demo.

Every output is refused if it already exists, unless ``overwrite=True``; outputs are NIfTI
aligned with the input (same affine and axis order), plus an overview PNG and a metrics JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .inference import InferenceError, LoadedModel, Prediction, Progress, iter_predict, load_model, passes
from .io.lock import locks_output


#: Largest value still taken as "already in [0, 1]" (zero-filled overshoot).
UNIT_RANGE_MAX = 1.5


def sample_dir() -> Path:
    """Bundled samples (top-level ``sample_data/<name>/``, installed as ``napari_vldun.sample_data``)."""
    from importlib.resources import files

    return Path(str(files("napari_vldun.sample_data")))


def to_unit_range(volume) -> tuple[np.ndarray, dict]:
    """Volume data -> float32 in [0, 1] (CT window / MRI percentiles, see :func:`io.normalize`).

    Floating-point data already in ``[0, UNIT_RANGE_MAX]`` is kept as is: a zero-filled magnitude of
    a [0, 1] image overshoots 1 by Gibbs ringing (ACDC at 4x: up to ~1.1), and rescaling it would
    change the intensity scale the model was trained on.
    """
    from .io import normalize

    data = np.asarray(volume.data, dtype=np.float32)
    raw_float = str(getattr(volume, "meta", {}).get("original_dtype", "float32")).startswith("float")
    if data.size and np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= UNIT_RANGE_MAX and raw_float:
        return data, {"method": "none", "lo": 0.0, "hi": 1.0}
    return normalize(volume)


def from_unit_range(x: np.ndarray, params: dict) -> np.ndarray:
    """Map [0, 1] values back to the input's intensity units (inverse of the linear rescale).

    ``params`` from :func:`to_unit_range`; missing or ``None`` bounds (a constant image) map as identity."""
    lo, hi = unit_bounds(params)
    return (x * (hi - lo) + lo).astype(np.float32)


def unit_bounds(params: dict) -> tuple[float, float]:
    """``(lo, hi)`` of the linear map behind a normalisation; ``(0, 1)`` when it has none."""
    lo, hi = params.get("lo"), params.get("hi")
    return (0.0, 1.0) if lo is None or hi is None else (float(lo), float(hi))


def check_free(paths: list[Path], overwrite: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"would overwrite {', '.join(taken)}; pass --overwrite or choose another --out")


def _write_array(array: np.ndarray, path: Path, like, overwrite: bool) -> None:
    from .io import write_nifti, write_png

    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        write_nifti(array, path, like=like, overwrite=overwrite)
    elif name.endswith(".png"):
        if array.ndim == 3 and array.shape[0] != 1:
            raise ValueError(f"{path}: a PNG holds one slice, the image has {array.shape[0]}; write .nii.gz")
        write_png(array.reshape(array.shape[-2:]), path, overwrite=overwrite, vrange=(0.0, 1.0))
    elif name.endswith(".npy"):
        check_free([path], overwrite)
        np.save(path, array.astype(np.float32), allow_pickle=False)
    else:
        raise ValueError(f"{path}: output must end in .nii, .nii.gz, .png or .npy")


def degrade_file(input_path: str | Path, output_path: str | Path, *, mask: str, accel: float, seed: int = 0,
                 center_fraction: float = 0.08, overwrite: bool = False,
                 kspace_out: str | Path | None = None) -> dict:
    """Read an image, normalise it to [0, 1], undersample every slice's k-space with the same
    mask, write the magnitude (and, with ``kspace_out``, the measurement as ``.npz``, see
    :func:`write_measurement`). Returns the sampling fraction and the normalisation used."""
    from .degradation import acquire
    from .io import read_image

    out = Path(output_path)
    targets = [out] + ([Path(kspace_out)] if kspace_out else [])
    check_free(targets, overwrite)
    if kspace_out and Path(kspace_out).suffix != ".npz":
        raise ValueError(f"--kspace-out {kspace_out}: the measurement is written as .npz")
    vol = read_image(input_path)
    data, norm = to_unit_range(vol)
    kwargs = {"center_fraction": center_fraction} if mask == "cartesian" else {}
    y, kspace, m = acquire(data, mask, accel, seed=seed, **kwargs)
    _write_array(np.asarray(y, np.float32), out, vol, overwrite)
    summary = {"output": str(out), "mask": mask, "accel": accel, "seed": seed, "fraction": round(m.fraction, 4),
               "normalisation": norm}
    if kspace_out:
        write_measurement(kspace_out, kspace, m.mask.numpy())
        summary["kspace"] = str(kspace_out)
    return summary


def write_measurement(path: str | Path, kspace: np.ndarray, mask: np.ndarray) -> None:
    """Save a known acquisition as ``.npz``: ``kspace`` (Z, H, W) or (H, W) complex64 centred k-space of
    the [0, 1] image (zeros where not sampled), ``mask`` (H, W) or (Z, H, W) uint8 {0, 1}. Only the
    sampled entries are stored (``values``), so a 4x acquisition takes about a quarter of the space."""
    k = np.asarray(kspace, np.complex64)
    m = np.asarray(mask) > 0
    full = np.broadcast_to(m, k.shape)
    np.savez_compressed(path, shape=np.array(k.shape), mask=m.astype(np.uint8), values=k[full])


def read_measurement(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load :func:`write_measurement`'s file (no pickles): ``(kspace (..., H, W) complex64, mask float32)``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"k-space file {p} not found")
    try:
        with np.load(p, allow_pickle=False) as f:
            shape, m, values = tuple(int(v) for v in f["shape"]), f["mask"] > 0, f["values"]
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{p}: not a k-space file written by `vldun degrade --kspace-out` "
                         f"(needs arrays shape, mask, values): {exc}") from exc
    full = np.broadcast_to(m, shape) if m.shape != tuple(shape) else m
    if full.shape != tuple(shape) or int(full.sum()) != values.size:
        raise ValueError(f"{p}: the mask {m.shape} and {values.size} sampled values do not fit the shape {shape}")
    k = np.zeros(shape, np.complex64)
    k[full] = values
    return k, m.astype(np.float32)


def measurement_mismatch(image: np.ndarray, kspace: np.ndarray) -> float:
    """Relative RMS difference between ``image`` (Z, H, W) and the zero-filled magnitude of ``kspace``
    (same shape): ~1e-7 when the k-space was measured from this image, large otherwise."""
    from .degradation import ifft2c

    zf = np.abs(np.asarray(ifft2c(np.asarray(kspace, np.complex64)))).astype(np.float64)
    ref = np.asarray(image, np.float64)
    return float(np.sqrt(np.mean((zf - ref) ** 2)) / max(float(np.sqrt(np.mean(ref**2))), 1e-8))


def check_measurement(image: np.ndarray, kspace: np.ndarray, tol: float = 1e-3) -> None:
    """Refuse a k-space that does not belong to ``image`` (Z, H, W) (:func:`measurement_mismatch` > ``tol``):
    data consistency would pull the result towards another image (e.g. one rescaled or clipped after the
    k-space was written)."""
    if kspace.shape != image.shape:
        raise InferenceError(f"the k-space {kspace.shape} does not match the image {image.shape}")
    err = measurement_mismatch(image, kspace)
    if err > tol:
        raise InferenceError(
            f"the k-space does not belong to this image: its zero-filled magnitude differs by {err:.2%} "
            "(RMS); give the image written with it, unscaled (see `vldun degrade --kspace-out`)")


def _slice_metrics(pred: Prediction, image: np.ndarray, clean: np.ndarray | None, ref_labels: np.ndarray | None,
                   n_classes: int | None) -> dict:
    from .evaluate.metrics import dice, iou, psnr, ssim

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


@locks_output("out_dir", "predict")  # one run per output folder (io.lock)
def predict_file(input_path: str | Path, out_dir: str | Path, *, weights: str | Path | None = None,
                 device: str = "auto", label_set: str | None = None, labels: str | Path | None = None,
                 clean: str | Path | None = None, overwrite: bool = False, stages: bool = False,
                 progress: bool = True, loaded: LoadedModel | None = None,
                 kspace: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
                 cascades: int | None = None) -> dict:
    """Restore and segment a file or DICOM folder slice by slice; write ``restored.nii.gz``,
    ``labels.nii.gz``, ``overview.png`` and ``metrics.json`` into ``out_dir``; return the summary.

    ``kspace``: the known acquisition of the input (a ``.npz`` from :func:`write_measurement`, or a
    ``(kspace, mask)`` pair), checked against the input, for data consistency; ``cascades`` passes of
    the network with it (default: the checkpoint's for the mask's kind; fewer is faster). Without ``kspace``
    there is one pass."""
    from tqdm import tqdm

    from .evaluate.figures import overview_figure
    from .io import read_image, read_label

    out = Path(out_dir)
    targets = [out / n for n in ("restored.nii.gz", "labels.nii.gz", "overview.png", "metrics.json")]
    if stages:
        targets += [out / f"stages_{b}.nii.gz" for b in ("full", "low", "high")]
    check_free(targets, overwrite)
    vol = read_image(input_path)
    image, norm = to_unit_range(vol)
    image3 = image[None] if image.ndim == 2 else image
    clean_a = ref = None
    if clean is not None:
        clean_a, _ = to_unit_range(read_image(clean))
        clean_a = clean_a.reshape(image3.shape) if clean_a.size == image3.size else None
        if clean_a is None:
            raise ValueError(f"{clean}: clean reference shape differs from the input {image.shape}")
    if labels is not None:
        ref = read_label(labels, like=vol).astype(np.int64).reshape(image3.shape)
    elif getattr(vol, "label", None) is not None:
        ref = np.asarray(vol.label).astype(np.int64).reshape(image3.shape)
    measurement = {}
    if kspace is not None:
        k, m = read_measurement(kspace) if isinstance(kspace, (str, Path)) else kspace
        k = np.asarray(k).reshape(image3.shape) if np.asarray(k).size == image3.size else np.asarray(k)
        check_measurement(image3, k)
        measurement = {"kspace": k, "mask": m, "cascades": cascades}
    loaded = loaded or load_model(weights, device)
    n_passes = passes(loaded, bool(measurement), cascades, measurement.get("mask"))  # refuses a bad count first
    t0 = time.perf_counter()
    pred = None
    with tqdm(total=image3.shape[0], desc="restore+segment", unit="slice", disable=not progress) as bar:
        for item in iter_predict(loaded, image3, label_set=label_set, **measurement):
            if isinstance(item, Progress):
                bar.update(1)
            else:
                pred = item
    wall = time.perf_counter() - t0
    assert pred is not None
    out.mkdir(parents=True, exist_ok=True)
    like = vol
    shape = image.shape
    if pred.restored is not None:
        _write_array(from_unit_range(pred.restored, norm).reshape(shape), targets[0], like, overwrite)
    if pred.labels is not None:
        _write_array(pred.labels.reshape(shape).astype(np.uint8), targets[1], like, overwrite)
    z = _show_slice(pred.labels, image3.shape[0])
    if stages:
        with_stages = next(x for x in iter_predict(loaded, image3, label_set=pred.label_set, slices=[z],
                                                   return_stages=True, **measurement) if isinstance(x, Prediction))
        for b, name in enumerate(("full", "low", "high")):
            _write_array(with_stages.stages[0, :, b], out / f"stages_{name}.nii.gz", None, overwrite)
    cfg = loaded.model.cfg
    names = cfg.label_sets.get(pred.label_set, []) if pred.label_set else []
    colors = cfg.label_colors.get(pred.label_set) if pred.label_set else None
    overview_figure(
        targets[2], image3[z], None if pred.restored is None else pred.restored[z],
        None if pred.labels is None else pred.labels[z], colors,
        clean=None if clean_a is None else clean_a[z], true_labels=None if ref is None else ref[z],
        title=f"{Path(input_path).name}  slice {z}  ({loaded.source if loaded.random_weights else Path(loaded.source).name})",
    )
    summary = {
        "input": str(input_path),
        "shape": list(shape),
        "weights": loaded.source,
        "random_weights": loaded.random_weights,
        "device": str(loaded.device),
        "normalisation": norm,
        "label_set": pred.label_set,
        "label_names": names,
        "data_consistency": bool(measurement),
        "cascades": n_passes,
        "seconds": round(wall, 3),
        "seconds_per_slice": round(wall / image3.shape[0], 4),
        "modality_probs": None if pred.modality_probs is None else dict(zip(cfg.modalities, np.round(pred.modality_probs.mean(0), 4).tolist())),
        "degradation_probs": None if pred.degradation_probs is None else dict(zip(cfg.degradations, np.round(pred.degradation_probs.mean(0), 4).tolist())),
        "metrics": _slice_metrics(pred, image3, clean_a, ref, len(names) or None),
        "outputs": [str(p) for p in targets if p.exists()],
    }
    if loaded.random_weights:
        summary["warning"] = "no trained checkpoint: the model ran with random weights, outputs are meaningless"
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    summary["outputs"] = [str(p) for p in targets if p.exists()]
    return summary


def list_samples() -> dict[str, dict]:
    """Bundled samples: name -> meta.json content (with file paths)."""
    samples = {}
    for meta in sorted(sample_dir().glob("*/meta.json")):
        d = json.loads(meta.read_text())
        d["dir"] = str(meta.parent)
        samples[meta.parent.name] = d
    return samples


def sample_measurement(sample: str) -> tuple[np.ndarray, np.ndarray]:
    """The acquisition of a bundled sample's degraded image, ``(kspace (Z, H, W), mask (H, W))``.

    The samples are simulated (``scripts/make_sample_data.py``): the k-space is the recorded mask
    (kind, acceleration, seed in ``meta.json``) applied to the clean image's centred FFT, exactly what
    an acquisition with that mask measures."""
    from .degradation import acquire
    from .io import read_image

    s = list_samples()[sample]
    deg = s["degradation"]
    clean = np.asarray(read_image(Path(s["dir"]) / s["files"]["clean"]).data, np.float32)
    clean = clean[None] if clean.ndim == 2 else clean
    kw = {"center_fraction": deg.get("center_fraction", 0.08)} if deg["mask"] == "cartesian" else {}
    _, kspace, m = acquire(clean, deg["mask"], deg["accel"], seed=deg["seed"], **kw)
    return np.asarray(kspace, np.complex64), m.mask.numpy()


def run_demo(out_dir: str | Path = "vldun-demo", *, sample: str = "acdc", weights: str | Path | None = None,
             device: str = "auto", overwrite: bool = False, data_consistency: bool = True,
             cascades: int | None = None) -> dict:
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
                        kspace=sample_measurement(sample) if data_consistency else None, cascades=cascades)
