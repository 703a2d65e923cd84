"""Tiled inference for slices too large to run whole: overlapping tiles, blended seams, data consistency
on the stitched slice.

A whole-slice forward of ``tiny`` holds ~0.8 kB of activations per pixel (measured: 2048 x 2048 peaked at
8.6 GB RSS), so a 4096 x 4096 slice does not fit a 16 GB laptop. Here the network runs on ``tile`` x
``tile`` windows that overlap by ``overlap`` pixels; the restored image and the segmentation probabilities
are blended with a linear ramp over the overlaps (weights sum to 1 everywhere), so memory is bounded by one
tile plus the slice-sized accumulators and time grows linearly with the pixel count. With a measurement,
every pass ends with one data-consistency projection of the *stitched* estimate (k-space is global, so it
cannot be split into tiles), and the next pass tiles that consistent image. Inside a tile the network runs
without k-space (its own estimate), which is what a whole-slice pass does between its stages' projections
only approximately: tiled and whole-slice outputs differ slightly (``benchmarks/tiling.py`` measures by how
much).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .degradation.consistency import data_consistency

__all__ = ["TilePlan", "plan_tiles", "blend_window", "whole_slice_bytes", "choose_tile", "run_tiled",
           "AUTO_TILE_PIXELS", "DEFAULT_TILE", "DEFAULT_OVERLAP"]

#: slices with more pixels than this are tiled by default (~0.8 GB of activations for ``tiny``).
AUTO_TILE_PIXELS = 1024 * 1024
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
#: measured whole-slice inference memory of ``tiny`` (fp32, no grad): ~800 bytes per pixel at 256-512 px.
_TINY_BYTES_PER_PIXEL = 800.0


@dataclass(frozen=True)
class TilePlan:
    """Tile origins (top-left, pixels) covering an (H, W) slice with ``tile`` x ``tile`` windows."""

    shape: tuple[int, int]
    tile: int
    overlap: int
    origins: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


def _starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile + 1, stride))
    if s[-1] != n - tile:
        s.append(n - tile)
    return s


def plan_tiles(shape: tuple[int, int], tile: int = DEFAULT_TILE, overlap: int | None = None) -> TilePlan:
    """Origins of overlapping tiles over ``shape`` (H, W); the last tile of a row/column is flush with
    the edge. ``overlap`` None: min(:data:`DEFAULT_OVERLAP`, tile // 4). ``tile`` > ``2 * overlap`` >= 0 is
    required (ValueError otherwise)."""
    tile = int(tile)
    overlap = min(DEFAULT_OVERLAP, tile // 4) if overlap is None else int(overlap)
    if overlap < 0 or tile <= 2 * overlap:
        raise ValueError(f"tile {tile} must be larger than twice the overlap {overlap} (and overlap >= 0)")
    h, w = (int(s) for s in shape)
    stride = tile - overlap
    origins = [(i, j) for i in _starts(h, tile, stride) for j in _starts(w, tile, stride)]
    return TilePlan((h, w), tile, overlap, origins)


def blend_window(th: int, tw: int, overlap: int, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """(th, tw) weights: a linear ramp from ~0 to 1 over ``overlap`` pixels on every side that meets
    another tile (``edges`` = top, bottom, left, right touch the slice border: no ramp there)."""

    def ramp(n: int, lo_border: bool, hi_border: bool) -> np.ndarray:
        r = np.ones(n, np.float32)
        if overlap > 0:
            up = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            if not lo_border:
                r[:overlap] = np.minimum(r[:overlap], up)
            if not hi_border:
                r[n - overlap:] = np.minimum(r[n - overlap:], up[::-1])
        return r

    top, bottom, left, right = edges
    return torch.from_numpy(np.outer(ramp(th, top, bottom), ramp(tw, left, right)))


def whole_slice_bytes(cfg, shape: tuple[int, int]) -> float:
    """Rough peak activation memory (bytes) of a whole-slice forward of a model with config ``cfg``: the
    ``tiny`` figure (~800 B/px, measured) scaled by the level-0 channels per input pixel."""
    per_px = _TINY_BYTES_PER_PIXEL * (cfg.widths[0] / cfg.patch**2) / (16 / 2**2)
    return per_px * int(shape[0]) * int(shape[1])


def choose_tile(shape: tuple[int, int], tile: int | None) -> int | None:
    """The tile size for a slice: ``tile`` None = automatic (:data:`DEFAULT_TILE` above
    :data:`AUTO_TILE_PIXELS`, else whole), 0 = never tile, N = tiles of N px when the slice is larger."""
    h, w = (int(s) for s in shape)
    if tile is None:
        return DEFAULT_TILE if h * w > AUTO_TILE_PIXELS else None
    tile = int(tile)
    if tile == 0:
        return None
    if tile < 32:
        raise ValueError(f"tile must be 0 (off) or at least 32 px, got {tile}")
    return tile if max(h, w) > tile else None


@dataclass
class TiledOutput:
    """What :func:`run_tiled` returns, shaped like :class:`~napari_vldun.model.vldun.VLDUNOutput`:
    ``restored`` (1, 1, H, W) or None; ``seg_logits`` name -> (1, C, H, W) log-probabilities;
    ``modality_probs`` / ``degradation_probs`` (1, M) / (1, K) of the acquired slice, or None."""

    restored: torch.Tensor | None
    seg_logits: dict[str, torch.Tensor]
    modality_probs: torch.Tensor | None
    degradation_probs: torch.Tensor | None
    stages: list = field(default_factory=list)


@torch.no_grad()
def run_tiled(model, y: torch.Tensor, plan: TilePlan, passes: int, kspace: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, context=None, interrupt=None) -> TiledOutput:
    """``passes`` tiled passes of ``model`` on ``y`` (1, 1, H, W) in [0, 1]: each pass computes the priors of
    its whole input once (the CLIP tower's view is size-bounded) and gives them to every tile, runs every tile
    without k-space, blends, then (with ``kspace``/``mask``, (1, 1, H, W)) projects the stitched estimate
    onto the measurement. Segmentation comes from the last pass, the reported priors from the acquired image
    (as in a whole-slice run). ``context``: a callable giving a context manager around each forward (e.g.
    autocast). ``interrupt``: called before every tile but the first; it raises to stop (cancel)."""
    import contextlib

    ctx = context or contextlib.nullcontext
    h, w = plan.shape
    x_in = y
    restored = None
    for c in range(passes):
        last = c == passes - 1
        acc_x = torch.zeros(1, 1, h, w) if model.restores else None
        acc_p: dict[str, torch.Tensor] = {}
        acc_w = torch.zeros(1, 1, h, w)
        with ctx():
            prior = model.priors(x_in)
        if c == 0:
            reported = prior
        for t, (i, j) in enumerate(plan.origins):
            if interrupt is not None and (c > 0 or t > 0):
                interrupt()
            th, tw = min(plan.tile, h - i), min(plan.tile, w - j)
            with ctx():
                out = model(x_in[..., i:i + th, j:j + tw].contiguous(), prior=prior)
            win = blend_window(th, tw, plan.overlap, (i == 0, i + th == h, j == 0, j + tw == w))[None, None]
            acc_w[..., i:i + th, j:j + tw] += win
            if acc_x is not None and out.restored is not None:
                acc_x[..., i:i + th, j:j + tw] += win * out.restored.float().cpu()
            if last:
                for name, logit in out.seg_logits.items():
                    p = logit.float().softmax(1).cpu()
                    a = acc_p.setdefault(name, torch.zeros(1, p.shape[1], h, w))
                    a[..., i:i + th, j:j + tw] += win * p
        if acc_x is not None:
            restored = acc_x / acc_w
            if kspace is not None:
                restored = data_consistency(restored, kspace.cpu(), mask.cpu())
            x_in = restored.clamp(0.0, 1.0).to(y.device)
    seg = {k: (v / acc_w).clamp_min(1e-8).log() for k, v in acc_p.items()}

    def probs(logits):
        return None if logits is None else logits.float().softmax(-1).cpu()

    return TiledOutput(restored, seg, probs(reported.modality_logits), probs(reported.degradation_logits))
