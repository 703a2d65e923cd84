"""Everything a run needs before its first step: out_dir checks, datasets, loaders, model, resume state.

The model's ``modalities`` are the sorted modality names of every source the run uses (training,
prior and validation sources), so that the datasets' ``modality`` indices and the model's classifier
agree; its ``label_sets`` are the label sets of the joint-phase training sources (class names and
colours from :data:`~napari_vldun.model.config.LABEL_SETS` / ``LABEL_COLORS``).
"""

from __future__ import annotations

import math
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import IMMUTABLE_ON_RESUME, SOURCE_LICENSES, TrainConfig
from .distributed import DistContext

__all__ = ["RunExistsError", "PhaseSpec", "Run", "build_run", "checkpoint_meta", "check_out_dir", "make_phase",
           "check_resume_config", "CHECKPOINT_NAMES"]

#: Files a run owns in ``out_dir`` (NAME.safetensors / NAME.json, plus the resume state of "last").
CHECKPOINT_NAMES = ("last", "best")
_RUN_FILES = ("last.safetensors", "last.json", "last.state.safetensors", "last.state.json",
              "best.safetensors", "best.json")


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
def _check_out_dir(cfg: TrainConfig, ctx: DistContext, resume: bool) -> None:
    out = Path(cfg.out_dir)
    present = [f for f in _RUN_FILES if (out / f).exists()]
    if resume:
        if not (out / "last.json").is_file() or not (out / "last.state.json").is_file():
            raise FileNotFoundError(f"cannot resume: {out} holds no 'last' checkpoint with its training state "
                                    "(last.json + last.state.json); start without resume")
        return
    if present and not cfg.overwrite:
        raise RunExistsError(
            f"out_dir {out} already holds a training run ({', '.join(present)}); resume it (resume=True / "
            "--resume), set overwrite=true to replace it, or choose another out_dir")
    ctx.barrier()  # every rank has checked before rank 0 deletes
    if present and ctx.is_main:
        for f in present:
            (out / f).unlink(missing_ok=True)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()


def _check_resume_config(cfg: TrainConfig, saved: dict, where: Path) -> None:
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
def _named_model(cfg: TrainConfig, modalities: list[str], label_sets: list[str]):
    from ..model import build_model, get_config
    from ..model.config import LABEL_COLORS, LABEL_SETS

    mcfg = get_config(cfg.model, **cfg.model_overrides)
    unknown = [s for s in label_sets if s not in LABEL_SETS]
    if unknown:
        raise ValueError(f"label sets {unknown} have no class names in model.config.LABEL_SETS")
    mcfg = mcfg.replace(
        modalities=tuple(modalities),
        label_sets={k: list(LABEL_SETS[k]) for k in label_sets},
        label_colors={k: list(LABEL_COLORS[k]) for k in label_sets if k in LABEL_COLORS},
    )
    model = build_model(mcfg, seed=cfg.seed)
    if cfg.zero_init_residual:
        with torch.no_grad():
            for conv in [model.rec_head, *model.to_image]:
                if conv is not None:
                    conv.weight.zero_()
                    conv.bias.zero_()
    return model


def _checkpoint_model(cfg: TrainConfig, label_sets: list[str]):
    from ..model.checkpoint import checkpoint_paths, load_checkpoint
    from ..model.config import LABEL_SETS

    wpath, cpath = checkpoint_paths(cfg.model)
    if not cpath.is_file():
        raise ValueError(f"model {cfg.model!r} is neither a named config ('tiny', 'paper') nor a checkpoint "
                         f"({cpath} not found)")
    if cfg.model_overrides:
        raise ValueError("model_overrides cannot change the architecture of a checkpoint; "
                         f"remove them or start from a named config instead of {cfg.model!r}")
    model, _ = load_checkpoint(cfg.model, "cpu")
    missing = [s for s in label_sets if s not in model.cfg.label_sets]
    if missing:
        raise ValueError(f"checkpoint {wpath} has no segmentation head for the label sets {missing} of the "
                         f"training sources (it has {sorted(model.cfg.label_sets)})")
    for s in label_sets:
        if s in LABEL_SETS and len(model.cfg.label_sets[s]) != len(LABEL_SETS[s]):
            raise ValueError(f"checkpoint {wpath}: label set {s!r} has {len(model.cfg.label_sets[s])} classes, "
                             f"the data has {len(LABEL_SETS[s])}")
    return model


# ----------------------------------------------------------------------------- data
def _datasets(cfg: TrainConfig, modalities: list[str], with_prior: bool) -> dict:
    from ..data import SliceDataset

    accel = ({k: tuple(v) for k, v in cfg.accel_range.items()} if isinstance(cfg.accel_range, dict)
             else tuple(cfg.accel_range))
    common = dict(root=cfg.data_root, accel_range=accel, center_fraction=cfg.center_fraction,
                  noise_sigma_range=tuple(cfg.noise_sigma_range), seed=cfg.seed, modalities=modalities)
    val_crop = cfg.val_crop or cfg.crop
    ds = {
        "train": SliceDataset(cfg.sources, "train", crop=cfg.crop, mode="joint",
                              max_slices_per_source=cfg.max_slices_per_source, augment=cfg.augment, **common),
        "val": SliceDataset(cfg.resolved_val_sources(), "val", crop=val_crop, mode="joint",
                            fixed_accel=cfg.val_accel, max_slices_per_source=cfg.val_max_slices, augment=False,
                            **common),
    }
    if with_prior:
        ps = cfg.resolved_prior_sources()
        ds["prior"] = SliceDataset(ps, "train", crop=cfg.crop, mode="prior",
                                   max_slices_per_source=cfg.max_slices_per_source, augment=cfg.augment, **common)
        ds["prior_val"] = SliceDataset(ps, "val", crop=val_crop, mode="prior",
                                       max_slices_per_source=cfg.val_max_slices, augment=False, **common)
    return ds


def _phase(name: str, epochs: int, dataset, cfg: TrainConfig, ctx: DistContext, steps_cap) -> PhaseSpec:
    from ..data import make_loader

    loader = make_loader(dataset, cfg.batch_size, shuffle=True, num_workers=0, distributed=ctx.distributed,
                         drop_last=True)
    n = len(loader)
    if n == 0 and epochs > 0:
        raise ValueError(f"{name} phase: {len(dataset)} training slices are fewer than batch_size="
                         f"{cfg.batch_size} x {ctx.world_size} process(es); lower batch_size or add data")
    return PhaseSpec(name, epochs, min(n, steps_cap) if steps_cap else n, dataset, loader)


def _modalities_of(sources: list[str]) -> list[str]:
    from ..data import SOURCES

    return sorted({SOURCES[s].modality for s in sources})


# ----------------------------------------------------------------------------- the run
def build_run(cfg: TrainConfig, ctx: DistContext, resume: bool) -> Run:
    """Check ``out_dir``, seed, build (or reload) the model, the datasets and the phases."""
    from ..data import SOURCES
    from ..model import CONFIGS
    from ..model.checkpoint import load_checkpoint, read_checkpoint_config
    from .state import load_state, set_rng_state

    _check_out_dir(cfg, ctx, resume)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    out = Path(cfg.out_dir)
    state, tensors = None, {}
    used = list(dict.fromkeys(cfg.sources + cfg.resolved_val_sources()
                              + (cfg.resolved_prior_sources() if cfg.prior_epochs > 0 else [])))
    label_sets = sorted({SOURCES[s].label_set for s in cfg.sources} - {None},
                        key=lambda k: (k not in ("acdc", "brats2015", "covid_ct"), k))
    if resume:
        tensors, state = load_state(out / "last")
        _check_resume_config(cfg, state.get("train_config", {}), out / "last.state.json")
        _, meta = read_checkpoint_config(out / "last")
        if meta.get("global_step") != state["position"]["global_step"]:
            raise ValueError(f"{out}: last checkpoint (step {meta.get('global_step')}) and its training state "
                             f"(step {state['position']['global_step']}) disagree (interrupted write?)")
        model, _ = load_checkpoint(out / "last", "cpu")
    elif cfg.model in CONFIGS:
        model = _named_model(cfg, _modalities_of(used), label_sets)
    else:
        model = _checkpoint_model(cfg, label_sets)
    modalities = list(model.cfg.modalities)
    missing = [m for m in _modalities_of(used) if m not in modalities]
    if missing:
        raise ValueError(f"the model knows the modalities {modalities}; the sources add {missing}")
    notes = []
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


def checkpoint_meta(trainer, name: str) -> dict:
    """What a checkpoint records beside the weights (JSON)."""
    from .distributed import unwrap

    cfg, m = trainer.cfg, unwrap(trainer.model).cfg
    run: Run = trainer.run_
    return {
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


# public names for custom run builders (``iter_train(..., run_builder=...)``)
check_out_dir = _check_out_dir
check_resume_config = _check_resume_config
make_phase = _phase
