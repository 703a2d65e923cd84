"""Vision-language dual priors (Sec. 3.3): modality from a CLIP visual encoder + linear classifier,
degradation from similarity to fixed text prompts embedded once by a frozen CLIP text encoder.

open_clip is imported lazily (it costs seconds) and only ever builds architectures from config
dicts: no pretrained tag, no download. Real CLIP weights can be loaded from a local file with
:func:`load_clip_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipConfig

#: CLIP's RGB normalisation constants.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _batch_to_group_norm(module: nn.Module, groups: int = 8) -> None:
    """Replace every BatchNorm2d under ``module`` by a GroupNorm with up to ``groups`` groups."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            g = max(1, min(groups, c // 4))
            while c % g:
                g -= 1
            setattr(module, name, nn.GroupNorm(g, c))
        else:
            _batch_to_group_norm(child, groups)


def _build_visual(cfg: ClipConfig) -> nn.Module:
    import open_clip.model as ocm  # lazy: ~8 s on first import

    visual = ocm._build_vision_tower(cfg.embed_dim, ocm.CLIPVisionCfg(image_size=cfg.image_size, **cfg.vision))
    if cfg.norm == "group":
        _batch_to_group_norm(visual)
    return visual


def image_tiles(y: torch.Tensor, size: int, max_tiles: int) -> torch.Tensor:
    """Native-scale tiles: (B, C, H, W) -> (B, T, C, size, size), T = ny * nx.

    ``n = min(max_tiles, ceil(side / size))`` tiles per axis, evenly spaced from edge to edge
    (overlapping when the side is not a multiple of ``size``). A side shorter than ``size`` is
    first upsampled (bilinear) to ``size``.
    """
    h, w = y.shape[-2:]
    if h < size or w < size:
        h, w = max(h, size), max(w, size)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    ny, nx = min(max_tiles, -(-h // size)), min(max_tiles, -(-w // size))
    rows = torch.linspace(0, h - size, ny).round().long().tolist()
    cols = torch.linspace(0, w - size, nx).round().long().tolist()
    return torch.stack([y[..., r:r + size, c:c + size] for r in rows for c in cols], dim=1)


def _build_clip(cfg: ClipConfig):
    import open_clip.model as ocm

    return ocm.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=ocm.CLIPVisionCfg(image_size=cfg.image_size, **cfg.vision),
        text_cfg=ocm.CLIPTextCfg(**cfg.text),
    )


def embed_prompts(clip, prompts: list[str], context_length: int) -> torch.Tensor:
    """Embed text prompts with a (frozen) open_clip text tower -> (K, E), L2-normalised."""
    import open_clip

    tokens = open_clip.tokenize(prompts, context_length=context_length)
    with torch.no_grad():
        return F.normalize(clip.encode_text(tokens).float(), dim=-1)


@dataclass
class PriorOutput:
    """``tokens`` (B, T, P) for cross-attention; logits (B, M) and (B, K); ``None`` without CLIP."""

    tokens: torch.Tensor
    modality_logits: torch.Tensor | None = None
    degradation_logits: torch.Tensor | None = None


class VisionLanguagePriors(nn.Module):
    """CLIP visual encoder E_v + linear modality classifier W_cls (Eq. 2) + text-prompt degradation prior.

    Input ``y`` (B, 1, H, W) float in [0, 1]. The text prompts are embedded once at construction by
    an open_clip text tower built from the same config with a fixed seed (frozen, then discarded:
    only its (K, E) embeddings are kept, as a buffer saved in checkpoints; pass ``text_embeddings``
    to skip building it). Prior tokens: one projected image
    embedding, one modality token (probability-weighted class embeddings) and K degradation tokens
    (prompt embeddings weighted by their probabilities), projected to ``prior_dim``.
    """

    def __init__(self, cfg: ClipConfig, prompts: list[str], num_modalities: int, prior_dim: int,
                 text_embeddings: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        if text_embeddings is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the text anchors are reproducible for a given config
                text_embeddings = embed_prompts(_build_clip(cfg), prompts, cfg.text.get("context_length", 77))
        self.image_size = cfg.image_size
        self.view, self.max_tiles = cfg.view, int(cfg.max_tiles)
        self.visual = _build_visual(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.register_buffer("text_embeddings", text_embeddings.clone(), persistent=True)
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)
        e = cfg.embed_dim
        self.classifier = nn.Linear(e, num_modalities)
        self.modality_embed = nn.Parameter(torch.randn(num_modalities, e) * 0.02)
        self.project = nn.Linear(e, prior_dim)

    def encode(self, y: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 1|3, H, W) in [0, 1] -> image embedding f_mod (B, E) (see ``ClipConfig.view``).

        ``y`` may also be a sequence of B images (C, H_i, W_i) of different sizes (whole slices: what the
        prior sees at inference); their views go through the tower in one call.
        """
        s = self.image_size
        if not isinstance(y, torch.Tensor):
            if self.view != "tiles":
                return self.encode(torch.cat([F.interpolate(t[None], size=(s, s), mode="bilinear",
                                                            align_corners=False) for t in y]))
            views = [image_tiles(t[None], s, self.max_tiles)[0] for t in y]  # (T_i, C, s, s) each
            f = self._tower(torch.cat(views))
            return torch.stack([part.mean(0) for part in f.split([len(v) for v in views])])
        if self.view == "tiles":
            t = image_tiles(y, s, self.max_tiles)
            b, n = t.shape[:2]
            return self._tower(t.reshape(b * n, *t.shape[2:])).reshape(b, n, -1).mean(1)
        return self._tower(F.interpolate(y, size=(s, s), mode="bilinear", align_corners=False))

    def _tower(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.visual((x - self.mean) / self.std)

    def forward(self, y: torch.Tensor | Sequence[torch.Tensor]) -> PriorOutput:
        """``y`` as in :meth:`encode`."""
        f = self.encode(y)
        modality_logits = self.classifier(f)
        sim = F.normalize(f, dim=-1) @ self.text_embeddings.t()  # (B, K) cosine similarity s_{i,k}
        degradation_logits = self.logit_scale.exp().clamp(max=100.0) * sim
        p_mod = modality_logits.softmax(-1)
        p_deg = degradation_logits.softmax(-1)
        tokens = torch.cat(
            [
                f[:, None, :],
                (p_mod @ self.modality_embed)[:, None, :],
                p_deg[:, :, None] * self.text_embeddings[None],
            ],
            dim=1,
        )
        return PriorOutput(self.project(tokens), modality_logits, degradation_logits)


class LearnedPriors(nn.Module):
    """The "w/o CLIP" ablation: the same number of prior tokens, learned and image-independent."""

    def __init__(self, num_tokens: int, prior_dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_tokens, prior_dim) * 0.02)

    def forward(self, y: torch.Tensor) -> PriorOutput:
        return PriorOutput(self.tokens[None].expand(y.shape[0], -1, -1))


def load_clip_weights(priors: VisionLanguagePriors, path: str | Path, prompts: list[str], cfg: ClipConfig) -> None:
    """Load an open_clip state dict (safetensors, or a torch file read with ``weights_only=True``)
    from a local path into the visual tower and re-embed the prompts with its text tower."""
    path = Path(path)
    if cfg.norm != "batch" and isinstance(cfg.vision.get("layers"), (list, tuple)):
        raise ValueError("CLIP ResNet weights need the tower's own BatchNorm: build the model with clip norm 'batch'")
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    clip = _build_clip(cfg)
    missing, unexpected = clip.load_state_dict(state, strict=False)
    if any(k.startswith("visual.") for k in missing):
        raise ValueError(f"{path}: not an open_clip checkpoint matching this architecture ({len(missing)} missing keys)")
    priors.visual.load_state_dict(clip.visual.state_dict())
    priors.text_embeddings.copy_(embed_prompts(clip, prompts, cfg.text.get("context_length", 77)))
