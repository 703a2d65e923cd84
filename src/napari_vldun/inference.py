"""Running a trained VL-DUN on images: device choice, model loading, slice-by-slice volumes.

The CLI and the napari widgets both call these functions. Long work is a generator
(:func:`iter_predict`) that yields :class:`Progress` after every slice and finally the
:class:`Prediction`, so callers can show progress and cancel between slices.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .model import VLDUN, build_model
from .degradation.consistency import reflect
from .degradation.masks import mask_kind
from .degradation.measurement import Measurement, MeasurementError
from .model.checkpoint import CheckpointError, load_checkpoint
from .model.compiled import COMPILE_ERRORS, compile_unavailable, compiled_copy
from .model.precision import Precision, autocast
from .postprocess import PostprocessRule, apply_rule, rules_from_meta
from .tiling import choose_tile, plan_tiles, run_tiled, whole_slice_bytes

#: The checkpoint shipped inside the package (``NAME.safetensors`` + ``NAME.json``).
SHIPPED_WEIGHTS = Path(__file__).with_name("weights") / "vldun_tiny"


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class InferenceError(ValueError):
    """Input, device or model problem that the user can fix; the message says how."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. Asking for CUDA without it is an error."""
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(
            f"device {device!r} was requested but this PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); choose 'cpu' or 'auto'"
        )
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise InferenceError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(name)


@dataclass
class LoadedModel:
    """A model ready for inference with what the outputs need to be labelled."""

    model: VLDUN
    device: torch.device
    source: str  # checkpoint path, or "random weights (...)"
    random_weights: bool
    meta: dict = field(default_factory=dict)
    #: the eager model when ``model`` is its compiled copy (:func:`compile_loaded`), kept as the fallback.
    eager: VLDUN | None = None
    #: why a requested compile is not used (no compiler, or it failed at its first call), else None.
    compile_note: str | None = None

    @property
    def compiled(self) -> bool:
        """True while ``model`` is a compiled copy (until a failed compile falls back to eager)."""
        return self.eager is not None

    def fall_back(self, reason: str) -> None:
        """Run eager from now on (the compiled copy failed), remembering ``reason``."""
        if self.eager is not None:
            self.model, self.eager = self.eager, None
        self.compile_note = reason

    @property
    def label_sets(self) -> dict[str, list[str]]:
        return self.model.cfg.label_sets

    @property
    def label_colors(self) -> dict[str, list[str]]:
        return self.model.cfg.label_colors


def load_model(weights: str | Path | None = None, device: str = "auto", config: str = "tiny",
               compile: bool = False) -> LoadedModel:
    """Load ``weights`` (a local checkpoint), else the shipped checkpoint, else -- only if none is
    shipped -- a randomly initialised ``config`` model, flagged ``random_weights=True``.
    ``compile``: run a ``torch.compile``d copy (:func:`compile_loaded`)."""
    dev = resolve_device(device)
    if weights is None and SHIPPED_WEIGHTS.with_suffix(".json").exists():
        weights = SHIPPED_WEIGHTS
    if weights is None:
        warnings.warn("no shipped checkpoint found: using a randomly initialised model", stacklevel=2)
        loaded = LoadedModel(build_model(config).to(dev).eval(), dev, f"random weights ({config})", True)
    else:
        try:
            model, meta = load_checkpoint(weights, dev)
        except CheckpointError as exc:
            raise InferenceError(str(exc)) from exc
        loaded = LoadedModel(model, dev, str(weights), False, meta)
    return compile_loaded(loaded) if compile else loaded


def compile_loaded(loaded: LoadedModel) -> LoadedModel:
    """A new :class:`LoadedModel` running a compiled copy of ``loaded``'s model
    (:func:`~napari_vldun.model.compiled.compiled_copy`; faster on volumes, the first slice of each size
    compiles), the eager model kept as its fallback; ``loaded`` itself is not changed. Where nothing can
    compile (no C++ compiler / triton) the copy runs eager and ``compile_note`` says why; a compile that
    fails at its first call falls back to eager in :func:`iter_predict`. Idempotent."""
    if loaded.compiled:
        return loaded
    reason = compile_unavailable(loaded.device)
    if reason is not None:
        return replace(loaded, compile_note=f"running eager: {reason}")
    return replace(loaded, model=compiled_copy(loaded.model), eager=loaded.model, compile_note=None)


@dataclass
class Progress:
    done: int
    total: int


@dataclass
class Prediction:
    """Outputs for a (Z, H, W) stack (2-D inputs come back with Z = 1).

    ``restored`` float32 (Z, H, W) in the input's [0, 1] scale; ``labels`` int (Z, H, W);
    ``modality_probs`` (Z, M) and ``degradation_probs`` (Z, K) (``None`` without priors);
    ``stages`` (Z, S, 3, H, W) float32 with bands full/low/high, only when asked (``stage_levels``: the U
    level of each, ``stage_passes``: the 0-based pass each belongs to); ``uncertainty``
    (Z, H, W) float32 in [0, 1], the normalised entropy of the chosen label set's softmax
    (:func:`normalised_entropy`), only when asked; ``postprocessing``: the checkpoint's rule for the label set
    that was applied to ``labels`` (None when none was).
    """

    restored: np.ndarray | None
    labels: np.ndarray | None
    label_set: str | None
    modality_probs: np.ndarray | None
    degradation_probs: np.ndarray | None
    stages: np.ndarray | None = None
    stage_levels: list[int] = field(default_factory=list)
    uncertainty: np.ndarray | None = None
    stage_passes: list[int] = field(default_factory=list)
    #: the connected-component rule applied to ``labels`` (:mod:`~napari_vldun.postprocess`), None if none
    postprocessing: PostprocessRule | None = None
    #: True when the labels average the slice's test-time flips (``tta``)
    tta: bool = False


def validate_image(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Check a user image and return it as float32 (Z, H, W). Raises :class:`InferenceError`."""
    a = np.asarray(array)
    if a.size == 0:
        raise InferenceError(f"{name} is empty (shape {a.shape})")
    if a.dtype.kind not in "biuf":
        raise InferenceError(f"{name} has dtype {a.dtype}; a grey-level image of numbers is needed")
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        raise InferenceError(f"{name} looks like an RGB(A) picture {a.shape}; convert it to grey levels first")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InferenceError(f"{name} must be 2-D or 3-D (slices first), got shape {a.shape}")
    if min(a.shape[-2:]) < 8:
        raise InferenceError(f"{name} slices of {a.shape[-2]}x{a.shape[-1]} px are too small (8x8 at least)")
    a = a.astype(np.float32, copy=False)
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise InferenceError(f"{name} has {bad} NaN or infinite values; fix or mask them first")
    return a


def slice_indices(slices, n: int) -> list[int]:
    """``slices`` (None: all) as a list of indices into ``n`` slices; :class:`InferenceError` for an
    index out of range or not an integer."""
    if slices is None:
        return list(range(n))
    idx = list(slices)
    bad = [z for z in idx if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= z < n]
    if bad:
        raise InferenceError(f"slices {bad} out of range: the image has {n} slice(s), give indices 0..{n - 1}")
    return [int(z) for z in idx]


def choose_label_set(model: VLDUN, modality_probs: np.ndarray | None, label_set: str | None) -> str | None:
    """The requested label set, else the one mapped from the most likely modality, else the first."""
    sets = list(model.cfg.label_sets)
    if not sets:
        return None
    if label_set is not None:
        if label_set not in sets:
            raise InferenceError(f"label set {label_set!r} is not in this checkpoint; it has {sets}")
        return label_set
    if modality_probs is not None:
        modality = model.cfg.modalities[int(np.asarray(modality_probs).reshape(-1, len(model.cfg.modalities)).mean(0).argmax())]
        mapped = model.cfg.modality_label_sets.get(modality)
        if mapped in sets:
            return mapped
    return sets[0]


#: below this mean probability of the most likely modality, an automatic label set is flagged as a guess.
SURE_MODALITY = 0.5


def label_set_warning(model: VLDUN, modality_probs: np.ndarray | None, label_set: str | None,
                      chosen_by_user: bool) -> str | None:
    """A sentence for the user when the label set may not fit the anatomy, else None: the modality prior is
    unsure (mean top probability < :data:`SURE_MODALITY`) about an automatic choice, or the label set belongs
    to another modality than the one the prior sees (e.g. heart classes on a brain)."""
    if label_set is None or modality_probs is None:
        return None
    probs = np.asarray(modality_probs, float).reshape(-1, len(model.cfg.modalities)).mean(0)
    top = int(probs.argmax())
    modality, p = model.cfg.modalities[top], float(probs[top])
    owner = [m for m, s in model.cfg.modality_label_sets.items() if s == label_set]
    if owner and modality not in owner and modality in model.cfg.modality_label_sets:
        return (f"label set '{label_set}' is for {', '.join(owner)}, but the image looks like {modality} "
                f"(p = {p:.2f}); pick the label set that matches the anatomy")
    if owner and modality not in owner and p >= SURE_MODALITY:
        return (f"the image looks like {modality} (p = {p:.2f}), for which this checkpoint has no label set; "
                f"'{label_set}' is for {', '.join(owner)}, so its labels mean nothing here")
    if not chosen_by_user and p < SURE_MODALITY:
        return (f"label set '{label_set}' was chosen automatically from an unsure modality guess ({modality}, "
                f"p = {p:.2f}); check it or pick the label set that matches the anatomy")
    return None


@dataclass
class LabelSetCheck:
    """What the modality prior says about a label set before a run (:func:`check_label_set`)."""

    label_set: str | None
    modality: str | None
    probability: float
    warning: str | None


@torch.no_grad()
def check_label_set(loaded: LoadedModel, image: np.ndarray, slices: list[int] | None = None,
                    label_set: str | None = None, max_slices: int = 3) -> LabelSetCheck:
    """The label set a run of ``image`` ((H, W) or (Z, H, W) in [0, 1]) on ``slices`` would use and
    :func:`label_set_warning`'s sentence about it, from the modality prior of up to ``max_slices`` evenly
    spaced slices (the prior tower only: ~1 % of a pass), so that a dock can ask before it runs."""
    vol = validate_image(image)
    model = loaded.model
    idx = slice_indices(slices, vol.shape[0])
    pick = [idx[int(i)] for i in np.linspace(0, len(idx) - 1, min(max_slices, len(idx))).round()]
    if not model.cfg.use_priors:
        return LabelSetCheck(choose_label_set(model, None, label_set), None, float("nan"), None)
    probs = np.stack([model.priors(torch.from_numpy(np.ascontiguousarray(vol[z], np.float32))[None, None]
                                   .to(loaded.device)).modality_logits.float().softmax(-1)[0].cpu().numpy()
                      for z in pick])
    chosen = choose_label_set(model, probs, label_set)
    mean = probs.mean(0)
    top = int(mean.argmax())
    return LabelSetCheck(chosen, model.cfg.modalities[top], float(mean[top]),
                         label_set_warning(model, probs, chosen, label_set is not None))


def _available_bytes() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().available)


def check_tiling(model: VLDUN, device: torch.device, shape: tuple[int, int], tile: int | None,
                 return_stages: bool) -> int | None:
    """The tile size :func:`_run_slice` will use for an (H, W) slice (None: whole slice), refusing up front
    what cannot work: stage maps of a tiled slice, or a forced whole slice (``tile=0``) whose estimated
    memory (:func:`~napari_vldun.tiling.whole_slice_bytes`) exceeds what the CPU has available."""
    try:
        t = choose_tile(shape, tile)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    h, w = shape
    if t is not None and return_stages:
        raise InferenceError(f"stage maps need whole-slice inference and a {h}x{w} slice would be tiled; "
                             "pick a smaller region, or set tile=0 to run it whole")
    if t is None and device.type == "cpu":
        need, have = whole_slice_bytes(model.cfg, shape), _available_bytes()
        if have is not None and need > 0.8 * have:
            raise InferenceError(f"a whole {h}x{w} slice needs ~{need / 2**30:.1f} GB, {have / 2**30:.1f} GB "
                                 "is available: let it be tiled (tile=None or a tile size)")
    return t


@torch.no_grad()
def _run_slice(model: VLDUN, device: torch.device, image: np.ndarray, return_stages: bool,
               kspace: np.ndarray | None = None, mask: np.ndarray | None = None, cascades: int | None = None,
               precision: str = "fp32", tile: int | None = None, interrupt=None, flip: tuple[int, ...] = ()):
    """One slice through the model; ``flip``: axes along which image, k-space and mask are first reflected
    (:func:`~napari_vldun.degradation.reflect`; the outputs stay reflected)."""
    def tensor(a: np.ndarray) -> torch.Tensor:  # C-ordered and writable (a read-only view is copied)
        return reflect(torch.from_numpy(np.require(a, requirements=("C", "W")))[None, None], flip).to(device)

    y = tensor(image)
    dc = {}
    if kspace is not None:
        dc = {"kspace": tensor(kspace), "mask": tensor(mask), "cascades": cascades}
    try:
        if tile is not None:
            n = model.passes(kspace is not None, cascades)
            return run_tiled(model, y, plan_tiles(image.shape, tile), n, dc.get("kspace"), dc.get("mask"),
                             context=lambda: autocast(device, precision), interrupt=interrupt)
        with autocast(device, precision):
            return model(y, return_stages=return_stages, interrupt=interrupt, **dc)
    except COMPILE_ERRORS:
        raise  # not an out-of-memory even when the compiler's message says "memory"
    except (_OOM, RuntimeError) as exc:
        if not isinstance(exc, _OOM) and "memory" not in str(exc).lower():
            raise
        raise InferenceError(
            f"out of memory on a {image.shape[0]}x{image.shape[1]} slice on {device}; "
            "try the CPU, a smaller crop or the current slice only"
        ) from exc


#: the reflections averaged by test-time flips, besides the slice itself (axes of (..., H, W))
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((-1,), (-2,), (-2, -1))


def passes(loaded: LoadedModel, measured: bool, cascades: int | None = None, mask=None) -> int:
    """The pass-count policy of a job, decided once for all its slices: without a measurement (or a
    reconstruction head) 1; else ``cascades`` when given, else ``cfg.cascades_by_mask[kind]`` when every mask
    in ``mask`` ((..., H, W), the job's sampling masks) is of that :func:`~napari_vldun.degradation.mask_kind`,
    else ``cfg.cascades``. :class:`InferenceError` below 1."""
    cfg = loaded.model.cfg
    if cascades is None and measured and mask is not None and cfg.cascades_by_mask:
        cascades = cfg.cascades_by_mask.get(mask_kind(mask))
    try:
        return loaded.model.passes(measured, cascades)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


def normalised_entropy(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of ``softmax(logits)`` along the class ``axis`` divided by ``log(C)``: float32 in [0, 1]
    (0: one class certain, 1: all ``C`` classes equally likely); shape of ``logits`` without ``axis``,
    e.g. (C, H, W) -> (H, W). One class gives zeros."""
    x = np.asarray(logits, np.float64)
    c = x.shape[axis]
    if c < 2:
        return np.zeros(np.delete(x.shape, axis), np.float32)
    x = x - x.max(axis=axis, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=axis, keepdims=True))
    h = -(np.exp(logp) * logp).sum(axis=axis) / math.log(c)
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def iter_predict(loaded: LoadedModel, image: np.ndarray, *, label_set: str | None = None,
                 slices: list[int] | None = None, return_stages: bool = False,
                 measurement: Measurement | None = None, cascades: int | None = None, precision: str = "fp32",
                 return_uncertainty: bool = False, tile: int | None = None,
                 interrupt: Callable[[], None] | None = None,
                 postprocess: bool = True, tta: bool = False) -> Iterator[Progress | Prediction]:
    """Restore and segment ``image`` (H, W) or (Z, H, W), values in [0, 1] (up to 1.5 accepted: a
    zero-filled magnitude overshoots), slice by slice.

    When the acquisition is known, ``measurement`` (a :class:`~napari_vldun.degradation.measurement.Measurement`
    of the [0, 1] image: (Z, H, W) k-space and its mask) makes the restored slices consistent with it
    (:func:`~napari_vldun.degradation.data_consistency`), over ``cascades`` passes (default: the checkpoint's,
    for the mask's kind, decided once for the job).

    ``precision``: "fp32" or "bf16" (autocast; see :mod:`~napari_vldun.model.precision`).
    ``return_uncertainty``: also give :attr:`Prediction.uncertainty` (per-pixel normalised entropy).
    ``tile``: None = tile slices above ~1 Mpx automatically (:mod:`~napari_vldun.tiling`), 0 = never,
    N = overlapping N x N tiles whenever a slice is larger.
    ``tta``: test-time flips (nnU-Net's mirroring): the segmentation is the mean softmax of the slice and its
    three reflections (image, k-space and mask reflected together, :func:`~napari_vldun.degradation.reflect`),
    4x the segmentation cost; the restored image and stages stay those of the slice as given.
    ``postprocess``: apply the checkpoint's connected-component rule for the chosen label set (decided on a
    validation split, :mod:`~napari_vldun.postprocess`; checkpoints without one are unchanged); False gives the
    network's argmax as it is.

    Yields :class:`Progress` after each slice, then one :class:`Prediction` (for ``slices`` only,
    in that order, when given). Stop iterating to cancel: nothing is returned half-done. ``interrupt``
    (a callable) is called between the unfolding stages (and tiles) of a slice: an exception it raises stops
    the run there, so that a cancel does not wait for the slice to end.
    """
    vol = validate_image(image)
    lo, hi = float(vol.min()), float(vol.max())
    if lo < -0.05 or hi > 1.5:
        raise InferenceError(
            f"image values span [{lo:.3g}, {hi:.3g}]; normalise to [0, 1] first (napari_vldun.io.normalize); "
            "zero-filled magnitudes up to 1.5 are accepted"
        )
    if measurement is not None:
        if not isinstance(measurement, Measurement):
            raise InferenceError(f"measurement must be a Measurement (k-space + mask), got {type(measurement).__name__}")
        try:
            measurement = Measurement.of(measurement.kspace, measurement.mask, vol.shape)
        except MeasurementError as exc:
            raise InferenceError(str(exc)) from None
    try:
        rules = rules_from_meta(loaded.meta) if postprocess else {}
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    cascades = passes(loaded, measurement is not None, cascades,
                      None if measurement is None else measurement.mask)  # once per job; refuses a bad count first
    try:
        precision = Precision.parse(precision).value
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    idx = slice_indices(slices, vol.shape[0])
    model, dev = loaded.model, loaded.device
    tile = check_tiling(model, dev, vol.shape[-2:], tile, return_stages)
    restored, seg_logits, mod, deg, stages, levels, stage_passes = [], [], [], [], [], [], []
    for n, z in enumerate(idx):
        meas = (measurement.kspace[z], measurement.mask[z]) if measurement is not None else (None, None)
        run = dict(cascades=cascades, precision=precision, tile=tile, interrupt=interrupt)

        def run_slice(stages_wanted: bool, flip: tuple[int, ...] = ()):
            nonlocal model
            try:
                return _run_slice(model, dev, vol[z], stages_wanted, *meas, flip=flip, **run)
            except COMPILE_ERRORS as exc:
                if not loaded.compiled:
                    raise
                loaded.fall_back(f"torch.compile failed ({type(exc).__name__}); running eager")
                warnings.warn(loaded.compile_note, stacklevel=2)
                model = loaded.model
                return _run_slice(model, dev, vol[z], stages_wanted, *meas, flip=flip, **run)

        out = run_slice(return_stages)
        if tta and out.seg_logits:
            probs = {k: v.float().softmax(1) for k, v in out.seg_logits.items()}
            for flip in TTA_FLIPS:
                seg = run_slice(False, flip).seg_logits
                for k in probs:
                    probs[k] += reflect(seg[k].float(), flip).softmax(1)
            out.seg_logits = {k: (p / (1 + len(TTA_FLIPS))).clamp_min(1e-12).log() for k, p in probs.items()}
        if out.restored is not None:
            restored.append(out.restored[0, 0].clamp(0, 1).float().cpu().numpy())
        seg_logits.append({k: v[0].float().cpu() for k, v in out.seg_logits.items()})
        if out.modality_probs is not None:
            mod.append(out.modality_probs[0].float().cpu().numpy())
            deg.append(out.degradation_probs[0].float().cpu().numpy())
        if return_stages:
            stages.append(np.stack([torch.cat([s.full, s.low, s.high], 1)[0].float().cpu().numpy()
                                    for s in out.stages]))
            levels = [s.level for s in out.stages]
            stage_passes = [s.pass_index for s in out.stages]
        yield Progress(n + 1, len(idx))
    mod_a = np.stack(mod) if mod else None
    chosen = choose_label_set(model, mod_a, label_set) if seg_logits and seg_logits[0] else None
    labels = np.stack([s[chosen].argmax(0).numpy() for s in seg_logits]).astype(np.uint8) if chosen else None
    rule = rules.get(chosen) if chosen else None
    rule = None if rule is None or rule.is_identity else rule
    if rule is not None:
        labels = apply_rule(labels, rule)
    uncertainty = None
    if return_uncertainty and chosen:
        uncertainty = np.stack([normalised_entropy(s[chosen].numpy()) for s in seg_logits])
    yield Prediction(
        restored=np.stack(restored) if restored else None,
        labels=labels,
        label_set=chosen,
        modality_probs=mod_a,
        degradation_probs=np.stack(deg) if deg else None,
        stages=np.stack(stages).astype(np.float32) if stages else None,
        stage_levels=levels,
        uncertainty=uncertainty,
        stage_passes=stage_passes,
        postprocessing=rule,
        tta=bool(tta and chosen),
    )


def predict(loaded: LoadedModel, image: np.ndarray, **kwargs) -> Prediction:
    """Run :func:`iter_predict` to the end and return its :class:`Prediction`."""
    result = None
    for item in iter_predict(loaded, image, **kwargs):
        result = item
    assert isinstance(result, Prediction)
    return result
