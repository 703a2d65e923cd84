"""Training on the user's own (image, labels) pairs -- a thin adapter over :mod:`napari_vldun.train`.

:func:`napari_vldun.train.iter_train` builds its datasets from the shared dataset *sources* only
(``train.setup.build_run``). To train on napari layers or on a pair of folders, this module

* wraps the in-memory pairs in :class:`PairsDataset`, which returns the same sample dict as
  :class:`napari_vldun.data.SliceDataset` in ``"joint"`` mode (crop, rot90/flips, k-space
  undersampling with the core :func:`~napari_vldun.degradation.degrade`, optional noise), and
* builds the ``Run`` the core ``Trainer`` would build (same out_dir checks, seeding, resume
  state, phase and loader helpers from ``train.setup``) and hands it to the core ``Trainer``.

The core has no parameter for a ready-made run or dataset yet, so :func:`iter_train_on` swaps
``train.loop.build_run`` for the few microseconds of ``Trainer.__init__`` (under a lock). When the
core grows such a hook (``iter_train(..., datasets=...)``), it is used instead.
"""

from __future__ import annotations

import inspect
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["PairsDataset", "LayerTrainingData", "make_training_data", "load_folder_pairs", "iter_train_on",
           "class_names_for", "PLACEHOLDER_SOURCE"]

#: TrainConfig.sources must name a known source; layer runs record this one and say so in the meta.
PLACEHOLDER_SOURCE = "acdc"

_DEFAULT_COLOURS = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"]


def class_names_for(label_set: str, n_classes: int) -> tuple[list[str], list[str]]:
    """Class names and colours: the known ones of ``label_set`` when the count matches, else generic."""
    from ..model.config import LABEL_COLORS, LABEL_SETS

    if label_set in LABEL_SETS and len(LABEL_SETS[label_set]) == n_classes:
        return list(LABEL_SETS[label_set]), list(LABEL_COLORS.get(label_set, _DEFAULT_COLOURS[:n_classes]))
    names = ["background"] + [f"class {i}" for i in range(1, n_classes)]
    colours = [_DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)] if i else "#000000" for i in range(n_classes)]
    return names, colours


class PairsDataset(Dataset):
    """Slices of in-memory (image, labels) volumes with a degraded copy made on the fly.

    ``pairs``: list of ``(image (Z, H, W) float32 in [0, 1], labels (Z, H, W) int)``; ``items``:
    ``(pair, slice)`` indices. Samples match :class:`napari_vldun.data.SliceDataset` ("joint").
    """

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], items: Sequence[tuple[int, int]], *,
                 split: str, label_set: str, modality: str, modalities: Sequence[str], crop: int,
                 mask_kind: str = "cartesian", accel_range: tuple[float, float] = (2.0, 8.0),
                 fixed_accel: float | None = None, center_fraction: float = 0.08,
                 noise_sigma_range: tuple[float, float] = (0.0, 0.0), seed: int = 0, augment: bool | None = None):
        from ..data import MASK_KINDS

        if mask_kind not in MASK_KINDS[1:]:
            raise ValueError(f"mask kind must be 'cartesian' or 'radial', got {mask_kind!r}")
        self.pairs = list(pairs)
        self.items = [(int(p), int(z)) for p, z in items]
        self.split, self.seed, self.crop = split, int(seed), int(crop)
        self.label_sets = [label_set]
        self.modalities = list(modalities)
        self.modality_index = self.modalities.index(modality)
        self.mask_kind = mask_kind
        self.accel_range = (float(accel_range[0]), float(accel_range[1]))
        self.fixed_accel = fixed_accel
        self.center_fraction = float(center_fraction)
        self.noise_sigma_range = (float(noise_sigma_range[0]), float(noise_sigma_range[1]))
        self.augment = (split == "train") if augment is None else bool(augment)
        self.epoch = 0
        self.sources = ["napari layers"]

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rngs(self, i: int):
        key = [self.seed, 0, i] if self.split == "val" else [self.seed, 1, self.epoch, i]
        a, b = np.random.SeedSequence(key).spawn(2)
        return np.random.default_rng(a), np.random.default_rng(b)

    def __getitem__(self, i: int) -> dict:
        from ..data import MASK_KINDS, augment_pair, center_crop, random_crop
        from ..degradation import degrade, gaussian_noise
        from ..model.config import DEGRADATIONS

        if not 0 <= i < len(self):
            raise IndexError(i)
        p, z = self.items[i]
        image, label = self.pairs[p]
        img, lab = np.asarray(image[z], np.float32), np.asarray(label[z])
        crop_rng, rng = self._rngs(i)
        if self.split == "train":
            img, lab = random_crop(img, lab, self.crop, crop_rng)
        else:
            img, lab = center_crop(img, lab, self.crop)
        if self.augment:
            img, lab = augment_pair(img, lab, crop_rng)
        clean = torch.from_numpy(np.ascontiguousarray(img, np.float32))[None]
        drawn = float(rng.uniform(*self.accel_range))
        accel = self.fixed_accel if self.fixed_accel is not None else drawn
        mseed, nseed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
        kw = {"center_fraction": self.center_fraction} if self.mask_kind == "cartesian" else {}
        y, m = degrade(clean, self.mask_kind, accel, seed=mseed, **kw)
        sigma = float(rng.uniform(*self.noise_sigma_range))
        if sigma > 0:
            y = gaussian_noise(y, sigma, seed=nseed)
        return {
            "clean": clean,
            "degraded": y.to(torch.float32).contiguous(),
            "label": torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64)),
            "has_label": torch.tensor(True),
            "label_set_index": torch.tensor(0),
            "modality": torch.tensor(self.modality_index),
            "degradation": torch.tensor(DEGRADATIONS.index("undersampling"), dtype=torch.int64),
            "mask_kind": torch.tensor(MASK_KINDS.index(self.mask_kind)),
            "accel": torch.tensor(accel, dtype=torch.float32),
            "fraction": torch.tensor(m.fraction, dtype=torch.float32),
            "source_index": torch.tensor(0),
            "index": torch.tensor(i, dtype=torch.int64),
        }


@dataclass
class LayerTrainingData:
    """Datasets plus what the model needs to know about them."""

    train: PairsDataset
    val: PairsDataset
    label_set: str
    class_names: list[str]
    colours: list[str]
    modality: str
    description: list[str] = field(default_factory=list)


def split_items(pairs: Sequence[tuple[np.ndarray, np.ndarray]], val_fraction: float
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Evenly spaced validation slices (at least 1, and at least 1 training slice left)."""
    items = [(p, z) for p, (img, _) in enumerate(pairs) for z in range(img.shape[0])]
    if len(items) < 2:
        raise ValueError(f"only {len(items)} slice(s) in the training data: at least 2 are needed "
                         "(one for training, one for validation)")
    n_val = min(max(1, int(round(len(items) * float(val_fraction)))), len(items) - 1)
    pick = set(np.unique(np.linspace(0, len(items) - 1, n_val + 2)[1:-1].round().astype(int)).tolist())
    j = 0
    while len(pick) < n_val:  # rounding collisions
        if j not in pick:
            pick.add(j)
        j += 1
    val = [items[i] for i in sorted(pick)]
    train = [it for i, it in enumerate(items) if i not in pick]
    return train, val


def make_training_data(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, label_set: str, n_classes: int,
                       modality: str, modalities: Sequence[str], val_fraction: float, crop: int,
                       mask_kind: str, accel_range: tuple[float, float], center_fraction: float = 0.08,
                       val_accel: float = 4.0, seed: int = 0, names: Sequence[str] | None = None
                       ) -> LayerTrainingData:
    """Check the pairs (shapes, [0, 1] images, labels < n_classes) and split them into datasets."""
    if not pairs:
        raise ValueError("no training pairs: add at least one image + labels pair")
    checked = []
    for k, (img, lab) in enumerate(pairs):
        img = np.asarray(img, np.float32)
        lab = np.asarray(lab)
        img = img[None] if img.ndim == 2 else img
        lab = lab[None] if lab.ndim == 2 else lab
        if img.shape != lab.shape:
            raise ValueError(f"pair {k + 1}: image shape {img.shape} != labels shape {lab.shape}")
        if img.ndim != 3:
            raise ValueError(f"pair {k + 1}: images must be 2-D or 3-D, got {img.shape}")
        if not np.isfinite(img).all():
            raise ValueError(f"pair {k + 1}: the image has NaN or infinite values")
        if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
            raise ValueError(f"pair {k + 1}: labels span {int(lab.min())}..{int(lab.max())} but the label set has "
                             f"{n_classes} classes (0..{n_classes - 1}); raise the class count")
        checked.append((img, lab.astype(np.int64)))
    train_items, val_items = split_items(checked, val_fraction)
    common = dict(label_set=label_set, modality=modality, modalities=modalities, crop=crop, mask_kind=mask_kind,
                  accel_range=accel_range, center_fraction=center_fraction, seed=seed)
    train = PairsDataset(checked, train_items, split="train", **common)
    val = PairsDataset(checked, val_items, split="val", fixed_accel=val_accel, augment=False, **common)
    cn, colours = class_names_for(label_set, n_classes)
    if names is not None and len(names) == n_classes:
        cn = list(names)
    return LayerTrainingData(train, val, label_set, cn, colours, modality,
                             [f"{len(checked)} pair(s): {len(train_items)} training / {len(val_items)} "
                              "validation slices"])


_LABEL_TOKENS = ("_labels", "_label", "_seg", "_gt", "_mask", "-labels", "-label", "-seg", "-gt", "-mask")


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".h5", ".hdf5", ".dcm", ".npy", ".png", ".tif", ".tiff"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _key(path: Path) -> str:
    s = _stem(path).lower()
    for tok in _LABEL_TOKENS:
        if s.endswith(tok):
            return s[: -len(tok)]
    return s


def match_folders(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pairs of files with the same name (ignoring the suffix and a ``_label``/``_seg``/``_gt``/``_mask``
    ending) in the two folders."""
    from ..io import SUPPORTED_SUFFIXES
    from ..io.readers import suffix_of

    a, b = Path(images_dir).expanduser(), Path(labels_dir).expanduser()
    for d, what in ((a, "images"), (b, "labels")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder {d} not found")
    files = lambda d: {_key(p): p for p in sorted(d.iterdir())  # noqa: E731
                       if p.is_file() and suffix_of(p) in SUPPORTED_SUFFIXES}
    imgs, labs = files(a), files(b)
    pairs = [(imgs[k], labs[k]) for k in sorted(imgs) if k in labs]
    if not pairs:
        raise ValueError(f"no image in {a} has a labels file of the same name in {b} "
                         f"(images: {sorted(imgs)[:5]}, labels: {sorted(labs)[:5]})")
    return pairs


def load_folder_pairs(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read matched files (:func:`match_folders`) with :mod:`napari_vldun.io`, images in [0, 1]."""
    from ..io import read_image, read_label
    from ..pipeline import to_unit_range

    out = []
    for ip, lp in match_folders(images_dir, labels_dir):
        vol = read_image(ip)
        img, _ = to_unit_range(vol)
        lab = read_label(lp, like=vol)
        if lab.shape != img.shape:
            raise ValueError(f"{lp}: labels shape {lab.shape} != image shape {img.shape} of {ip}")
        out.append((img, lab))
    return out


# ----------------------------------------------------------------------------- the run
_PATCH_LOCK = threading.Lock()


def _model_for(cfg, data: LayerTrainingData):
    """A fresh model (named config) or a checkpoint whose head fits ``data.label_set``."""
    from ..model import CONFIGS, build_model, get_config
    from ..model.checkpoint import load_checkpoint

    if cfg.model in CONFIGS:
        mcfg = get_config(cfg.model, **cfg.model_overrides)
        mcfg = mcfg.replace(label_sets={data.label_set: list(data.class_names)},
                            label_colors={data.label_set: list(data.colours)})
        if data.modality not in mcfg.modalities:
            mcfg = mcfg.replace(modalities=tuple(mcfg.modalities) + (data.modality,))
        return build_model(mcfg, seed=cfg.seed)
    model, _ = load_checkpoint(cfg.model, "cpu")
    heads = model.cfg.label_sets
    if data.label_set not in heads:
        raise ValueError(f"checkpoint {cfg.model} has no segmentation head for label set {data.label_set!r} "
                         f"(it has {sorted(heads)}); use one of those names or train from scratch")
    if len(heads[data.label_set]) != len(data.class_names):
        raise ValueError(f"checkpoint {cfg.model}: label set {data.label_set!r} has {len(heads[data.label_set])} "
                         f"classes, the data {len(data.class_names)}; fix the class count or train from scratch")
    if data.modality not in model.cfg.modalities:
        raise ValueError(f"checkpoint {cfg.model} does not know the modality {data.modality!r}")
    return model


def _build_layer_run(cfg, ctx, resume: bool, data: LayerTrainingData):
    """What ``train.setup.build_run`` does, with :class:`PairsDataset` s instead of sources."""
    from ..model.checkpoint import load_checkpoint
    from ..train import setup as S
    from ..train.state import load_state, set_rng_state

    S._check_out_dir(cfg, ctx, resume)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    out = Path(cfg.out_dir)
    state, tensors = None, {}
    if resume:
        tensors, state = load_state(out / "last")
        S._check_resume_config(cfg, state.get("train_config", {}), out / "last.state.json")
        model, _ = load_checkpoint(out / "last", "cpu")
        if data.label_set not in model.cfg.label_sets:
            raise ValueError(f"cannot resume {out}: it was trained on label set(s) {sorted(model.cfg.label_sets)}, "
                             f"not {data.label_set!r}")
    else:
        model = _model_for(cfg, data)
    modalities = list(model.cfg.modalities)
    for ds in (data.train, data.val):
        ds.modalities = modalities
        ds.modality_index = modalities.index(data.modality)
    phases = [S._phase("joint", cfg.epochs, data.train, cfg, ctx, cfg.steps_per_epoch)]
    model = model.to(ctx.device).train()
    if state is not None:
        set_rng_state(tensors, state.get("rng", {}))
    notes = ["trained on napari layers / folders: " + "; ".join(data.description)]
    return S.Run(model, data.train, data.val, None, phases, ["napari layers (user data)"], state, tensors, notes)


def iter_train_on(cfg, *, resume: bool = False, stop: threading.Event | None = None,
                  datasets: LayerTrainingData | None = None) -> Iterator[Any]:
    """:func:`napari_vldun.train.iter_train` on the shared sources (``datasets=None``) or on in-memory
    pairs (``datasets``); yields the core's ``TrainEvent`` s either way."""
    from ..train import loop

    if datasets is None:
        yield from loop.iter_train(cfg, resume=resume, stop=stop)
        return
    if "datasets" in inspect.signature(loop.iter_train).parameters:  # the core hook, once it exists
        yield from loop.iter_train(cfg, resume=resume, stop=stop, datasets=datasets)
        return
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    ctx = loop.setup(cfg.device)
    try:
        run = _build_layer_run(cfg, ctx, resume, datasets)
        with _PATCH_LOCK:
            original = loop.build_run
            loop.build_run = lambda *_a, **_k: run
            try:
                trainer = loop.Trainer(cfg, ctx, resume, stop)
            finally:
                loop.build_run = original
        yield from trainer.run()
    finally:
        loop.teardown(ctx)
