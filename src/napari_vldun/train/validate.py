"""Validation passes of the two training phases, sharded over data-parallel ranks.

Every rank evaluates the items ``rank, rank + world, ...`` of the validation set; per-item sums and
counts are all-reduced, so every rank reports the same numbers (equal to a single-process run).

Joint metrics (``restored`` and the degraded input clamped to [0, 1]):

* ``val_psnr`` / ``val_ssim``: mean over slices (needs the rec head), after data consistency when asked;
  then also ``val_psnr_free``, the network's estimate before it (as for a magnitude image without k-space);
* ``val_dice_<set>`` / ``val_iou_<set>``: mean over the labelled slices of that label set whose
  ground truth has a foreground class (:func:`~napari_vldun.metrics.dice`: mean over the
  classes present); ``val_dice`` / ``val_iou``: mean over the label sets (macro average);
* ``zero_filled_psnr`` / ``zero_filled_ssim``: the degraded input itself (computed on request);
* ``score`` = ``val_psnr / 40 + val_dice`` (a missing part counts 0).

Prior metrics: ``val_modality_acc``, ``val_degradation_acc`` (top-1), ``val_prior_loss``.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from ..data.datasets import batch_to, collate_for
from ..metrics import dice, iou, psnr, ssim
from .distributed import DistContext, all_reduce_sums

__all__ = ["measured", "validate_joint", "validate_prior", "score_of"]


def measured(batch: dict, enabled: bool = True, device: torch.device | None = None) -> dict:
    """The data-consistency arguments of a model call: ``{"kspace", "mask"}`` from the batch (on
    ``device`` when given) when ``enabled`` and the batch carries them, else ``{}``."""
    if not (enabled and "kspace" in batch and "mask" in batch):
        return {}
    return {k: (batch[k] if device is None else batch[k].to(device)) for k in ("kspace", "mask")}


def _loader(dataset, batch_size: int, ctx: DistContext) -> DataLoader:
    idx = list(range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=idx, num_workers=0, collate_fn=collate_for(dataset))


def score_of(metrics: dict) -> float:
    """``val_psnr / 40 + val_dice`` (either part 0 when missing or NaN)."""
    p = metrics.get("val_psnr", math.nan)
    d = metrics.get("val_dice", math.nan)
    return (0.0 if math.isnan(p) else p / 40.0) + (0.0 if math.isnan(d) else d)


@torch.no_grad()
def validate_joint(model, dataset, ctx: DistContext, batch_size: int, zero_filled: bool = False,
                   data_consistency: bool = False) -> dict:
    """Validation metrics of the joint task (see the module docstring). ``model`` unwrapped;
    ``data_consistency``: pass the samples' measured k-space to the model."""
    was_training = model.training
    model.eval()
    heads = dict(model.cfg.label_sets)
    sets = [s for s in dataset.label_sets if s in heads]
    sums: dict[str, float] = {"n": 0.0, "psnr": 0.0, "ssim": 0.0, "zf_psnr": 0.0, "zf_ssim": 0.0, "free_psnr": 0.0}
    for s in sets:
        sums.update({f"dice/{s}": 0.0, f"iou/{s}": 0.0, f"n/{s}": 0.0})
    for batch in _loader(dataset, batch_size, ctx):
        y = batch["degraded"].to(ctx.device)
        clean = batch["clean"]
        out = model(y, **measured(batch, data_consistency, ctx.device))
        sums["n"] += len(y)
        if out.restored is not None:
            rest = out.restored.float().clamp(0, 1).cpu()
            sums["psnr"] += float(psnr(rest, clean, reduction="none").sum())
            sums["ssim"] += float(ssim(rest, clean, reduction="none").sum())
            free = out.restored_free if out.restored_free is not None else out.restored
            if data_consistency and model.cfg.stage_feedback:
                free = model(y).restored  # with feedback, the estimate before DC saw DC: run without k-space
            sums["free_psnr"] = sums.get("free_psnr", 0.0) + float(
                psnr(free.float().clamp(0, 1).cpu(), clean, reduction="none").sum())
        if zero_filled:
            zf = batch["degraded"].clamp(0, 1)
            sums["zf_psnr"] += float(psnr(zf, clean, reduction="none").sum())
            sums["zf_ssim"] += float(ssim(zf, clean, reduction="none").sum())
        for j in range(len(y)):
            k = int(batch["label_set_index"][j])
            if not bool(batch["has_label"][j]) or k < 0:
                continue
            name = dataset.label_sets[k]
            if name not in out.seg_logits:
                continue
            pred = out.seg_logits[name][j].argmax(0).cpu()
            n_cls = len(heads[name])
            d = dice(pred, batch["label"][j], n_cls)
            if math.isnan(d):
                continue  # no foreground in the ground truth: Dice undefined
            sums[f"dice/{name}"] += d
            sums[f"iou/{name}"] += iou(pred, batch["label"][j], n_cls)
            sums[f"n/{name}"] += 1
    sums = all_reduce_sums(sums, ctx)
    model.train(was_training)
    n = max(sums["n"], 1.0)
    m: dict[str, float] = {}
    if model.cfg.rec_head:
        m["val_psnr"] = sums["psnr"] / n
        m["val_ssim"] = sums["ssim"] / n
        if data_consistency:
            m["val_psnr_free"] = sums["free_psnr"] / n
    dices, ious = [], []
    for s in sets:
        if sums[f"n/{s}"] > 0:
            m[f"val_dice_{s}"] = sums[f"dice/{s}"] / sums[f"n/{s}"]
            m[f"val_iou_{s}"] = sums[f"iou/{s}"] / sums[f"n/{s}"]
            dices.append(m[f"val_dice_{s}"])
            ious.append(m[f"val_iou_{s}"])
    if dices:
        m["val_dice"] = sum(dices) / len(dices)
        m["val_iou"] = sum(ious) / len(ious)
    if zero_filled:
        m["zero_filled_psnr"] = sums["zf_psnr"] / n
        m["zero_filled_ssim"] = sums["zf_ssim"] / n
    m["val_slices"] = int(sums["n"])
    m["score"] = score_of(m)
    return m


@torch.no_grad()
def validate_prior(priors, dataset, ctx: DistContext, batch_size: int, loss_fn) -> dict:
    """Top-1 accuracies of the modality and degradation priors and the mean prior loss."""
    was_training = priors.training
    priors.eval()
    sums = {"n": 0.0, "mod": 0.0, "deg": 0.0, "loss": 0.0}
    for batch in _loader(dataset, batch_size, ctx):
        batch = batch_to(batch, ctx.device)
        out = priors(batch["degraded"])
        mod, deg = batch["modality"], batch["degradation"]
        sums["n"] += len(mod)
        sums["mod"] += float((out.modality_logits.argmax(1) == mod).sum())
        sums["deg"] += float((out.degradation_logits.argmax(1) == deg).sum())
        sums["loss"] += float(loss_fn(out, batch)["total"]) * len(mod)
    sums = all_reduce_sums(sums, ctx)
    priors.train(was_training)
    n = max(sums["n"], 1.0)
    return {"val_modality_acc": sums["mod"] / n, "val_degradation_acc": sums["deg"] / n,
            "val_prior_loss": sums["loss"] / n, "val_slices": int(sums["n"])}
