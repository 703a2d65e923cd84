"""Qt-free decisions of the Stage explorer: how the stages of a run fall into passes, their titles, the grey
range of each band's thumbnails and the PSNR of every full-band estimate. Tested without a display."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..metrics import psnr


def stage_passes(passes: Sequence[int] | None, n: int) -> list[int]:
    """The pass of each of ``n`` stages: ``passes`` (:attr:`napari_vldun.inference.Prediction.stage_passes`)
    when it has one per stage, else all 0 (one pass)."""
    p = [int(v) for v in (passes or [])]
    return p if len(p) == n else [0] * n


def pass_blocks(passes: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Runs of consecutive stages of the same pass: ``[(pass, [stage indices]), ...]`` in order."""
    blocks: list[tuple[int, list[int]]] = []
    for i, p in enumerate(passes):
        if blocks and blocks[-1][0] == p:
            blocks[-1][1].append(i)
        else:
            blocks.append((int(p), [i]))
    return blocks


def pass_starts(passes: Sequence[int]) -> list[int]:
    """Indices of the stages that begin a new pass (the first stage excluded): the pass boundaries."""
    return [i for i in range(1, len(passes)) if passes[i] != passes[i - 1]]


def stage_titles(levels: Sequence[int], passes: Sequence[int]) -> list[str]:
    """A title per stage: ``"stage 2 (level 1)"``, numbered within its pass, and ``"pass 2, stage 2 (level
    1)"`` when the stages span several passes (1-based numbers)."""
    several = len(set(passes)) > 1
    out = []
    for p, block in pass_blocks(passes):
        for k, s in enumerate(block):
            level = levels[s] if s < len(levels) else "?"
            text = f"stage {k + 1} (level {level})"
            out.append(f"pass {p + 1}, {text}" if several else text)
    return out


def band_range(maps: np.ndarray, band: str) -> tuple[float, float]:
    """Grey range of one band's thumbnails, shared by all stages so that they compare: ``(0, 1)`` for the
    full band (the input's scale), the finite min / max of ``maps`` (any shape) for the signed low / high
    bands (a constant band gets a range of 1)."""
    if band == "full":
        return 0.0, 1.0
    a = np.asarray(maps, np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return 0.0, 1.0
    lo, hi = float(a.min()), float(a.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def stage_psnrs(full: np.ndarray, reference: np.ndarray) -> list[float]:
    """PSNR in dB (:func:`napari_vldun.metrics.psnr`, data range 1) of every full-band estimate
    ``full`` (S, H, W) against the ``reference`` slice (H, W), both already on the reference's [0, 1] scale."""
    full = np.asarray(full, np.float32)
    ref = np.asarray(reference, np.float32)
    if full.ndim != 3 or full.shape[-2:] != ref.shape:
        raise ValueError(f"stage maps {full.shape} and the reference slice {ref.shape} do not match")
    if not full.shape[0]:
        return []
    return [float(v) for v in psnr(full, np.repeat(ref[None], full.shape[0], 0), reduction="none")]


def psnr_text(value: float | None) -> str:
    """``"31.42 dB"`` (``""`` for None)."""
    return "" if value is None else f"{value:.2f} dB"
