"""The data-consistent cascade of ``stage_images`` VL-DUNs: passes of the U, priors re-estimated per pass.

E2E-VarNet / DC-CNN shape: the network (:meth:`VLDUN.unfold_images`) is one pass; this module owns the
pass loop, the padding, the free estimate (no data consistency) and the segmentation head's input.
Pass ``c > 0`` sees pass ``c - 1``'s restored image in [0, 1] and conditions its priors on it; the
reported modality / degradation logits are those of the acquired image.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["run_cascade", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int], str]:
    """Pad (B, C, H, W) on the bottom/right to multiples of ``m``: reflect, or replicate when the image is
    smaller than the pad. Returns the padded tensor, the pads (ph, pw) and the mode."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    return (F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x), (ph, pw), mode


def run_cascade(model, y: torch.Tensor, kspace: torch.Tensor | None, mask: torch.Tensor | None, passes: int,
                return_stages: bool, prior=None, interrupt: Optional[Callable[[], None]] = None):
    """``passes`` weight-shared passes of ``model`` (a ``stage_images`` :class:`VLDUN`) on ``y``
    (B, 1, H, W) -> :class:`VLDUNOutput`; stages of every pass (``pass_index`` says which) when asked.
    ``prior``: the first pass's priors when already computed (else ``model.priors(y)``).
    ``interrupt``: called before every stage but the first (see :meth:`VLDUN.unfold_images`); it raises to
    stop the run (cancel)."""
    from .vldun import VLDUNOutput  # vldun imports this module at load time

    h, w = y.shape[-2:]
    prior = model.priors(y) if prior is None else prior
    x_in, restored, free, stages, feats = y, None, None, [], None
    for c in range(passes):
        tokens = prior.tokens if c == 0 else model.priors(x_in).tokens
        yp, (ph, pw), mode = pad_to_multiple(x_in, model.multiple)
        x, x_free, st, feats = model.unfold_images(yp, tokens, (h, w), kspace, mask, return_stages, c, interrupt)
        stages += st
        if not model.restores:
            break
        restored = x
        if c == 0 and kspace is not None:
            free = x_free
        x_in = x.clamp(0.0, 1.0)
    seg: dict[str, torch.Tensor] = {}
    if model.seg_head is not None:
        image = restored if restored is not None else y.float()
        image = F.pad(image, (0, pw, 0, ph), mode=mode) if ph or pw else image
        image = image.to(feats[0].dtype)
        if getattr(model.seg_head, "takes_pyramid", False):
            logits = model.seg_head(feats, image)
        elif model.cfg.seg_multiscale:
            logits = model.seg_head(feats[0], feats[min(1, len(feats) - 1)], image)
        else:
            z = feats[0]
            if model.cfg.patch > 1:
                z = F.interpolate(z, scale_factor=float(model.cfg.patch), mode="bilinear", align_corners=False)
            logits = model.seg_head(torch.cat([z, image], dim=1))
        seg = {k: v[..., :h, :w] for k, v in logits.items()}
    return VLDUNOutput(restored, seg, prior.modality_logits, prior.degradation_logits, stages, free)
