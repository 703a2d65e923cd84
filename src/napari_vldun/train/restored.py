"""Restore-then-segment training data: the images a frozen VL-DUN hands its segmentation head, drawn once.

A segmentation head that works on the restored image alone (``seg_head_kinds`` ``"image_unet"``) does not need
the unfolding network in its training step: :func:`cache_restored` runs the frozen network once per (slice, draw)
on whole training slices -- k-space undersampled and restored with data consistency, or the zero-filled magnitude
alone -- and stores exactly the image the network's segmentation head receives (captured at its input, before
padding). :class:`RestoredSliceDataset` then serves crops of those images with the plain U-Net's recipe (two
thirds centred on labels, flips / rotations, gamma), so the head trains at the U-Net's speed (BENCHMARKS.md,
"Restore-then-segment").

Cache files: ``DIR/restored-RANK.safetensors`` (``image.N`` (H, W) float16, ``label.N`` (H, W) uint8) +
``DIR/restored-RANK.json`` (``{"weights", "source", "split", "draws", "entries": [{"slice", "draw", "accel",
"kspace", "seed"}, ...]}``); several ranks split the slices between processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.datasets import crop_pair, item_rngs
from ..data.sources import SOURCES
from ..io.atomic import write_json

__all__ = ["RestoreDraw", "DEFAULT_DRAWS", "cache_restored", "RestoredSliceDataset", "capture_seg_input"]


@dataclass(frozen=True)
class RestoreDraw:
    """One degraded view of every slice: acceleration ~ U(``accel_range``) of the source's mask kind, restored
    with its k-space (``kspace``) or from the zero-filled magnitude alone."""

    accel_range: tuple[float, float] = (2.5, 8.0)
    kspace: bool = True

    def __post_init__(self) -> None:
        lo, hi = (float(a) for a in self.accel_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"draw accel_range must satisfy 1 <= lo <= hi, got {self.accel_range}")


#: what the head should see: a k-space restoration over the training accelerations, and a magnitude-only one
DEFAULT_DRAWS: tuple[RestoreDraw, ...] = (RestoreDraw((2.5, 8.0), True), RestoreDraw((2.5, 6.0), False))


def capture_seg_input(model) -> tuple[list, Callable[[], None]]:
    """Hook ``model.seg_head`` so that every call appends its image input (B, 1, H', W') to the returned list;
    call the returned function to remove the hook."""
    seen: list = []

    def hook(_module, args):
        seen.append(args[-1].detach().float().cpu())

    handle = model.seg_head.register_forward_pre_hook(hook)
    return seen, handle.remove


def cache_restored(weights: str | Path, out_dir: str | Path, *, source: str = "acdc", split: str = "train",
                   draws: Sequence[RestoreDraw] = DEFAULT_DRAWS, seed: int = 0, rank: int = 0, world: int = 1,
                   max_slices: Optional[int] = None) -> Iterator[dict]:
    """Run the frozen checkpoint ``weights`` on every ``world``-th whole slice (from ``rank``) of ``source``'s
    ``split`` once per draw; write ``out_dir/restored-RANK.*`` at the end. Yields ``{"done", "total"}`` per slice
    and finally ``{"path": ...}``. Seeds: slice ``i``, draw ``d`` uses ``SeedSequence([seed, 7, d, i])``."""
    from safetensors.torch import save_file

    from ..data import SliceDataset
    from ..degradation.measurement import Measurement
    from ..inference import load_model, predict
    from ..model.checkpoint import atomic_write

    spec = SOURCES.get(source)
    if spec is None or spec.label_set is None:
        raise ValueError(f"source {source!r} is not a labelled source")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    loaded = load_model(weights, device="cpu")
    if loaded.model.seg_head is None or not loaded.model.restores:
        raise ValueError(f"{weights}: the checkpoint needs a reconstruction and a segmentation head")
    ds = SliceDataset([source], split, crop=None, augment=False)
    idx = list(range(len(ds)))
    if max_slices is not None:
        idx = sorted(set(np.linspace(0, len(ds) - 1, int(max_slices)).round().astype(int).tolist()))
    idx = idx[rank::world]
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict] = []
    seen, unhook = capture_seg_input(loaded.model)
    try:
        for done, i in enumerate(idx, 1):
            clean, label = ds.clean_pair(i)
            for d, draw in enumerate(draws):
                rng = np.random.default_rng(np.random.SeedSequence([seed, 7, d, i]))
                accel = float(rng.uniform(*draw.accel_range))
                mseed = int(rng.integers(0, 2**31 - 1))
                degraded, meas = Measurement.simulate(clean, spec.mask_kind, accel, seed=mseed)
                seen.clear()
                predict(loaded, degraded, label_set=spec.label_set, postprocess=False,
                        **({"measurement": meas} if draw.kspace else {}))
                if len(seen) != 1:
                    raise RuntimeError(f"expected one segmentation-head call per slice, saw {len(seen)}")
                h, w = clean.shape
                n = len(entries)
                tensors[f"image.{n}"] = seen[0][0, 0, :h, :w].to(torch.float16).contiguous()
                tensors[f"label.{n}"] = torch.from_numpy(np.array(label, np.uint8))  # a copy per entry
                entries.append({"slice": int(i), "draw": d, "accel": round(accel, 4), "kspace": draw.kspace,
                                "seed": mseed})
            yield {"done": done, "total": len(idx)}
    finally:
        unhook()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"restored-{rank}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    write_json(path.with_suffix(".json"), {"weights": str(weights), "source": source, "split": split,
                                          "draws": [asdict(d) for d in draws], "seed": seed, "rank": rank,
                                          "world": world, "entries": entries}, overwrite=True)
    yield {"path": str(path)}


class RestoredSliceDataset(Dataset):
    """Crops of cached restored slices (:func:`cache_restored`) for a segmentation head.

    Item ``i`` -> ``{"degraded": (1, crop, crop) float32, "label": (crop, crop) int64}`` (``degraded`` holds the
    restored image, the key the U-Net trainer reads): a random crop (``foreground_oversample`` of them centred on
    a labelled pixel), rot90 / flips and a gamma in [0.7, 1.5], seeded by ``seed``, the epoch and ``i``.
    ``cache_dir``'s shards must all come from one checkpoint, source and split.
    """

    def __init__(self, cache_dir: str | Path, crop: int = 128, seed: int = 0, foreground_oversample: float = 0.67,
                 intensity_augment: bool = True, augment: bool = True) -> None:
        from safetensors.torch import load_file

        paths = sorted(Path(cache_dir).glob("restored-*.safetensors"))
        if not paths:
            raise ValueError(f"no restored-*.safetensors cache in {cache_dir}")
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.entries: list[dict] = []
        keys = set()
        for p in paths:
            meta = json.loads(p.with_suffix(".json").read_text())
            keys.add((meta["weights"], meta["source"], meta["split"]))
            t = load_file(str(p))
            for n, e in enumerate(meta["entries"]):
                self.images.append(t[f"image.{n}"].float().numpy())
                self.labels.append(t[f"label.{n}"].numpy().astype(np.int64))
                self.entries.append(e)
        if len(keys) != 1:
            raise ValueError(f"{cache_dir}: shards from different checkpoints, sources or splits: {sorted(keys)}")
        (self.weights, self.source, self.split), = keys
        if self.split != "train":
            raise ValueError(f"{cache_dir}: the cache holds the {self.split!r} split; train only on 'train'")
        self.crop, self.seed = int(crop), int(seed)
        self.foreground_oversample = float(foreground_oversample)
        self.intensity_augment, self.augment = bool(intensity_augment), bool(augment)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = item_rngs(self.seed, "train", self.epoch, i)[0]
        img, lab = crop_pair(self.images[i], self.labels[i], self.crop, rng, random=True, augment=self.augment,
                             foreground=self.foreground_oversample, intensity=self.intensity_augment)
        return {"degraded": torch.from_numpy(img)[None], "label": torch.from_numpy(lab)}
