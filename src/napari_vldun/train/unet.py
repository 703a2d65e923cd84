"""Training the plain U-Net baseline (:mod:`napari_vldun.model.unet`) on the same data as VL-DUN.

nnU-Net's recipe at a CPU budget: crops with two thirds centred on labelled pixels, flips/rotations and
gamma, Dice + CE, AdamW with a poly schedule, the degraded (zero-filled) image as input, the same seeded
undersampling as VL-DUN's joint phase. ``vldun train-unet --out DIR --steps N`` (``--minutes M`` stops
early, same CPU time as a VL-DUN run); ``vldun evaluate --unet DIR/unet`` adds its Dice row.

Restore-then-segment: with ``restored`` (a :func:`~napari_vldun.train.restored.cache_restored` folder) the
input is a frozen VL-DUN's restored image instead, and ``init`` starts from a trained U-Net; the result becomes
that checkpoint's segmentation head with ``scripts/attach_unet_head.py`` (:func:`~napari_vldun.model.vldun.attach_unet_head`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..data import SliceDataset
from ..data.datasets import make_loader, set_loader_epoch
from ..data.sources import SOURCES
from ..model.config import LABEL_SETS
from ..model.precision import autocast
from ..model.unet import UNet, UNetConfig, load_unet, save_unet
from .losses import DiceCELoss

__all__ = ["UNetTrainConfig", "iter_train_unet"]


@dataclass
class UNetTrainConfig:
    out_dir: str = "runs/unet"
    source: str = "acdc"
    steps: int = 2000
    #: stop (and save) after this many wall-clock minutes even if ``steps`` are not done; None: no cap.
    minutes: float | None = None
    crop: int = 128
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    foreground_oversample: float = 0.67
    accel_range: tuple = (2.0, 8.0)
    widths: tuple = (16, 32, 64, 128)
    seed: int = 0
    precision: str = "auto"
    threads: int | None = None
    #: a :func:`~napari_vldun.train.restored.cache_restored` folder: train on its restored slices (of ``source``)
    restored: str | None = None
    #: a U-Net checkpoint prefix (:func:`~napari_vldun.model.unet.save_unet`) to start from; same widths and classes
    init: str | None = None


def iter_train_unet(cfg: UNetTrainConfig) -> Iterator[dict]:
    """Train and yield ``{"step", "steps", "loss", "seconds"}`` after every step; the last event also has
    ``"checkpoint"`` (the saved ``out_dir/unet`` prefix). Stop iterating to stop (nothing is saved then)."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    spec = SOURCES.get(cfg.source)
    if spec is None or spec.label_set is None:
        raise ValueError(f"source {cfg.source!r} is not a labelled source; choose from "
                         f"{sorted(k for k, s in SOURCES.items() if s.label_set)}")
    torch.manual_seed(cfg.seed)
    if cfg.restored:
        from .restored import RestoredSliceDataset

        ds = RestoredSliceDataset(cfg.restored, crop=cfg.crop, seed=cfg.seed,
                                  foreground_oversample=cfg.foreground_oversample)
        if ds.source != cfg.source:
            raise ValueError(f"{cfg.restored} holds {ds.source!r} slices, not {cfg.source!r}")
    else:
        ds = SliceDataset([cfg.source], "train", crop=cfg.crop, seed=cfg.seed, accel_range=tuple(cfg.accel_range),
                          foreground_oversample=cfg.foreground_oversample, intensity_augment=True, augment=True)
    model = UNet(UNetConfig(tuple(cfg.widths), spec.label_set, list(LABEL_SETS[spec.label_set])))
    if cfg.init:
        start, _ = load_unet(cfg.init)
        if asdict(start.cfg) != asdict(model.cfg):
            raise ValueError(f"--init {cfg.init}: its U-Net ({asdict(start.cfg)}) differs from this run's "
                             f"({asdict(model.cfg)})")
        model.load_state_dict(start.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss()
    loader = make_loader(ds, cfg.batch_size, shuffle=True, drop_last=True)
    t0, step, epoch = time.time(), 0, 0
    model.train()
    while step < cfg.steps:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            for g in opt.param_groups:  # poly schedule (nnU-Net): lr (1 - t / T)^0.9
                g["lr"] = cfg.lr * (1 - step / cfg.steps) ** 0.9
            with autocast("cpu", cfg.precision):
                logits = model(batch["degraded"])
            loss = loss_fn(logits.float(), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.time() - t0
            done = step >= cfg.steps or (cfg.minutes is not None and elapsed > 60 * cfg.minutes)
            event = {"step": step, "steps": cfg.steps, "loss": float(loss.detach()), "seconds": round(elapsed, 1)}
            if done:
                event["checkpoint"] = str(save_unet(model.eval(), Path(cfg.out_dir) / "unet",
                                                    {"train_config": asdict(cfg), "steps_done": step,
                                                     "seconds": round(elapsed, 1)}))
                yield event
                return
            yield event
        epoch += 1
