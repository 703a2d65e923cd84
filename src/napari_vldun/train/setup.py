"""Everything a run needs before its first step: out_dir checks, datasets, loaders, model, resume state.

:func:`build_run` builds the run of ``cfg.sources``: the model's ``modalities`` are the sorted modality
names of every source the run uses (training, prior and validation sources), so that the datasets'
``modality`` indices and the model's classifier agree; its ``label_sets`` are the label sets of the
joint-phase training sources (class names and colours from
:data:`~napari_vldun.model.config.LABEL_SETS` / ``LABEL_COLORS``).

:func:`build_run_from_datasets` builds the run of ready-made datasets instead (e.g.
:class:`~napari_vldun.data.PairsDataset` s of napari layers or folders; ``cfg.sources`` may be
empty); :func:`make_run_builder` wraps it for ``iter_train(cfg, run_builder=...)``.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data import SOURCES, SliceDataset, make_loader
from ..io.lock import OutputLockedError, output_lock
from ..model import CONFIGS, build_model, get_config
from ..model.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint, read_checkpoint_config
from ..model.config import LABEL_COLORS, LABEL_SETS
from .config import IMMUTABLE_ON_RESUME, SOURCE_LICENSES, TrainConfig
from .distributed import DistContext, any_rank, unwrap
from .state import SETS_DIR, find_resume_set, load_state, set_rng_state, state_paths

__all__ = ["RunExistsError", "PhaseSpec", "Run", "build_run", "build_run_from_datasets", "make_run_builder",
           "checkpoint_meta", "check_out_dir", "make_phase", "check_resume_config", "validation_dataset",
           "CHECKPOINT_NAMES", "run_lock"]

#: Files a run owns in ``out_dir`` (NAME.safetensors / NAME.json, plus the resume state of "last").
CHECKPOINT_NAMES = ("last", "best")
RUN_FILES = ("last.safetensors", "last.json", "last.state.safetensors", "last.state.json", "last.manifest.json",
              "best.safetensors", "best.json", "best.manifest.json")


class RunExistsError(FileExistsError):
    """``out_dir`` already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


@dataclass
class PhaseSpec:
    """One phase: ``epochs`` of ``steps`` optimiser steps over ``dataset`` (``loader`` gives the
    per-epoch sample order, see ``Trainer._epoch_loader``)."""

    name: str
    epochs: int
    steps: int
    dataset: object
    loader: object


@dataclass
class Run:
    model: torch.nn.Module
    train_ds: object
    val_ds: object
    prior_val_ds: object | None
    phases: list[PhaseSpec]
    sources_used: list[str]
    state: dict | None = None
    state_tensors: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the checkpoints record about data that is not ``cfg.sources`` (``{"origin", "pairs", ...}``).
    provenance: dict | None = None

    def start_info(self, trainer) -> dict:
        m = self.model
        return {
            "params": sum(p.numel() for p in m.parameters()),
            "train_slices": len(self.train_ds), "val_slices": len(self.val_ds),
            "phases": {p.name: {"epochs": p.epochs, "steps_per_epoch": p.steps, "slices": len(p.dataset)}
                       for p in self.phases},
            "device": str(trainer.ctx.device), "world_size": trainer.ctx.world_size,
            "resumed": self.state is not None,
            "resumed_from_step": trainer.pos.global_step if self.state is not None else 0,
            "modalities": list(m.cfg.modalities), "label_sets": list(m.cfg.label_sets),
            "out_dir": str(trainer.out_dir), "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- out_dir
@contextlib.contextmanager
def run_lock(cfg: TrainConfig, ctx: DistContext) -> Iterator[None]:
    """Rank 0 holds :func:`~napari_vldun.io.lock.output_lock` of ``cfg.out_dir`` for the run; when it
    is refused (another run writes there) every rank raises :class:`~napari_vldun.io.lock.OutputLockedError`."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.is_main:
            try:
                stack.enter_context(output_lock(cfg.out_dir, "training"))
            except OutputLockedError as exc:
                error = exc
        if any_rank(error is not None, ctx):
            raise error or OutputLockedError(f"out_dir {cfg.out_dir} is in use by another run (see rank 0)")
        yield


def _check_out_dir(cfg: TrainConfig, ctx: DistContext, resume: bool) -> None:
    out = Path(cfg.out_dir)
    present = [f for f in (*RUN_FILES, SETS_DIR) if (out / f).exists()]
    if resume:
        if not present:
            raise FileNotFoundError(f"cannot resume: {out} holds no 'last' checkpoint with its training state "
                                    "(last.json + last.state.json); start without resume")
        return
    if present and not cfg.overwrite:
        raise RunExistsError(
            f"out_dir {out} already holds a training run ({', '.join(present)}); resume it (resume=True / "
            "--resume), set overwrite=true to replace it, or choose another out_dir")
    ctx.barrier()  # every rank has checked before rank 0 deletes
    if present and ctx.is_main:
        import shutil

        for f in present:
            if (out / f).is_dir():
                shutil.rmtree(out / f)
            else:
                (out / f).unlink(missing_ok=True)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()


def _check_resume_config(cfg: TrainConfig, saved: dict, where: Path) -> None:
    # runs saved before these fields existed trained with rec_weight 1 and unbalanced prior sampling
    saved = {"rec_weight": 1.0, "prior_balance": None, "data_consistency": False, "free_weight": 0.0,
             "prior_view": "crop", **saved}
    try:
        old = TrainConfig.from_dict(saved, source=str(where)).to_dict()
    except ValueError as exc:
        raise ValueError(f"cannot resume from {where}: its saved training config is unreadable: {exc}") from exc
    new = cfg.to_dict()
    diff = [k for k in IMMUTABLE_ON_RESUME if old.get(k) != new.get(k)]
    if diff:
        detail = "; ".join(f"{k}: saved {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume {where}: the config changed in fields that must stay fixed ({detail}). "
                         "Only epochs, device, threads, workers, logging and validation size may change.")


# ----------------------------------------------------------------------------- model
def _known_heads(label_sets: list[str]) -> tuple[dict, dict]:
    """Class names and colours of label sets of :data:`~napari_vldun.model.config.LABEL_SETS`."""
    unknown = [s for s in label_sets if s not in LABEL_SETS]
    if unknown:
        raise ValueError(f"label sets {unknown} have no class names in model.config.LABEL_SETS")
    return ({k: list(LABEL_SETS[k]) for k in label_sets},
            {k: list(LABEL_COLORS[k]) for k in label_sets if k in LABEL_COLORS})


def _named_model(cfg: TrainConfig, modalities: list[str], heads: dict, colours: dict):
    """A fresh model of the named config ``cfg.model`` with these modalities and label-set heads
    (``heads``: label set -> class names)."""
    mcfg = get_config(cfg.model, **cfg.model_overrides)
    mcfg = mcfg.replace(
        modalities=tuple(modalities),
        label_sets={k: list(v) for k, v in heads.items()},
        label_colors={k: list(v) for k, v in colours.items() if k in heads},
    )
    model = build_model(mcfg, seed=cfg.seed)
    if cfg.init_priors:
        _load_priors(model, cfg.init_priors)
    if cfg.zero_init_residual:
        with torch.no_grad():
            for conv in [model.rec_head, *model.to_image]:  # stage_images heads start at zero anyway
                if conv is not None:
                    conv.weight.zero_()
                    conv.bias.zero_()
    if cfg.init_weights:
        _load_matching(model, cfg.init_weights)
    return model


def _load_matching(model, path: str) -> None:
    """Copy every tensor of the checkpoint ``path`` whose name and shape the model has; warn about the
    model's tensors left at their initialisation. Refuses a checkpoint that shares (almost) nothing."""
    from safetensors.torch import load_file

    wpath, _ = checkpoint_paths(path)
    if not wpath.is_file():
        raise ValueError(f"init_weights {path}: {wpath} not found")
    own = model.state_dict()
    src = load_file(str(wpath))
    take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if len(take) < len(own) // 2:
        raise ValueError(f"init_weights {path}: only {len(take)} of the model's {len(own)} tensors match; "
                         "is it a checkpoint of this architecture?")
    model.load_state_dict(take, strict=False)
    fresh = sorted(set(own) - set(take))
    if fresh:
        warnings.warn(f"init_weights {path}: {len(fresh)} tensors keep their initialisation "
                      f"({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''})", stacklevel=2)


def _load_priors(model, path: str) -> None:
    """Copy the CLIP prior tower (``priors.*`` tensors) of the checkpoint ``path`` into ``model``; its clip
    config and modality list must match."""
    from safetensors.torch import load_file

    src_cfg, _ = read_checkpoint_config(path)
    if src_cfg.clip != model.cfg.clip or tuple(src_cfg.modalities) != tuple(model.cfg.modalities):
        raise ValueError(f"init_priors {path}: its prior tower (clip config, modalities {list(src_cfg.modalities)}) "
                         f"does not match the model's (modalities {list(model.cfg.modalities)})")
    wpath, _ = checkpoint_paths(path)
    tensors = {k[len("priors."):]: v for k, v in load_file(str(wpath)).items() if k.startswith("priors.")}
    missing, unexpected = model.priors.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
        raise ValueError(f"init_priors {path}: prior tensors do not fit (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")


#: VLDUNConfig fields that ``model_overrides`` may change when training starts from a checkpoint
#: (they change how the weights are run, not which weights exist). A checkpoint's ``cascades_by_mask`` is
#: cleared unless given here: the pass count that suits a mask kind is chosen again for the new weights.
CHECKPOINT_OVERRIDES = ("cascades", "cascades_by_mask")


def _checkpoint_model(cfg: TrainConfig, heads: dict):
    """The checkpoint ``cfg.model``, with ``cfg.model_overrides`` (only :data:`CHECKPOINT_OVERRIDES`); it
    must have a head for every label set of ``heads`` (label set -> class names, or None when the class
    count is not known) with the same number of classes."""
    wpath, cpath = checkpoint_paths(cfg.model)
    if not cpath.is_file():
        raise ValueError(f"model {cfg.model!r} is neither a named config ('tiny', 'paper') nor a checkpoint "
                         f"({cpath} not found)")
    arch = sorted(set(cfg.model_overrides) - set(CHECKPOINT_OVERRIDES))
    if arch:
        raise ValueError(f"model_overrides {arch} cannot change the architecture of a checkpoint (only "
                         f"{list(CHECKPOINT_OVERRIDES)} can); remove them or start from a named config "
                         f"instead of {cfg.model!r}")
    model, _ = load_checkpoint(cfg.model, "cpu")
    model.cfg = model.cfg.replace(**{"cascades_by_mask": {}, **cfg.model_overrides})  # validated like any config
    missing = [s for s in heads if s not in model.cfg.label_sets]
    if missing:
        raise ValueError(f"checkpoint {wpath} has no segmentation head for the label sets {missing} of the "
                         f"training data (it has {sorted(model.cfg.label_sets)})")
    for s, classes in heads.items():
        if classes is not None and len(model.cfg.label_sets[s]) != len(classes):
            raise ValueError(f"checkpoint {wpath}: label set {s!r} has {len(model.cfg.label_sets[s])} classes, "
                             f"the data has {len(classes)}")
    return model


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _resume_model(cfg: TrainConfig, out: Path):
    """(state tensors, state doc, model, notes) of the newest complete 'last' set of ``out``
    (:func:`~.state.find_resume_set`), checked against ``cfg``; ``notes`` says when that set is not
    ``out/last.*`` (an interrupted save)."""
    prefix, note = find_resume_set(out, "last")
    tensors, state = load_state(prefix)
    _check_resume_config(cfg, state.get("train_config", {}), state_paths(prefix)[1])
    _, meta = read_checkpoint_config(prefix)
    if meta.get("global_step") != state["position"]["global_step"]:
        raise ValueError(f"{out}: last checkpoint (step {meta.get('global_step')}) and its training state "
                         f"(step {state['position']['global_step']}) disagree (interrupted write?); no complete "
                         "set to resume from: start a new run (overwrite=true / a new --out)")
    model, _ = load_checkpoint(prefix, "cpu")
    return tensors, state, model, [note] if note else []


# ----------------------------------------------------------------------------- data
def _dataset_args(cfg: TrainConfig, modalities: list[str]) -> dict:
    accel = ({k: tuple(v) for k, v in cfg.accel_range.items()} if isinstance(cfg.accel_range, dict)
             else tuple(cfg.accel_range))
    return dict(root=cfg.data_root, accel_range=accel, center_fraction=cfg.center_fraction,
                noise_sigma_range=tuple(cfg.noise_sigma_range), seed=cfg.seed, modalities=modalities)


def validation_dataset(cfg: TrainConfig, modalities: list[str]):
    """The joint validation set a run of ``cfg`` validates on: ``val_crop`` crops of the validation splits
    of its sources at ``val_accel``, seeded by ``val_seed`` (the same inputs whatever the run's seed)."""
    return SliceDataset(cfg.resolved_val_sources(), "val", crop=cfg.val_crop or cfg.crop, mode="joint",
                        fixed_accel=cfg.val_accel, max_slices_per_source=cfg.val_max_slices, augment=False,
                        **{**_dataset_args(cfg, modalities), "seed": cfg.val_seed})


def _datasets(cfg: TrainConfig, modalities: list[str], with_prior: bool) -> dict:
    common = _dataset_args(cfg, modalities)
    val_crop = cfg.val_crop or cfg.crop
    val = {**common, "seed": cfg.val_seed}  # prior validation, seeded as validation_dataset
    ds = {
        "train": SliceDataset(cfg.sources, "train", crop=cfg.crop, mode="joint", balance=cfg.joint_balance,
                              max_slices_per_source=cfg.max_slices_per_source, augment=cfg.augment,
                              foreground_oversample=cfg.foreground_oversample,
                              intensity_augment=cfg.intensity_augment, source_crops=cfg.source_crops, **common),
        "val": validation_dataset(cfg, modalities),
    }
    if with_prior:
        ps = cfg.resolved_prior_sources()
        whole = cfg.prior_view == "whole"  # whole slices (collate_slices batches them as lists)
        ds["prior"] = SliceDataset(ps, "train", crop=None if whole else cfg.crop, mode="prior",
                                   balance=cfg.prior_balance, max_slices_per_source=cfg.max_slices_per_source,
                                   augment=cfg.augment, **common)
        ds["prior_val"] = SliceDataset(ps, "val", crop=None if whole else val_crop, mode="prior",
                                       max_slices_per_source=cfg.val_max_slices, augment=False, **val)
    return ds


def _phase(name: str, epochs: int, dataset, cfg: TrainConfig, ctx: DistContext, steps_cap) -> PhaseSpec:
    loader = make_loader(dataset, cfg.batch_size, shuffle=True, num_workers=0, distributed=ctx.distributed,
                         drop_last=True)
    n = len(loader)
    if n == 0 and epochs > 0:
        raise ValueError(f"{name} phase: {len(dataset)} training slices are fewer than batch_size="
                         f"{cfg.batch_size} x {ctx.world_size} process(es); lower batch_size or add data")
    return PhaseSpec(name, epochs, min(n, steps_cap) if steps_cap else n, dataset, loader)


def _modalities_of(sources: list[str]) -> list[str]:
    return sorted({SOURCES[s].modality for s in sources})


def _fresh_modalities(cfg: TrainConfig, used: list[str]) -> list[str]:
    """The modality classes of a fresh named model: those of every source the run uses and of the configured
    prior sources (also when this run has no prior phase: the classifier keeps every class it was trained
    on). A checkpoint whose classifier is copied -- ``init_priors`` (its tower must match exactly), else
    ``init_weights`` -- gives its own list instead when that covers the sources the run uses, so the
    classifier is not restarted at random (run 17, 2026-12-03, lost run 16's 6-class classifier that way)."""
    wanted = _modalities_of(list(dict.fromkeys(used + cfg.resolved_prior_sources())))
    source = cfg.init_priors or cfg.init_weights
    if source:
        src_cfg, _ = read_checkpoint_config(source)
        if set(_modalities_of(used)) <= set(src_cfg.modalities):
            return list(src_cfg.modalities)
    return wanted


def _init_label_sets(cfg: TrainConfig) -> set[str]:
    """The known label sets of ``cfg.init_weights``'s checkpoint (empty without one): a run on a subset of its
    sources keeps the others' heads (e.g. ``train_only`` one group of ``seg_head_groups``) instead of
    dropping them."""
    if not cfg.init_weights or cfg.model not in CONFIGS:
        return set()
    try:
        mcfg, _ = read_checkpoint_config(cfg.init_weights)
    except (CheckpointError, OSError):
        return set()  # _load_matching names the problem
    return {k for k in mcfg.label_sets if k in LABEL_SETS}


# ----------------------------------------------------------------------------- the run
def build_run(cfg: TrainConfig, ctx: DistContext, resume: bool) -> Run:
    """Check ``out_dir``, seed, build (or reload) the model, the datasets and the phases."""
    if not cfg.sources:
        raise ValueError("no training sources: set TrainConfig.sources (names in napari_vldun.data.SOURCES), "
                         "or train on ready-made datasets with iter_train(cfg, run_builder=make_run_builder(...))")
    _check_out_dir(cfg, ctx, resume)
    _seed_everything(cfg.seed)
    out = Path(cfg.out_dir)
    state, tensors = None, {}
    used = list(dict.fromkeys(cfg.sources + cfg.resolved_val_sources()
                              + (cfg.resolved_prior_sources() if cfg.prior_epochs > 0 else [])))
    label_sets = sorted(({SOURCES[s].label_set for s in cfg.sources} | _init_label_sets(cfg)) - {None},
                        key=lambda k: (k not in ("acdc", "brats2015", "covid_ct"), k))
    notes = []
    if resume:
        tensors, state, model, notes = _resume_model(cfg, out)
    elif cfg.model in CONFIGS:
        model = _named_model(cfg, _fresh_modalities(cfg, used), *_known_heads(label_sets))
    else:
        model = _checkpoint_model(cfg, {s: LABEL_SETS.get(s) for s in label_sets})
    modalities = list(model.cfg.modalities)
    missing = [m for m in _modalities_of(used) if m not in modalities]
    if missing:
        raise ValueError(f"the model knows the modalities {modalities}; the sources add {missing}")
    with_prior = cfg.prior_epochs > 0 and model.cfg.use_priors
    if cfg.prior_epochs > 0 and not with_prior:
        notes.append("prior phase skipped: the model has no CLIP priors (use_priors=false)")
    ds = _datasets(cfg, modalities, with_prior)
    phases = []
    if with_prior:
        phases.append(_phase("prior", cfg.prior_epochs, ds["prior"], cfg, ctx,
                             cfg.prior_steps_per_epoch or cfg.steps_per_epoch))
    phases.append(_phase("joint", cfg.epochs, ds["train"], cfg, ctx, cfg.steps_per_epoch))
    model = model.to(ctx.device).train()
    if state is not None:
        set_rng_state(tensors, state.get("rng", {}))
    return Run(model, ds["train"], ds["val"], ds.get("prior_val"), phases, used, state, tensors, notes)


def _dataset_heads(ds) -> tuple[dict, dict]:
    """(label set -> class names, label set -> colours) of a dataset: its ``label_classes`` /
    ``label_colors`` when it has them, else :data:`~napari_vldun.model.config.LABEL_SETS`."""
    classes = dict(getattr(ds, "label_classes", None) or {})
    colours = dict(getattr(ds, "label_colors", None) or {})
    known, known_colours = _known_heads([s for s in ds.label_sets if s not in classes])
    return {s: list(classes.get(s) or known[s]) for s in ds.label_sets}, {**known_colours, **colours}


def _describe(provenance: dict, train_ds, val_ds) -> str:
    pairs = provenance.get("pairs") or []
    shown = ", ".join(map(str, pairs[:6])) + (f", ... ({len(pairs)} in all)" if len(pairs) > 6 else "")
    return (f"trained on {provenance.get('origin', 'custom datasets')}"
            + (f" ({shown})" if shown else "") + f": {len(train_ds)} training / {len(val_ds)} validation slices")


def build_run_from_datasets(cfg: TrainConfig, ctx: DistContext, resume: bool, train_ds, val_ds, *,
                            label_sets: dict | None = None, label_colors: dict | None = None,
                            provenance: dict | None = None, notes=()) -> Run:
    """:func:`build_run` on ready-made datasets instead of ``cfg.sources`` (which may be empty).

    The datasets return :class:`~napari_vldun.data.SliceDataset`'s "joint" sample dict and have
    ``label_sets`` (the names ``label_set_index`` refers to) and ``modalities`` (the names the
    ``modality`` index refers to: set here to the model's list); optionally ``used_modalities``
    (the ones their samples use; default ``modalities``), ``label_classes`` / ``label_colors``
    (label set -> class names / colours; default :data:`~napari_vldun.model.config.LABEL_SETS`)
    and ``provenance`` (``{"origin": "napari layers" | "folders" | ..., "pairs": [names], ...}``),
    as :class:`~napari_vldun.data.PairsDataset` has. The keyword arguments override them.

    A fresh named model (``cfg.model`` = "tiny", ...) gets one head per label set of ``train_ds``
    and the config's modalities plus any the data adds; a checkpoint (``cfg.model`` = its path) must
    already have the heads (same class counts) and know the modalities; ``resume`` reloads
    ``out_dir/last``. Only the joint phase runs (``cfg.prior_epochs`` is ignored, with a note).
    The checkpoints record ``provenance`` under ``meta["data_provenance"]`` and its origin in
    ``meta["data_sources"]``.
    """
    for name, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
        for attr in ("label_sets", "modalities"):
            if not hasattr(ds, attr):
                raise TypeError(f"{name} has no {attr!r} attribute (see build_run_from_datasets)")
    if label_sets is not None:
        heads = {k: list(v) for k, v in label_sets.items()}
        colours = dict(getattr(train_ds, "label_colors", None) or {})
    else:
        heads, colours = _dataset_heads(train_ds)
    colours = {**colours, **(label_colors or {})}
    untrained = [s for s in val_ds.label_sets if s not in heads]
    if untrained:
        raise ValueError(f"the validation data has label sets {untrained} that the training data lacks")
    used = list(dict.fromkeys(list(getattr(train_ds, "used_modalities", train_ds.modalities))
                              + list(getattr(val_ds, "used_modalities", val_ds.modalities))))
    prov = dict(provenance or getattr(train_ds, "provenance", None) or {"origin": "custom datasets"})
    prov.setdefault("origin", "custom datasets")

    _check_out_dir(cfg, ctx, resume)
    _seed_everything(cfg.seed)
    out = Path(cfg.out_dir)
    state, tensors = None, {}
    resume_notes = []
    if resume:
        tensors, state, model, resume_notes = _resume_model(cfg, out)
        missing = [s for s in heads if s not in model.cfg.label_sets]
        if missing:
            raise ValueError(f"cannot resume {out}: it was trained on label set(s) {sorted(model.cfg.label_sets)}, "
                             f"not {missing}")
    elif cfg.model in CONFIGS:
        base = list(get_config(cfg.model, **cfg.model_overrides).modalities)
        model = _named_model(cfg, base + [m for m in used if m not in base], heads, colours)
    else:
        model = _checkpoint_model(cfg, heads)
    modalities = list(model.cfg.modalities)
    missing = [m for m in used if m not in modalities]
    if missing:
        raise ValueError(f"the model knows the modalities {modalities}; the data adds {missing}")
    for ds in (train_ds, val_ds):
        ds.modalities = list(modalities)
    run_notes = [_describe(prov, train_ds, val_ds), *resume_notes, *notes]
    if cfg.prior_epochs > 0:
        run_notes.append("prior phase skipped: ready-made datasets train the joint phase only")
    phases = [_phase("joint", cfg.epochs, train_ds, cfg, ctx, cfg.steps_per_epoch)]
    model = model.to(ctx.device).train()
    if state is not None:
        set_rng_state(tensors, state.get("rng", {}))
    return Run(model, train_ds, val_ds, None, phases, [str(prov["origin"])], state, tensors, run_notes, prov)


def make_run_builder(train_ds, val_ds, **kwargs):
    """``run_builder`` for :func:`~napari_vldun.train.iter_train` that trains on ``train_ds`` /
    ``val_ds`` (:func:`build_run_from_datasets` with ``kwargs``)::

        iter_train(cfg, run_builder=make_run_builder(train, val))
    """

    def run_builder(cfg: TrainConfig, ctx: DistContext, resume: bool) -> Run:
        return build_run_from_datasets(cfg, ctx, resume, train_ds, val_ds, **kwargs)

    return run_builder


def checkpoint_meta(trainer, name: str) -> dict:
    """What a checkpoint records beside the weights (JSON)."""
    cfg, m = trainer.cfg, unwrap(trainer.model).cfg
    run: Run = trainer.run_
    meta = {
        "kind": name,
        "train_config": cfg.to_dict(),
        "phase": trainer.pos.phase,
        "epoch": trainer.pos.epoch,
        "epoch_step": trainer.pos.epoch_step,
        "global_step": trainer.pos.global_step,
        "val_metrics": dict(trainer.best_metrics if name == "best" else trainer.last_val),
        "zero_filled": dict(trainer.zero_filled or {}),
        "best_metric": cfg.best_metric,
        "best_score": trainer.best_score if math.isfinite(trainer.best_score) else None,
        "label_sets": {k: {"classes": list(v), "colors": list(m.label_colors.get(k, []))}
                       for k, v in m.label_sets.items()},
        "modalities": list(m.modalities),
        "data_sources": {s: SOURCE_LICENSES.get(s, "licence not recorded (user data)") for s in run.sources_used},
        "train_sources": list(cfg.sources),
        "val_sources": cfg.resolved_val_sources(),
        "wall_s": round(trainer.wall_s, 2),
        "world_size": trainer.ctx.world_size,
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if run.provenance is not None:
        meta["data_provenance"] = dict(run.provenance)
    return meta


# public names for custom run builders (``iter_train(..., run_builder=...)``)
check_out_dir = _check_out_dir
check_resume_config = _check_resume_config
make_phase = _phase
