"""VL-DUN: priors -> U-shaped unfolding stages -> reconstruction head + segmentation heads (Fig. 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation.consistency import data_consistency
from ..degradation.masks import MASK_KINDS, mask_kinds
from ..degradation.primitives import DEGRADATION_PROMPTS
from .blocks import Downsample, Upsample
from .cascade import pad_to_multiple, run_cascade
from .config import SegHeadKind, VLDUNConfig, get_config, label_set_groups
from .heads import (GroupedSegmentationHeads, MultiScaleSegmentationHead, SegmentationDecoder, SegmentationHead, SegmentationUNet,
                    StageImageHead)
from .priors import LearnedPriors, PriorOutput, VisionLanguagePriors
from .unfolding import StageSettings, UnfoldingStage


@dataclass
class StageMaps:
    """One unfolding stage shown in image space, each (B, 1, H, W) at the input resolution."""

    level: int
    full: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    #: the weight-shared pass (0-based) the stage belongs to.
    pass_index: int = 0


@dataclass
class VLDUNOutput:
    """What :class:`VLDUN` returns.

    ``restored`` (B, 1, H, W) (``None`` without rec head); ``seg_logits`` label-set name ->
    (B, n_classes, H, W) (empty without seg head); modality / degradation logits (B, M) / (B, K)
    (``None`` without CLIP priors); ``stages`` one :class:`StageMaps` per stage when asked;
    ``restored_free`` the network's own estimate before data consistency (``None`` without k-space).
    """

    restored: torch.Tensor | None
    seg_logits: dict[str, torch.Tensor]
    modality_logits: torch.Tensor | None = None
    degradation_logits: torch.Tensor | None = None
    stages: list[StageMaps] = field(default_factory=list)
    restored_free: torch.Tensor | None = None

    @property
    def modality_probs(self) -> torch.Tensor | None:
        return None if self.modality_logits is None else self.modality_logits.softmax(-1)

    @property
    def degradation_probs(self) -> torch.Tensor | None:
        return None if self.degradation_logits is None else self.degradation_logits.softmax(-1)


class VLDUN(nn.Module):
    """Vision-Language controlled Deep Unfolding Network.

    ``forward(y)`` with ``y`` (B, 1, H, W) float in [0, 1], any H, W (reflect-padded to a multiple of
    ``2 ** len(widths)`` and cropped back). When the acquisition is known, ``kspace`` (complex) and
    ``mask`` ({0, 1}), both broadcastable to (B, 1, H, W), make the restored image consistent with the
    measured k-space (:func:`~napari_vldun.degradation.data_consistency`) before the segmentation
    head sees it; a zero mask (no measurement) leaves it unchanged. With k-space the unfolding network
    then runs ``cascades`` times (default :meth:`passes`), each pass on the previous pass's consistent
    image, with the priors re-estimated from that image (a weight-shared cascade, as in DC-CNN); the
    returned modality / degradation logits are those of the acquired image.
    """

    def __init__(self, cfg: VLDUNConfig, text_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        if not (cfg.rec_head or cfg.seg_head):
            raise ValueError("config: at least one of rec_head and seg_head must be enabled")
        if len(cfg.blocks) != len(cfg.widths) or len(cfg.expand) != len(cfg.widths):
            raise ValueError("config: widths, blocks and expand need one entry per level")
        self.cfg = cfg
        n_tokens = 2 + len(cfg.degradations)
        if cfg.use_priors:
            prompts = [DEGRADATION_PROMPTS[d] for d in cfg.degradations]
            self.priors = VisionLanguagePriors(cfg.clip, prompts, len(cfg.modalities), cfg.prior_dim, text_embeddings)
        else:
            self.priors = LearnedPriors(n_tokens, cfg.prior_dim)
        w = cfg.widths
        L = len(w)
        settings = StageSettings.from_config(cfg)
        p = int(cfg.patch)

        def stage(level: int, blocks: int) -> UnfoldingStage:
            return UnfoldingStage(w[level], blocks, cfg.expand[level], settings)

        self.embed = nn.Conv2d(cfg.in_channels * p * p, w[0], 3, padding=1)
        # y at level i: avg-pooled (patch 1, the first release) or PixelUnshuffle(patch * 2**i) (lossless)
        y_ch = [cfg.in_channels * (1 if p == 1 else (p * 2**i) ** 2) for i in range(L)]
        self.embed_y = nn.ModuleList(nn.Conv2d(yc, c, 3, padding=1) for yc, c in zip(y_ch, w))
        self.encoder = nn.ModuleList(stage(i, cfg.blocks[i]) for i in range(L - 1))
        self.down = nn.ModuleList(Downsample(w[i], w[i + 1]) for i in range(L - 1))
        self.bottleneck = stage(L - 1, cfg.blocks[L - 1])
        self.up = nn.ModuleList(Upsample(w[i + 1], w[i]) for i in range(L - 1))
        self.merge = nn.ModuleList(nn.Conv2d(2 * w[i], w[i], 1, bias=False) for i in range(L - 1))
        self.decoder = nn.ModuleList(stage(i, cfg.blocks[i]) for i in range(L - 1))
        self.refine = stage(0, cfg.refine_blocks)
        if cfg.stage_images:  # one residual image head per stage; the last one is the reconstruction head
            levels = self.stage_levels
            self.stage_heads = (nn.ModuleList(StageImageHead(w[lv], p, 2**lv) for lv in levels)
                                if cfg.rec_head else None)
            self.to_image = nn.ModuleList()
            self.rec_head = None
            # x_{k-1} at each stage's level, as the observation is embedded there (zero-init: starts as run 10)
            self.feedback = (nn.ModuleList(_zero(nn.Conv2d(y_ch[lv], w[lv], 3, padding=1)) for lv in levels)
                             if cfg.stage_feedback and cfg.rec_head else None)
            n_steps = int(cfg.pass_step_sizes)
            # flat (passes * stages,) so that AdamW's weight decay (only on >= 2-D tensors) leaves it alone
            self.pass_steps = (nn.Parameter(torch.ones(n_steps * len(levels)))
                               if n_steps > 0 and cfg.rec_head else None)
            # a factor on those per (mask kind, pass, stage), flat for the same reason (cfg.mask_step_sizes)
            self.mask_steps = (nn.Parameter(torch.ones(len(MASK_KINDS) * n_steps * len(levels)))
                               if cfg.mask_step_sizes and self.pass_steps is not None else None)
        else:
            self.pass_steps = None
            self.mask_steps = None
            self.stage_heads = None
            self.feedback = None
            self.to_image = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in w)  # stage viewer projections
            self.rec_head = nn.Conv2d(w[0], cfg.in_channels, 3, padding=1) if cfg.rec_head else None
        def seg_head(label_sets: dict[str, list[str]], kind: SegHeadKind) -> nn.Module:
            if kind in (SegHeadKind.UNET, SegHeadKind.IMAGE_UNET):
                feats = tuple(w) if kind is SegHeadKind.UNET else ()
                return SegmentationUNet(tuple(cfg.seg_unet_widths), feats, p, cfg.in_channels, label_sets)
            if kind is SegHeadKind.DECODER:
                return SegmentationDecoder(tuple(w[min(i, L - 1)] for i in range(3)), cfg.in_channels, p,
                                           cfg.seg_decoder_width, label_sets)
            if kind is SegHeadKind.MULTISCALE:
                return MultiScaleSegmentationHead((w[0], w[min(1, L - 1)]), cfg.in_channels, cfg.seg_width,
                                                  label_sets)
            return SegmentationHead(w[0] + cfg.in_channels, cfg.seg_width, label_sets)

        if not cfg.seg_head:
            self.seg_head = None
        elif cfg.seg_head_groups:
            self.seg_head = GroupedSegmentationHeads(
                [seg_head({k: cfg.label_sets[k] for k in g}, cfg.seg_head_kind(j))
                 for j, g in enumerate(label_set_groups(cfg))])
        else:
            self.seg_head = seg_head(cfg.label_sets, cfg.seg_head_kind())
        # NHWC (channels-last) 4-D weights: convolutions then return channels-last activations, whose
        # (B, H*W, C) token view for the Bi-Mamba scans and cross-attention is free instead of a copy
        # (BENCHMARKS.md, "Memory layout"). ``.to(device)`` and ``load_state_dict`` keep the layout.
        self.to(memory_format=torch.channels_last)

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this (the U's and the segmentation U-Net's depth)."""
        m = 2 ** len(self.cfg.widths) * int(self.cfg.patch)
        groups = max(len(self.cfg.seg_head_groups), 1)
        unet = any(self.cfg.seg_head_kind(j) in (SegHeadKind.UNET, SegHeadKind.IMAGE_UNET) for j in range(groups))
        return max(m, 2 ** (len(self.cfg.seg_unet_widths) - 1)) if unet else m

    @property
    def stage_levels(self) -> list[int]:
        """The U level of each stage in order: encoder 0..L-2, bottleneck L-1, decoder L-2..0, refinement 0."""
        L = len(self.cfg.widths)
        return list(range(L - 1)) + [L - 1] + list(reversed(range(L - 1))) + [0]

    @property
    def restores(self) -> bool:
        """True when the model has a reconstruction head (returns a restored image)."""
        return bool(self.cfg.rec_head)

    def passes(self, measured: bool, cascades: int | None = None) -> int:
        """Passes of the unfolding network that :meth:`forward` runs: with a measurement and a reconstruction
        head, ``cascades`` (default ``cfg.cascades``); without a measurement 1. Raises ValueError below 1.
        The per-job policy (a default per mask kind, ``cfg.cascades_by_mask``) is
        :func:`napari_vldun.inference.passes`, decided once per job, not here."""
        n = int(self.cfg.cascades if cascades is None else cascades)
        if n < 1:
            raise ValueError(f"cascades must be >= 1, got {n}")
        return n if measured and self.restores else 1

    def forward(self, y: torch.Tensor, return_stages: bool = False, kspace: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cascades: int | None = None,
                prior: PriorOutput | None = None, interrupt: Callable[[], None] | None = None) -> VLDUNOutput:
        """``prior``: the priors of ``y`` computed elsewhere (tiled inference gives every tile its slice's),
        else computed here. ``interrupt``: called before every unfolding stage but the first; it raises to stop
        (cancel)."""
        if y.ndim != 4 or y.shape[1] != self.cfg.in_channels:
            raise ValueError(f"input must be (B, {self.cfg.in_channels}, H, W), got {tuple(y.shape)}")
        if (kspace is None) != (mask is None):
            raise ValueError("data consistency needs both kspace and mask (or neither)")
        n = self.passes(kspace is not None, cascades)
        if self.cfg.stage_images:
            return run_cascade(self, y, kspace, mask, n, return_stages, prior, interrupt)
        h, w = y.shape[-2:]
        xp, (ph, pw), mode = pad_to_multiple(y, self.multiple)
        prior = self.priors(y) if prior is None else prior  # reported: the priors of the acquired image
        free = restored = None
        for c in range(n):
            if c > 0:  # the next pass sees the consistent image in [0, 1] and conditions its priors on it
                x = restored.clamp(0.0, 1.0)
                xp = F.pad(x, (0, pw, 0, ph), mode=mode)
            tokens = prior.tokens if c == 0 else self.priors(x).tokens
            z, stages = self._unfold(xp, tokens, return_stages and c == n - 1, (h, w), interrupt, c > 0)
            if self.rec_head is None:
                break
            out = xp + self.rec_head(z)  # padded; the seg head sees it whole when there is no k-space
            restored = out[..., :h, :w]
            if kspace is not None:
                free = restored if free is None else free  # the first pass: the estimate without k-space
                restored = data_consistency(restored, kspace, mask)
                out = F.pad(restored, (0, pw, 0, ph), mode=mode)
        seg: dict[str, torch.Tensor] = {}
        if self.seg_head is not None:
            image = out if restored is not None else xp
            seg = {k: v[..., :h, :w] for k, v in self.seg_head(torch.cat([z, image], dim=1)).items()}
        return VLDUNOutput(restored, seg, prior.modality_logits, prior.degradation_logits, stages, free)

    def _unfold(self, yp: torch.Tensor, tokens: torch.Tensor, return_stages: bool, size: tuple[int, int],
                interrupt: Callable[[], None] | None = None, later_pass: bool = False
                ) -> tuple[torch.Tensor, list[StageMaps]]:
        """The U of unfolding stages on the padded observation ``yp`` (B, 1, H', W'): last features
        (B, widths[0], H', W') and the stage maps (when asked). ``interrupt`` is called before each stage
        but the first of the first pass (``later_pass`` False)."""
        ys = [yp] + [F.avg_pool2d(yp, 2**i) for i in range(1, len(self.cfg.widths))]
        y_feats = [emb(yi) for emb, yi in zip(self.embed_y, ys)]
        stages: list[StageMaps] = []
        k = 0

        def run(stage: UnfoldingStage, z: torch.Tensor, level: int) -> torch.Tensor:
            nonlocal k
            if interrupt is not None and (k > 0 or later_pass):
                interrupt()
            k += 1
            z, bands = stage(z, y_feats[level], tokens)
            if return_stages:
                stages.append(self._stage_maps(level, z, bands, ys[level], size))
            return z

        z = self.embed(yp)
        skips = []
        for i, (stage, down) in enumerate(zip(self.encoder, self.down)):
            z = run(stage, z, i)
            skips.append(z)
            z = down(z)
        z = run(self.bottleneck, z, len(self.cfg.widths) - 1)
        for i in reversed(range(len(skips))):
            z = self.merge[i](torch.cat([self.up[i](z), skips[i]], dim=1))
            z = run(self.decoder[i], z, i)
        return run(self.refine, z, 0), stages

    def step_sizes(self, pass_index: int, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The step sizes of pass ``pass_index``'s stage residuals, (1, stages), or (N, stages) per k-space
        mask of ``mask`` (N masks of (..., H, W), N 1 or the batch) when ``cfg.mask_step_sizes``: the pass's row
        of ``pass_steps`` (later passes reuse the last row) times its mask kind's factors. None without
        ``pass_steps``."""
        if self.pass_steps is None:
            return None
        n = len(self.stage_heads)
        rows = self.pass_steps.view(-1, n)
        r = min(int(pass_index), len(rows) - 1)
        steps = rows[r][None]
        if self.mask_steps is not None and mask is not None:
            factors = self.mask_steps.view(len(MASK_KINDS), len(rows), n)[:, r]
            steps = steps * factors[mask_kinds(mask).to(factors.device)]
        return steps

    def pyramid(self, yp: torch.Tensor) -> list[torch.Tensor]:
        """The observation at every level: avg-pooled (``patch`` 1) or PixelUnshuffle(patch * 2**i)."""
        return [self._level(yp, i) for i in range(len(self.cfg.widths))]

    def _level(self, image: torch.Tensor, level: int) -> torch.Tensor:
        """(B, 1, H', W') at U level ``level``: avg-pooled (``patch`` 1) or PixelUnshuffle(patch * 2**level)."""
        p = int(self.cfg.patch)
        if p == 1:
            return F.avg_pool2d(image, 2**level) if level else image
        return F.pixel_unshuffle(image, p * 2**level)

    def unfold_images(self, yp: torch.Tensor, tokens: torch.Tensor, size: tuple[int, int],
                      kspace: torch.Tensor | None, mask: torch.Tensor | None, return_stages: bool,
                      pass_index: int = 0, interrupt: Callable[[], None] | None = None):
        """One pass of the U on the padded observation ``yp`` (B, 1, H', W') for ``stage_images`` configs:
        every stage adds its residual image to a running estimate of size ``size`` (h, w), made consistent
        with ``kspace``/``mask`` after each stage when given. Returns ``(x, x_free, stages, feats)``:
        the estimate (B, 1, h, w) float32, the same without data consistency, the stage maps (when asked)
        and the features of every level for the segmentation head (level 0 the refinement stage, 1..L-2 the
        decoder stages, L-1 the bottleneck). ``interrupt`` is called before
        each stage but the first of pass 0 (cancel)."""
        h, w = size
        p, L = int(self.cfg.patch), len(self.cfg.widths)
        y_feats = [emb(t) for emb, t in zip(self.embed_y, self.pyramid(yp))]
        x_free = x = yp[..., :h, :w].float()
        stages: list[StageMaps] = []
        k = 0
        steps = self.step_sizes(pass_index, mask if kspace is not None else None)

        def run(stage: UnfoldingStage, z: torch.Tensor, level: int) -> torch.Tensor:
            nonlocal x, x_free, k
            if interrupt is not None and (k > 0 or pass_index > 0):
                interrupt()
            if self.feedback is not None:
                xp = pad_to_multiple(x, self.multiple)[0].to(yp.dtype)
                z = z + self.feedback[k](self._level(xp, level))
            z, bands = stage(z, y_feats[level], tokens)
            if self.stage_heads is not None:
                head = self.stage_heads[k]
                delta = head(z)[..., :h, :w].float()
                if steps is not None:
                    delta = delta * steps[:, k].view(-1, 1, 1, 1)
                x_free = x_free + delta
                x = x + delta
                if kspace is not None:
                    x = data_consistency(x, kspace, mask)
                if return_stages:
                    low = head.band(bands.low)[..., :h, :w].float() if bands is not None else torch.zeros_like(x)
                    high = head.band(bands.high)[..., :h, :w].float() if bands is not None else torch.zeros_like(x)
                    stages.append(StageMaps(level, x, low, high, pass_index))
            k += 1
            return z

        z = self.embed(F.pixel_unshuffle(yp, p) if p > 1 else yp)
        skips, dec = [], {}
        for i, (stage, down) in enumerate(zip(self.encoder, self.down)):
            z = run(stage, z, i)
            skips.append(z)
            z = down(z)
        z = run(self.bottleneck, z, L - 1)
        dec[L - 1] = z
        for i in reversed(range(len(skips))):
            z = self.merge[i](torch.cat([self.up[i](z), skips[i]], dim=1))
            z = run(self.decoder[i], z, i)
            dec[i] = z
        dec[0] = run(self.refine, z, 0)
        return x, x_free, stages, [dec[i] for i in range(L)]

    def _stage_maps(self, level: int, z: torch.Tensor, bands, y_level: torch.Tensor, size: tuple[int, int]) -> StageMaps:
        proj = self.to_image[level]

        def full_res(t: torch.Tensor) -> torch.Tensor:
            t = F.interpolate(t, scale_factor=2**level, mode="bilinear", align_corners=False) if level else t
            return t[..., : size[0], : size[1]]

        full = full_res(y_level + proj(z))
        low = full_res(F.conv2d(bands.low, proj.weight))
        high = full_res(F.conv2d(bands.high, proj.weight))
        return StageMaps(level, full, low, high)


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def build_model(cfg: VLDUNConfig | str, seed: int | None = 0, **overrides) -> VLDUN:
    """Build a VL-DUN from a config or a config name, with a seeded initialisation."""
    if isinstance(cfg, str):
        cfg = get_config(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    if seed is None:
        return VLDUN(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VLDUN(cfg)


def group_seg_heads(base: VLDUN, groups: list[tuple[list[str], VLDUN]]) -> VLDUN:
    """A model with ``base``'s weights everywhere but the segmentation head, which becomes one head per group
    (``seg_head_groups``): group ``names`` takes its head from its model (its whole head, classifiers of the
    other label sets dropped). Every model must have ``base``'s config but for ``seg_head_groups`` (a grouped
    source contributes the group that holds ``names``). ValueError otherwise. E.g. a head fine-tuned for ACDC and
    COVID beside the head that segments BraTS best."""
    def plain(cfg: VLDUNConfig) -> dict:
        return {k: v for k, v in cfg.to_dict().items() if k != "seg_head_groups"}

    want = plain(base.cfg)
    for _, m in groups:
        got = plain(m.cfg)
        if got != want:
            diff = sorted(k for k in want if got.get(k) != want[k])
            raise ValueError(f"group_seg_heads: a model's config differs from the base's in {diff}")
    out = build_model(base.cfg.replace(seg_head_groups=tuple(tuple(n) for n, _ in groups)))
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("seg_head.")}
    for j, (names, m) in enumerate(groups):
        head = m.seg_head
        if isinstance(head, GroupedSegmentationHeads):  # the sub-head of that model that holds these names
            head = next((h for h, g in zip(head.heads, label_set_groups(m.cfg)) if set(names) <= set(g)), None)
            if head is None:
                raise ValueError(f"group_seg_heads: no head of its model segments all of {names}")
        state.update(_head_state(head, names, f"seg_head.heads.{j}."))
    out.load_state_dict(state, strict=True)
    return out.eval()


def _head_state(head: nn.Module, names: list[str], prefix: str) -> dict[str, torch.Tensor]:
    """``head``'s state under ``prefix``, without the classifiers of label sets outside ``names``."""
    return {prefix + k: v for k, v in head.state_dict().items()
            if not (k.startswith("classifiers.") and k.split(".")[1] not in names)}


def attach_unet_head(base: VLDUN, unet) -> VLDUN:
    """Restore-then-segment: ``base`` with a plain U-Net (:class:`~napari_vldun.model.unet.UNet`, e.g. trained
    on ``base``'s restored images, ``vldun train-unet --restored``) as the segmentation head of the U-Net's
    label set, run on the restored image (kind ``"image_unet"``). The label set leaves its group; the other label
    sets keep their heads and weights, so their outputs are unchanged. ValueError when ``base`` has no such label
    set (or other classes), no segmentation head, or a U-Net head of other widths."""
    cfg = base.cfg
    ls = unet.cfg.label_set
    if base.seg_head is None or ls not in cfg.label_sets:
        raise ValueError(f"attach_unet_head: the checkpoint has no segmentation head for {ls!r} "
                         f"(label sets {sorted(cfg.label_sets)})")
    if list(cfg.label_sets[ls]) != list(unet.cfg.classes):
        raise ValueError(f"attach_unet_head: {ls!r} classes differ: {cfg.label_sets[ls]} vs {unet.cfg.classes}")
    if not cfg.stage_images:
        raise ValueError("attach_unet_head: the checkpoint needs stage_images (a cascade config)")
    old = label_set_groups(cfg)
    kinds = [cfg.seg_head_kind(j) for j in range(len(old))]
    widths = tuple(unet.cfg.widths)
    others = [(j, [n for n in g if n != ls]) for j, g in enumerate(old)]
    others = [(j, g) for j, g in others if g]
    if any(kinds[j] in (SegHeadKind.UNET, SegHeadKind.IMAGE_UNET) for j, _ in others) and \
            tuple(cfg.seg_unet_widths) != widths:
        raise ValueError(f"attach_unet_head: another head is a U-Net of widths {tuple(cfg.seg_unet_widths)}, "
                         f"the new one has {widths}")
    new_cfg = cfg.replace(seg_head_groups=((ls,),) + tuple(tuple(g) for _, g in others),
                          seg_head_kinds=(SegHeadKind.IMAGE_UNET.value,) + tuple(kinds[j].value for j, _ in others),
                          seg_unet_widths=widths)
    out = build_model(new_cfg)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("seg_head.")}
    heads = base.seg_head.heads if isinstance(base.seg_head, GroupedSegmentationHeads) else [base.seg_head]
    for new_j, (j, names) in enumerate(others, 1):
        state.update(_head_state(heads[j], names, f"seg_head.heads.{new_j}."))
    for k, v in unet.state_dict().items():
        key = f"classifiers.{ls}.{k[len('head.'):]}" if k.startswith("head.") else k
        state[f"seg_head.heads.0.{key}"] = v
    out.load_state_dict(state, strict=True)
    return out.eval()
