"""The training loop: a generator of :class:`TrainEvent` that the CLI and the napari widget consume.

``iter_train(cfg)`` runs the phases of :class:`~napari_vldun.train.config.TrainConfig` (``prior``:
CLIP fine-tuning, then ``joint``: restoration + segmentation), validating and checkpointing after
every epoch::

    start -> (step ... step -> epoch -> checkpoint [-> checkpoint]) per epoch ... -> done
                                                        (or ... step -> stopped when asked to stop)

Files in ``out_dir`` (no pickle): ``last.safetensors`` + ``last.json`` (model checkpoint, readable
by :func:`~napari_vldun.model.checkpoint.load_checkpoint`), ``last.state.safetensors`` +
``last.state.json`` (optimizer moments, RNG states, position, best score: what ``resume=True``
needs to continue exactly), and ``best.safetensors`` + ``best.json`` whenever the best metric of
the joint phase improves. Each set is written as one unit with a ``NAME.manifest.json`` of checksums
(:func:`~napari_vldun.train.state.write_checkpoint_set`); ``resume`` takes the newest complete set.
Under ``torchrun`` the loop is data-parallel (see
:mod:`~napari_vldun.train.distributed`); only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import set_loader_epoch
from ..data.datasets import batch_to, collate_for
from ..model.precision import autocast
from .config import TrainConfig
from .distributed import DistContext, any_rank, setup, teardown, unwrap, wrap_model
from .losses import JointLoss, PriorLoss
from .setup import RunExistsError, build_run, checkpoint_meta, run_lock
from .state import (load_optimizer_state, optimizer_state, rng_state, save_state, write_checkpoint_set)
from .validate import measured, validate_joint, validate_prior

__all__ = ["TrainEvent", "EventKind", "EVENT_KINDS", "iter_train", "fit_batch", "RunExistsError"]


class EventKind(str, Enum):
    """What a :class:`TrainEvent` reports. A ``str`` enum: ``EventKind.DONE == "done"``, and it
    serialises as its value; comparing with a member (not a literal) makes a typo an AttributeError."""

    START = "start"
    STEP = "step"
    EPOCH = "epoch"
    CHECKPOINT = "checkpoint"
    STOPPED = "stopped"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


EVENT_KINDS = tuple(k.value for k in EventKind)


@dataclass
class TrainEvent:
    """One thing that happened. ``epoch`` is 1-based within ``phase`` ("prior" | "joint");
    ``step`` counts optimiser steps over the whole run (both phases), ``total_steps`` is the
    planned total; ``epoch_step`` / ``epoch_steps`` locate a step inside its epoch.

    ``metrics``: step -> ``loss`` (total) and its terms (``rec``, ``stage``, ``seg``, ``modality``,
    ``degradation``), ``lr``, ``samples_per_s``; epoch -> ``train_*`` means, validation metrics
    (:mod:`~napari_vldun.train.validate`), ``zero_filled_*`` the first time; checkpoint -> ``name``
    ("last" | "best"); done -> ``best`` / ``last`` paths, ``best_score``, ``wall_s``.
    """

    kind: EventKind
    phase: str
    epoch: int
    step: int
    total_steps: int
    metrics: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    epochs: int = 0
    epoch_step: int = 0
    epoch_steps: int = 0
    rank: int = 0
    #: the trained (unwrapped) model, on "done" and "stopped" events only.
    model: object = field(default=None, repr=False)


@dataclass
class Position:
    """Where the run stands: ``epoch`` (0-based) of ``phase`` in progress, ``epoch_step`` steps
    of it done; ``phase_step`` steps done in the phase (for the LR schedule)."""

    phase: str = "prior"
    epoch: int = 0
    epoch_step: int = 0
    phase_step: int = 0
    global_step: int = 0


_PHASE_ORDER = ("prior", "joint")


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _touch(output, params=()) -> torch.Tensor | int:
    """0 * (sum of every output tensor that needs a gradient, and of one element of each of ``params``):
    every parameter that produced an output, and every trainable one, gets a (zero) gradient, so DDP never
    waits for a head the loss did not use (e.g. the head of a label set absent from this rank's batch) or
    a parameter this step's forward did not reach (the mask-kind step factors on a step without k-space),
    and single-process runs behave the same."""
    parts = [t.sum() for t in _tensors(output) if t.requires_grad]
    parts += [p[(0,) * p.ndim] for p in params if p.requires_grad and p.numel()]
    return 0.0 * sum(parts) if parts else 0


def fit_batch(model, batch: dict, loss_fn, steps: int = 15, lr: float = 2e-3,
              weight_decay: float = 0.0, return_stages: bool = True, data_consistency: bool = True) -> list[float]:
    """Overfit ``model`` on one ``batch`` with AdamW for ``steps`` steps; returns the total loss
    measured at each step (before its update). A sanity check that the losses can be optimised."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        out = model(batch["degraded"], return_stages=return_stages, **measured(batch, data_consistency))
        total = loss_fn(out, batch)["total"] + _touch(out)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    return losses


class Trainer:
    """Owns the model, data, optimiser and position of one run; :meth:`run` yields the events."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, resume: bool, stop: threading.Event | None,
                 run_builder=None):
        self.cfg, self.ctx, self.stop = cfg, ctx, stop
        self.out_dir = Path(cfg.out_dir)
        # datasets, model, resume state (setup.build_run, looked up at call time, or a custom builder)
        self.run_ = (run_builder or build_run)(cfg, ctx, resume)
        r = self.run_
        self.model = r.model
        self.pos: Position = Position(**r.state["position"]) if r.state else Position()
        saved_best = r.state.get("best_score") if r.state else None
        self.best_score = -math.inf if saved_best is None else float(saved_best)
        self.best_metrics: dict = r.state.get("best_metrics", {}) if r.state else {}
        self.last_val: dict = r.state.get("last_val", {}) if r.state else {}
        self.history: list = r.state.get("history", []) if r.state else []
        self.wall0 = float(r.state.get("wall_s", 0.0)) if r.state else 0.0
        self.t0 = time.time()
        self.zero_filled: dict | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.opt_phase: str | None = None
        self.unsaved = False
        self._warned_metric = False
        m = self.model.cfg
        self.joint_loss = JointLoss(r.train_ds.label_sets, cfg.lambda_seg, cfg.stage_weight, cfg.w_mod, cfg.w_deg,
                                    cfg.rec_loss, cfg.focal_alpha, cfg.focal_gamma, rec_weight=cfg.rec_weight,
                                    free_weight=cfg.free_weight, stage_monotone=cfg.stage_monotone,
                                    monotone_metric=cfg.monotone_metric,
                                    monotone_margin_db=cfg.monotone_margin_db)
        self.prior_loss = PriorLoss(1.0, 1.0, cfg.focal_alpha, cfg.focal_gamma)
        self.need_stages = bool(m.rec_head and cfg.stage_weight > 0)
        self.total_steps = sum(p.epochs * p.steps for p in r.phases)

    # ------------------------------------------------------------------ helpers
    def _dc_step(self) -> bool:
        """Does this joint step give the network its k-space? (``dc_fraction``, drawn from (seed, step).)"""
        cfg = self.cfg
        if not cfg.data_consistency or cfg.dc_fraction <= 0:
            return False
        if cfg.dc_fraction >= 1:
            return True
        return bool(np.random.default_rng([cfg.seed, self.pos.global_step]).random() < cfg.dc_fraction)

    @property
    def wall_s(self) -> float:
        return self.wall0 + time.time() - self.t0

    def _event(self, kind: EventKind, phase: str = "", metrics: dict | None = None, checkpoint: Path | None = None,
               epochs: int = 0, epoch_steps: int = 0, epoch: int | None = None, model=None) -> TrainEvent:
        p = self.pos
        if epoch is None:  # 1-based: the epoch in progress, or the one just completed
            epoch = p.epoch + 1 if (kind == EventKind.STEP or p.epoch_step > 0) else p.epoch
        return TrainEvent(kind, phase or p.phase, epoch, p.global_step, self.total_steps, metrics or {},
                          checkpoint, epochs, p.epoch_step, epoch_steps, self.ctx.rank, model)

    def _stop_requested(self) -> bool:
        return any_rank(self.stop is not None and self.stop.is_set(), self.ctx)

    def _lr(self, base: float, phase_step: int, phase_total: int) -> float:
        w = self.cfg.warmup_steps
        if w and phase_step < w:
            return base * (phase_step + 1) / w
        t = min(1.0, (phase_step - w) / max(1, phase_total - w))
        r = self.cfg.min_lr_ratio
        return base * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def _set_trainable(self, phase: str) -> torch.nn.Module:
        """requires_grad for ``phase``; returns the module the phase runs forward on."""
        m = self.model
        for p in m.parameters():
            p.requires_grad_(False)
        if phase == "prior":
            pri = m.priors
            for p in list(pri.visual.parameters()) + list(pri.classifier.parameters()) + [pri.logit_scale]:
                p.requires_grad_(True)
            self._restrict_to_train_only(m, phase)
            return pri
        for p in m.parameters():
            p.requires_grad_(True)
        if m.cfg.use_priors and not self.cfg.train_clip_in_joint:
            # the stage-1 priors stay as fine-tuned: the modality classifier and the similarity
            # scale feed the prior tokens and would otherwise drift with the joint loss, unless
            # the joint loss itself keeps training them (w_mod, w_deg > 0)
            pri = m.priors
            frozen = list(pri.visual.parameters())
            frozen += [] if self.cfg.w_mod > 0 else list(pri.classifier.parameters())
            frozen += [] if self.cfg.w_deg > 0 else [pri.logit_scale]
            for p in frozen:
                p.requires_grad_(False)
        self._restrict_to_train_only(m, phase)
        return m

    def _restrict_to_train_only(self, m: torch.nn.Module, phase: str) -> None:
        """Freeze every parameter whose name (in the whole model, e.g. ``priors.classifier.weight``) does not
        start with a ``train_only`` prefix; in the prior phase only the tower's own parameters can train."""
        if not self.cfg.train_only:
            return
        prefixes = tuple(self.cfg.train_only)
        keep = [n for n, p in m.named_parameters() if n.startswith(prefixes) and p.requires_grad]
        if not keep:
            raise ValueError(f"train_only {list(prefixes)} matches no parameter the {phase} phase trains")
        for n, p in m.named_parameters():
            if not n.startswith(prefixes):
                p.requires_grad_(False)

    def _make_optimizer(self, phase: str) -> torch.optim.Optimizer:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.ndim >= 2]
        no_decay = [p for n, p in named if p.ndim < 2]
        lr = self.cfg.prior_lr if (phase == "prior" and self.cfg.prior_lr) else self.cfg.lr
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)

    def _epoch_loader(self, spec, epoch: int, skip: int) -> DataLoader:
        """This rank's batches of ``epoch`` (a pure function of seed and epoch), minus the first ``skip``."""
        loader, bs = spec.loader, self.cfg.batch_size
        set_loader_epoch(loader, epoch)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(self.cfg.seed + epoch)  # non-distributed shuffle order
        idx = list(loader.sampler)[: spec.steps * bs]
        gen = torch.Generator().manual_seed(self.cfg.seed + epoch)  # keeps the global RNG untouched
        return DataLoader(spec.dataset, batch_size=bs, sampler=idx[skip * bs:], num_workers=self.cfg.num_workers,
                          drop_last=True, generator=gen, pin_memory=self.ctx.device.type == "cuda",
                          collate_fn=collate_for(spec.dataset))

    # ------------------------------------------------------------------ checkpoints
    def _save(self, name: str) -> Path:
        from ..model.checkpoint import save_checkpoint  # lazy: tests patch model.checkpoint.save_checkpoint

        path = self.out_dir / name
        if not self.ctx.is_main:
            return path

        def write(prefix: Path) -> None:  # the files of the set, into its staging folder
            if name == "last":
                tensors, rng_doc = rng_state()
                doc = {"position": dataclasses.asdict(self.pos), "opt_phase": self.opt_phase,
                       "best_score": self.best_score if math.isfinite(self.best_score) else None,
                       "best_metrics": self.best_metrics, "last_val": self.last_val, "history": self.history,
                       "wall_s": self.wall_s, "rng": rng_doc, "train_config": self.cfg.to_dict()}
                if self.opt is not None:
                    opt_t, opt_doc = optimizer_state(self.opt)
                    tensors.update(opt_t)
                    doc["optimizer"] = opt_doc
                save_state(prefix, tensors, doc)
            save_checkpoint(self.model, prefix, checkpoint_meta(self, name))

        write_checkpoint_set(path, self.pos.global_step, write)  # one unit: see state.write_checkpoint_set
        if name == "last":
            self.unsaved = False
        return path

    def _metric(self, metrics: dict) -> float:
        key = self.cfg.best_metric
        if key not in metrics:
            if not self._warned_metric and self.ctx.is_main:
                import warnings

                warnings.warn(f"best_metric {key!r} is not among the validation metrics "
                              f"{sorted(metrics)}; using 'score'", stacklevel=2)
            self._warned_metric = True
            key = "score"
        v = float(metrics.get(key, math.nan))
        return -math.inf if math.isnan(v) else v

    # ------------------------------------------------------------------ the run
    def run(self) -> Iterator[TrainEvent]:
        r = self.run_
        try:
            yield self._event(EventKind.START, metrics=r.start_info(self))
            for spec in r.phases:
                if _PHASE_ORDER.index(spec.name) < _PHASE_ORDER.index(self.pos.phase):
                    continue
                if spec.epochs == 0:
                    continue  # nothing to train (e.g. a prior-only run: "epochs": 0)
                if spec.name != self.pos.phase:
                    self.pos = Position(spec.name, 0, 0, 0, self.pos.global_step)
                stopped = yield from self._run_phase(spec)
                if stopped:
                    return
            self.ctx.barrier()
            self.model.eval()
            yield self._event(EventKind.DONE, phase=self.pos.phase, metrics={
                "best": str(self.out_dir / "best") if math.isfinite(self.best_score) else None,
                "last": str(self.out_dir / "last"), "best_score": self.best_score,
                "best_metrics": self.best_metrics, "last_metrics": self.last_val, "wall_s": self.wall_s},
                model=self.model)
        except GeneratorExit:
            if self.unsaved:
                self._save("last")  # closed from outside: keep what was trained
            raise

    def _run_phase(self, spec) -> Iterator[TrainEvent]:
        cfg, ctx = self.cfg, self.ctx
        module = self._set_trainable(spec.name)
        ddp = wrap_model(module, ctx)
        self.opt = self._make_optimizer(spec.name)
        saved = self.run_.state
        if saved and saved.get("opt_phase") == spec.name and "optimizer" in saved and self.pos.phase_step > 0:
            load_optimizer_state(self.opt, self.run_.state_tensors, saved["optimizer"])
        self.opt_phase = spec.name
        base_lr = cfg.prior_lr if (spec.name == "prior" and cfg.prior_lr) else cfg.lr
        phase_total = spec.epochs * spec.steps
        params = [p for p in module.parameters() if p.requires_grad]
        bs_global = cfg.batch_size * ctx.world_size
        while self.pos.epoch < spec.epochs:
            ep = self.pos.epoch
            module.train()
            loader = self._epoch_loader(spec, ep, self.pos.epoch_step)
            sums: dict[str, float] = {}
            n_steps, t_epoch = 0, time.time()
            for batch in loader:
                t = time.time()
                lr = self._lr(base_lr, self.pos.phase_step, phase_total)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                batch = batch_to(batch, ctx.device)
                if spec.name == "prior":
                    with autocast(ctx.device, cfg.precision):
                        out = ddp(batch["degraded"])
                    terms = self.prior_loss(out, batch)
                else:
                    with autocast(ctx.device, cfg.precision):
                        out = ddp(batch["degraded"], return_stages=self.need_stages,
                                  **measured(batch, self._dc_step()))
                    terms = self.joint_loss(out, batch)
                self.opt.zero_grad(set_to_none=True)
                (terms["total"] + _touch(out, params)).backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.opt.step()
                self.pos.epoch_step += 1
                self.pos.phase_step += 1
                self.pos.global_step += 1
                self.unsaved = True
                vals = {k: float(v.detach()) for k, v in terms.items()}
                vals["loss"] = vals.pop("total")
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_steps += 1
                dt = time.time() - t
                last_of_epoch = self.pos.epoch_step >= spec.steps
                if self.pos.global_step % cfg.log_every == 0 or last_of_epoch:
                    yield self._event(EventKind.STEP, spec.name, {**vals, "lr": lr, "samples_per_s": bs_global / max(dt, 1e-9),
                                                          "step_time_s": dt}, epochs=spec.epochs, epoch_steps=spec.steps)
                if not last_of_epoch and self._stop_requested():
                    path = self._save("last")
                    yield self._event(EventKind.STOPPED, spec.name, {"reason": "stop requested", "wall_s": self.wall_s},
                                      path, spec.epochs, spec.steps, model=self.model)
                    return True
            # ---- end of epoch: validate, checkpoint
            train = {f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()}
            epoch_time = time.time() - t_epoch
            val = self._validate(spec.name)
            self.last_val = val
            self.pos.epoch += 1
            self.pos.epoch_step = 0
            metrics = {**train, **val, "epoch_time_s": epoch_time,
                       "samples_per_s": n_steps * bs_global / max(epoch_time, 1e-9)}
            self.history.append({"phase": spec.name, "epoch": self.pos.epoch, "step": self.pos.global_step,
                                 **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
            improved = spec.name == "joint" and self._metric(val) > self.best_score
            if improved:
                self.best_score = self._metric(val)
                self.best_metrics = dict(val)
            # write the files before yielding, so a consumer that closes the generator at any event
            # leaves `last` (and `best`) consistent with the state saved beside them
            # `best` first: a kill between the two leaves `last` older, and redoing the epoch rewrites `best`
            written = [(name, self._save(name)) for name in (("best", "last") if improved else ("last",))][::-1]
            yield self._event(EventKind.EPOCH, spec.name, metrics, epochs=spec.epochs, epoch_steps=spec.steps)
            for name, path in written:
                yield self._event(EventKind.CHECKPOINT, spec.name, {"name": name, "score": val.get("score")}, path,
                                  spec.epochs, spec.steps)
            if self._stop_requested() and (self.pos.epoch < spec.epochs or spec.name != self.run_.phases[-1].name):
                yield self._event(EventKind.STOPPED, spec.name, {"reason": "stop requested", "wall_s": self.wall_s},
                                  self.out_dir / "last", spec.epochs, spec.steps, model=self.model)
                return True
        return False

    def _validate(self, phase: str) -> dict:
        r, bs = self.run_, self.cfg.batch_size
        with autocast(self.ctx.device, self.cfg.precision):
            if phase == "prior":
                return validate_prior(self.model.priors, r.prior_val_ds, self.ctx, bs, self.prior_loss)
            first = self.zero_filled is None
            m = validate_joint(self.model, r.val_ds, self.ctx, bs, zero_filled=first,
                               data_consistency=self.cfg.data_consistency)
        if first:
            self.zero_filled = {k: v for k, v in m.items() if k.startswith("zero_filled_")}
        return m


def iter_train(cfg: TrainConfig | str | Path, *, resume: bool = False,
               stop: threading.Event | None = None, run_builder=None) -> Iterator[TrainEvent]:
    """Train VL-DUN as ``cfg`` says, yielding :class:`TrainEvent` s (see the module docstring).

    ``resume=True`` continues the run saved in ``cfg.out_dir/last`` exactly where it stopped
    (same next losses as an uninterrupted run). Setting ``stop`` (or closing the generator) ends
    training after the current step and writes ``last`` ("stopped" is yielded for ``stop``).
    Raises :class:`RunExistsError` when ``out_dir`` holds a checkpoint and neither ``resume`` nor
    ``cfg.overwrite`` is set, :class:`~napari_vldun.io.lock.OutputLockedError` when another run writes there. Under ``torchrun`` every rank runs this generator (data-parallel).

    ``run_builder(cfg, ctx, resume) -> setup.Run`` replaces :func:`~.setup.build_run` to train on
    other data: :func:`~.setup.make_run_builder` ``(train_ds, val_ds)`` makes one for ready-made
    datasets (e.g. :class:`~napari_vldun.data.PairsDataset` of napari layers; ``cfg.sources`` may
    then be empty). A custom one must do the out_dir checks (``setup.check_out_dir``), build the
    model, the datasets (SliceDataset's sample dict, ``label_sets`` / ``modalities`` attributes)
    and the phases (``setup.make_phase``), and load the resume state.
    """
    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_file(cfg)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    ctx = setup(cfg.device)
    try:
        with run_lock(cfg, ctx):  # one run per out_dir: a second one is refused naming this one's pid
            trainer = Trainer(cfg, ctx, resume, stop, run_builder)
            yield from trainer.run()
    finally:
        teardown(ctx)
