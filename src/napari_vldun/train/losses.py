"""Training losses of VL-DUN (Sec. 3.3-3.4 of the paper).

* :class:`FocalLoss` -- the modality-prior objective, Eq. 3: ``-alpha (1 - p_t)^gamma log p_t``.
* :func:`degradation_contrastive_loss` -- the image-text contrastive loss of Sec. 3.3.3, i.e.
  cross-entropy over the (scaled) cosine similarities ``s_{i,k}`` to the K degradation prompts.
* :class:`DiceCELoss` -- soft Dice over the foreground classes + cross-entropy (segmentation).
* :class:`JointLoss` -- the stage-2 objective: restoration + segmentation (+ stage deep
  supervision, + optional prior terms), as a dict of named terms and their weighted ``total``.
* :class:`PriorLoss` -- the stage-1 objective: focal (modality) + contrastive CE (degradation).

Shapes: images ``(B, 1, H, W)`` float; logits ``(B, C, H, W)``; integer targets ``(B, H, W)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import ssim_map

__all__ = [
    "FocalLoss", "DiceCELoss", "degradation_contrastive_loss", "charbonnier", "ssim_l1", "monotone_hinge",
    "JointLoss", "PriorLoss", "REC_LOSSES", "MONOTONE_METRICS", "check_monotone",
]

#: reconstruction losses of :class:`JointLoss` (``rec_loss``).
REC_LOSSES = ("l1", "charbonnier", "ssim_l1")

#: weight of (1 - SSIM) in :func:`ssim_l1` (Zhao et al. 2017 use 0.84 with MS-SSIM).
SSIM_ALPHA = 0.84


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017; paper Eq. 3), averaged over the batch.

    ``logits`` (B, C) (or (B, C, ...)), ``target`` (B,) (or (B, ...)) int64 class indices.
    ``alpha``: a scalar weight for every class, a per-class sequence of C weights, or ``None``
    (no weighting). With ``gamma=0`` this is ``alpha * cross_entropy``.
    """

    def __init__(self, alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha is None or isinstance(alpha, (int, float)):
            self.alpha = None if alpha is None else float(alpha)
            self.register_buffer("class_alpha", None, persistent=False)
        else:
            self.alpha = None
            self.register_buffer("class_alpha", torch.as_tensor(list(alpha), dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        loss = -((1.0 - p_t).clamp(min=0.0) ** self.gamma) * logp_t
        if self.class_alpha is not None:
            loss = loss * self.class_alpha.to(loss.device)[target.long()]
        elif self.alpha is not None:
            loss = loss * self.alpha
        return loss.mean()


def degradation_contrastive_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Image-text contrastive loss of Sec. 3.3.3: cross-entropy over the similarity logits
    ``logit_scale * cos(E_v(y), E_t(prompt_k))`` (B, K) against the degradation index (B,)."""
    return F.cross_entropy(logits.float(), target.long())


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier (smooth L1) loss ``mean(sqrt((x - y)^2 + eps^2))``."""
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def ssim_l1(x: torch.Tensor, y: torch.Tensor, alpha: float = SSIM_ALPHA) -> torch.Tensor:
    """``alpha (1 - SSIM(x, y)) + (1 - alpha) L1(x, y)`` on (B, 1, H, W) images in [0, 1], computed in fp32
    (the SSIM of :func:`~napari_vldun.metrics.ssim`: Gaussian 11 px window, data range 1).
    Images smaller than the window get the L1 alone. E2E-VarNet trains on SSIM; the L1 keeps the
    intensities (SSIM alone is blind to a uniform offset in flat regions)."""
    x, y = x.float(), y.float()
    l1 = F.l1_loss(x, y)
    if min(x.shape[-2:]) < 11:
        return l1
    return alpha * (1.0 - ssim_map(x, y).mean()) + (1.0 - alpha) * l1


class DiceCELoss(nn.Module):
    """Soft Dice over the foreground classes (1..C-1) plus cross-entropy.

    ``logits`` (B, C, H, W), ``target`` (B, H, W) int64 in [0, C). The Dice is computed per class
    over the whole batch (sums over B, H, W), ``1 - (2 I + s) / (P + T + s)``, and averaged over the
    foreground classes; a class absent from both prediction and target scores ~0 loss. With C == 1
    there is no foreground and only the CE term remains. Returns ``dice_weight * dice + ce_weight * ce``.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.smooth = float(smooth)

    def dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        if c < 2:
            return logits.sum() * 0.0
        probs = logits.float().softmax(1)[:, 1:]
        onehot = F.one_hot(target.long(), c).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        return (1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"DiceCELoss: logits (B, C, H, W) and target (B, H, W) expected, got "
                             f"{tuple(logits.shape)} and {tuple(target.shape)}")
        ce = F.cross_entropy(logits.float(), target.long())
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce


#: what :func:`monotone_hinge` compares between consecutive stage estimates
MONOTONE_METRICS = ("l1", "psnr")


def check_monotone(metric: str, margin_db: float) -> None:
    """Raise ``ValueError`` naming the option unless ``metric`` is one of :data:`MONOTONE_METRICS` and
    ``margin_db`` is >= 0 (> 0 only with "psnr"). Shared by :func:`monotone_hinge` and the training config."""
    if metric not in MONOTONE_METRICS:
        raise ValueError(f"monotone_metric must be one of {MONOTONE_METRICS}, got {metric!r}")
    if float(margin_db) < 0 or (float(margin_db) > 0 and metric != "psnr"):
        raise ValueError(f"monotone_margin_db must be >= 0 and needs monotone_metric 'psnr', "
                         f"got {margin_db} with {metric!r}")


def monotone_hinge(estimates: Sequence[torch.Tensor], clean: torch.Tensor, metric: str = "l1",
                   margin_db: float = 0.0) -> torch.Tensor:
    """Mean over samples and consecutive stage pairs of how much estimate ``k`` (B, 1, H, W) is worse than
    estimate ``k - 1``, per sample; zero when no sample's error ever rises.

    ``metric`` "l1": ``relu(L1_k - L1_{k-1})``; "psnr": ``relu(ln MSE_k - ln MSE_{k-1})``, the fall in PSNR
    (1 dB = 0.23) that the "stages monotone" figure of ``vldun evaluate`` counts, independent of the image's
    error level. ``margin_db`` (psnr only, >= 0): each stage must gain at least this many dB over the previous
    one before the hinge is zero, ``relu(ln MSE_k - ln MSE_{k-1} + margin_db * ln(10) / 10)``: a safety margin
    so that validation slices, not only training crops, keep refining."""
    check_monotone(metric, margin_db)
    if metric == "l1":
        errs = torch.stack([(e.float() - clean).abs().flatten(1).mean(1) for e in estimates])  # (K, B)
    else:
        errs = torch.stack([(e.float() - clean).square().flatten(1).mean(1).clamp_min(1e-10).log()
                            for e in estimates])
    if len(estimates) < 2:
        return errs.sum() * 0.0
    return F.relu(errs[1:] - errs[:-1] + margin_db * math.log(10.0) / 10.0).mean()


class JointLoss(nn.Module):
    """The joint (stage-2) objective, as named terms plus their sum ``total``.

    * ``rec``  = ``rec_weight`` * L1 (or Charbonnier) between ``restored`` and ``clean`` (needs the rec head)
    * ``rec_free`` = ``rec_weight * free_weight`` * the same on ``restored_free``, the estimate before data
      consistency (only when the model was given k-space), so the network also restores on its own
    * ``stage`` = ``rec_weight * stage_weight`` * (mean over stages of L1(stage.full, clean) + ``stage_monotone``
      * :func:`monotone_hinge` on ``monotone_metric`` with ``monotone_margin_db``) (needs the rec head and ``output.stages``; deep supervision, so the stage
      viewer's maps are images that improve stage by stage)
    * ``seg``  = ``lambda_seg`` * DiceCE, per label set present in the batch, on that set's labelled
      samples only, averaged over label sets weighted by their sample counts. Absent when no sample
      of the batch has a label (or the model has no seg head).
    * ``modality`` = ``w_mod`` * focal(modality_logits, modality)                 (needs CLIP priors)
    * ``degradation`` = ``w_deg`` * contrastive CE(degradation_logits, degradation) (needs CLIP priors)

    Terms of weight 0 are left out. ``label_sets`` lists the label-set names in the order of the
    batch's ``label_set_index`` (the dataset's ``label_sets``).

    ``forward(output, batch)`` with ``output`` a :class:`~napari_vldun.model.VLDUNOutput` and ``batch``
    a dict holding ``clean`` (B, 1, H, W), ``label`` (B, H, W), ``has_label`` (B,) bool,
    ``label_set_index`` (B,), ``modality`` (B,), ``degradation`` (B,).
    """

    def __init__(self, label_sets: Sequence[str], lambda_seg: float = 0.5, stage_weight: float = 0.1,
                 w_mod: float = 0.0, w_deg: float = 0.0, rec_loss: str = "l1",
                 focal_alpha: float | Sequence[float] | None = 0.25, focal_gamma: float = 2.0,
                 rec_weight: float = 1.0, free_weight: float = 0.0, stage_monotone: float = 0.0,
                 monotone_metric: str = "l1", monotone_margin_db: float = 0.0) -> None:
        super().__init__()
        self.stage_monotone = float(stage_monotone)
        self.monotone_margin_db = float(monotone_margin_db)
        check_monotone(monotone_metric, self.monotone_margin_db)
        self.monotone_metric = monotone_metric
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {rec_loss!r}")
        self.label_sets = list(label_sets)
        self.lambda_seg = float(lambda_seg)
        self.stage_weight = float(stage_weight)
        self.rec_weight = float(rec_weight)
        self.free_weight = float(free_weight)
        self.w_mod = float(w_mod)
        self.w_deg = float(w_deg)
        self.rec_loss = rec_loss
        self.dice_ce = DiceCELoss()
        self.focal = FocalLoss(focal_alpha, focal_gamma)

    def _rec(self, x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if self.rec_loss == "ssim_l1":
            return ssim_l1(x, clean)
        return F.l1_loss(x, clean) if self.rec_loss == "l1" else charbonnier(x, clean)

    def seg_term(self, seg_logits: dict[str, torch.Tensor], batch: dict) -> torch.Tensor | None:
        """Unweighted DiceCE over the labelled samples, or ``None`` when the batch has none."""
        if not seg_logits or "has_label" not in batch:
            return None
        has = torch.as_tensor(batch["has_label"]).bool()
        idx = torch.as_tensor(batch["label_set_index"]).long()
        has = has & (idx >= 0)
        if not bool(has.any()):
            return None
        terms, counts = [], []
        for i in torch.unique(idx[has]).tolist():
            name = self.label_sets[i]
            if name not in seg_logits:
                raise KeyError(f"batch has labels of set {name!r} but the model has no head for it "
                               f"(model heads: {sorted(seg_logits)})")
            sel = (has & (idx == i)).nonzero().squeeze(1).to(seg_logits[name].device)
            target = batch["label"].to(seg_logits[name].device)
            terms.append(self.dice_ce(seg_logits[name].index_select(0, sel), target.index_select(0, sel)))
            counts.append(len(sel))
        n = float(sum(counts))
        return sum(t * (c / n) for t, c in zip(terms, counts))

    def forward(self, output, batch: dict) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        clean = batch["clean"]
        if output.restored is not None:
            clean = clean.to(output.restored.device)
            terms["rec"] = self.rec_weight * self._rec(output.restored, clean)
            free = getattr(output, "restored_free", None)
            if self.free_weight > 0 and free is not None:
                terms["rec_free"] = self.rec_weight * self.free_weight * self._rec(free, clean)
            if self.stage_weight > 0 and output.stages:
                stage = torch.stack([F.l1_loss(s.full, clean) for s in output.stages]).mean()
                if self.stage_monotone > 0:
                    stage = stage + self.stage_monotone * monotone_hinge([s.full for s in output.stages], clean,
                                                                          self.monotone_metric,
                                                                          self.monotone_margin_db)
                terms["stage"] = self.rec_weight * self.stage_weight * stage
        if self.lambda_seg > 0:
            seg = self.seg_term(output.seg_logits, batch)
            if seg is not None:
                terms["seg"] = self.lambda_seg * seg
        if self.w_mod > 0 and output.modality_logits is not None:
            target = batch["modality"].to(output.modality_logits.device)
            terms["modality"] = self.w_mod * self.focal(output.modality_logits, target)
        if self.w_deg > 0 and output.degradation_logits is not None:
            target = batch["degradation"].to(output.degradation_logits.device)
            terms["degradation"] = self.w_deg * degradation_contrastive_loss(output.degradation_logits, target)
        if not terms:
            raise ValueError("JointLoss: no loss term applies to this output and batch "
                             "(no rec head and no labelled sample?)")
        terms["total"] = sum(terms.values())
        return terms


class PriorLoss(nn.Module):
    """Stage-1 (CLIP fine-tuning) objective: ``w_mod * focal + w_deg * contrastive CE``.

    ``forward(prior, batch)`` with ``prior`` anything with ``modality_logits`` (B, M) and
    ``degradation_logits`` (B, K) (a :class:`~napari_vldun.model.priors.PriorOutput`).
    """

    def __init__(self, w_mod: float = 1.0, w_deg: float = 1.0,
                 focal_alpha: float | Sequence[float] | None = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.w_mod = float(w_mod)
        self.w_deg = float(w_deg)
        self.focal = FocalLoss(focal_alpha, focal_gamma)

    def forward(self, prior, batch: dict) -> dict[str, torch.Tensor]:
        if prior.modality_logits is None or prior.degradation_logits is None:
            raise ValueError("PriorLoss needs the CLIP priors (model built with use_priors=False?)")
        dev = prior.modality_logits.device
        terms = {
            "modality": self.w_mod * self.focal(prior.modality_logits, batch["modality"].to(dev)),
            "degradation": self.w_deg * degradation_contrastive_loss(prior.degradation_logits,
                                                                      batch["degradation"].to(dev)),
        }
        terms["total"] = terms["modality"] + terms["degradation"]
        return terms
