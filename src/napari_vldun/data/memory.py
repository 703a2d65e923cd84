"""Training data held in memory: slices of (image, labels) volumes from napari layers or two folders.

:class:`PairsDataset` returns the sample dict of :class:`~napari_vldun.data.SliceDataset` in
``"joint"`` mode through the same code path (:func:`~.datasets.crop_pair` for the crop and the
rot90/flip augmentation, :func:`~.datasets.degrade_sample` for the k-space undersampling and noise,
:func:`~.datasets.item_rngs` for the per-item seeding), so a run trains on it exactly as on the
shared sources::

    train, val = make_pair_datasets(pairs, label_set="acdc", modality="cardiac_mri", crop=128)
    for ev in iter_train(cfg, run_builder=make_run_builder(train, val)):   # napari_vldun.train
        ...

:func:`make_pair_datasets` checks the pairs and splits them into training / validation slices
(by pair when there are at least two pairs, else by slices; at least one slice each);
:func:`folder_pair_datasets` does the same for two folders whose files are matched by name. Each
dataset carries what the run needs to build a model for it (``label_sets``, ``label_classes``,
``label_colors``, ``used_modalities``) and a ``provenance`` dict that the checkpoint records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import SUPPORTED_SUFFIXES, file_stem, read_image, read_label
from ..io.normalize import to_unit_range
from ..io.readers import suffix_of
from ..model.config import DEGRADATIONS, LABEL_COLORS, LABEL_SETS
from .datasets import _check_range, crop_pair, degrade_sample, item_rngs, make_sample

__all__ = ["PairsDataset", "LABEL_TOKENS", "check_pairs", "class_names_for", "split_pairs", "make_pair_datasets",
           "pair_key", "match_folders", "load_folder_pairs", "folder_pair_datasets"]

Pair = tuple[np.ndarray, np.ndarray]

_DEFAULT_COLOURS = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"]

#: Endings of a label file's name that :func:`pair_key` ignores (``case1_seg.nii.gz`` <-> ``case1.nii.gz``).
LABEL_TOKENS = ("_labels", "_label", "_seg", "_gt", "_mask", "-labels", "-label", "-seg", "-gt", "-mask")


def class_names_for(label_set: str, n_classes: int) -> tuple[list[str], list[str]]:
    """Class names and colours: the known ones of ``label_set`` when the count matches, else generic."""
    if label_set in LABEL_SETS and len(LABEL_SETS[label_set]) == n_classes:
        return list(LABEL_SETS[label_set]), list(LABEL_COLORS.get(label_set, _DEFAULT_COLOURS[:n_classes]))
    names = ["background"] + [f"class {i}" for i in range(1, n_classes)]
    colours = [_DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)] if i else "#000000" for i in range(n_classes)]
    return names, colours


def _as_volumes(pairs: Sequence[Pair]) -> list[Pair]:
    """(float32 (Z, H, W), int64 (Z, H, W)) pairs; 2-D pairs become one-slice volumes."""
    out = []
    for k, (img, lab) in enumerate(pairs):
        img = np.asarray(img, np.float32)
        lab = np.asarray(lab)
        img = img[None] if img.ndim == 2 else img
        lab = lab[None] if lab.ndim == 2 else lab
        if img.ndim != 3:
            raise ValueError(f"pair {k + 1}: images must be 2-D or 3-D, got {img.shape}")
        if img.shape != lab.shape:
            raise ValueError(f"pair {k + 1}: image shape {img.shape} != labels shape {lab.shape}")
        if lab.dtype.kind not in "biu" and lab.size and not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"pair {k + 1}: labels must be integers")
        out.append((img, lab.astype(np.int64, copy=False)))
    return out


def check_pairs(pairs: Sequence[Pair], n_classes: Optional[int] = None) -> list[Pair]:
    """Pairs as float32 / int64 ``(Z, H, W)`` volumes, checked: same shapes, finite images, labels
    in ``0 .. n_classes - 1`` (when given). Raises ValueError naming the pair."""
    if not pairs:
        raise ValueError("no training pairs: add at least one image + labels pair")
    checked = _as_volumes(pairs)
    for k, (img, lab) in enumerate(checked):
        if not np.isfinite(img).all():
            raise ValueError(f"pair {k + 1}: the image has NaN or infinite values")
        if n_classes is not None and lab.size and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
            raise ValueError(f"pair {k + 1}: labels span {int(lab.min())}..{int(lab.max())} but the label set has "
                             f"{n_classes} classes (0..{n_classes - 1}); raise the class count")
    return checked


class PairsDataset(Dataset):
    """2-D slices ``items`` = ``[(pair, slice), ...]`` of in-memory ``pairs`` with a degraded copy made
    on the fly; samples as :class:`~napari_vldun.data.SliceDataset` ("joint" mode, see its module).

    Args:
        pairs: ``(image (Z, H, W) | (H, W) float in [0, 1], labels of the same shape, int)``.
        items: ``(pair index, slice index)`` of this dataset's samples (default: every slice).
        split: "train" (random crop, per-epoch draws) or "val" (centre crop, fixed draws).
        label_set: name of the labels' set (``label_set_index`` is always 0).
        modality: the images' modality; ``modalities`` is the class list the ``modality`` index
            refers to (default ``[modality]``; a run builder sets it to the model's list).
        crop, mask_kind, accel_range, fixed_accel, center_fraction, noise_sigma_range, seed, augment:
            as for :class:`~napari_vldun.data.SliceDataset` (one mask kind: "cartesian" or "radial").
        class_names, colors: the label set's class names / colours (default :func:`class_names_for`
            with ``max label + 1`` classes, at least 2).
        pair_names: one name per pair (``dataset.sources``; ``source_index`` is the pair index).
        provenance: what a checkpoint records about the data (``{"origin": ..., "pairs": ...}``).
    """

    def __init__(self, pairs: Sequence[Pair], items: Optional[Sequence[tuple[int, int]]] = None, *,
                 split: str = "train", label_set: str, modality: str, crop: Optional[int] = 128,
                 mask_kind: str = "cartesian", accel_range: tuple[float, float] = (2.0, 8.0),
                 fixed_accel: Optional[float] = None, center_fraction: float = 0.08,
                 noise_sigma_range: tuple[float, float] = (0.0, 0.0), seed: int = 0, augment: Optional[bool] = None,
                 modalities: Optional[Sequence[str]] = None, class_names: Optional[Sequence[str]] = None,
                 colors: Optional[Sequence[str]] = None, pair_names: Optional[Sequence[str]] = None,
                 provenance: Optional[dict] = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if mask_kind not in ("cartesian", "radial"):
            raise ValueError(f"mask kind must be 'cartesian' or 'radial', got {mask_kind!r}")
        if crop is not None and int(crop) < 1:
            raise ValueError(f"crop must be a positive int or None, got {crop}")
        self.pairs = _as_volumes(pairs)
        if items is None:
            items = [(p, z) for p, (img, _) in enumerate(self.pairs) for z in range(img.shape[0])]
        self.items = [(int(p), int(z)) for p, z in items]
        for p, z in self.items:
            if not (0 <= p < len(self.pairs) and 0 <= z < self.pairs[p][0].shape[0]):
                raise IndexError(f"item (pair {p}, slice {z}) is outside the {len(self.pairs)} pair(s)")
        self.split, self.seed = split, int(seed)
        self.crop = None if crop is None else int(crop)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.mask_kind = mask_kind
        self.accel_range = _check_range(accel_range, "accel_range")
        if self.accel_range[0] < 1.0:
            raise ValueError("accel_range must be >= 1")
        self.fixed_accel = None if fixed_accel is None else float(fixed_accel)
        if self.fixed_accel is not None and self.fixed_accel < 1.0:
            raise ValueError(f"fixed_accel must be >= 1, got {fixed_accel}")
        self.center_fraction = float(center_fraction)
        self.noise_sigma_range = _check_range(noise_sigma_range, "noise_sigma_range")
        self.modality = str(modality)
        self.modalities = list(modalities) if modalities is not None else [self.modality]
        if self.modality not in self.modalities:
            raise ValueError(f"modality {self.modality!r} is not in {self.modalities}")
        if class_names is None:
            top = max((int(lab.max()) for _, lab in self.pairs if lab.size), default=0)
            class_names, default_colours = class_names_for(label_set, max(2, top + 1))
            colors = default_colours if colors is None else colors
        elif colors is None:
            colors = class_names_for(label_set, len(class_names))[1]
        self.label_sets = [label_set]
        self.label_classes = {label_set: list(class_names)}
        self.label_colors = {label_set: list(colors)}
        self.sources = list(pair_names) if pair_names is not None else [f"pair {k + 1}" for k in range(len(self.pairs))]
        if len(self.sources) != len(self.pairs):
            raise ValueError(f"{len(self.sources)} pair names for {len(self.pairs)} pairs")
        self.provenance = dict(provenance) if provenance is not None else {"origin": "in-memory pairs",
                                                                           "pairs": list(self.sources)}
        self.epoch = 0

    @property
    def label_set(self) -> str:
        return self.label_sets[0]

    @property
    def used_modalities(self) -> list[str]:
        """The modalities the samples use (the model must know them)."""
        return [self.modality]

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws "train" items use (no effect on "val")."""
        self.epoch = int(epoch)

    def item_info(self, i: int) -> dict:
        """Provenance of item ``i``: pair name and index, slice index, label set, modality, mask kind."""
        p, z = self.items[i]
        return {"source": self.sources[p], "pair": p, "slice": z, "label_set": self.label_set,
                "modality": self.modality, "mask_kind": self.mask_kind}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        p, z = self.items[i]
        image, label = self.pairs[p]
        crop_rng, rng = item_rngs(self.seed, self.split, self.epoch, i)
        img, lab = crop_pair(image[z], label[z], self.crop, crop_rng, random=self.split == "train",
                             augment=self.augment)
        clean = torch.from_numpy(img)[None]
        y, accel, fraction, kspace, mask = degrade_sample(clean, self.mask_kind, rng, accel_range=self.accel_range,
                                            fixed_accel=self.fixed_accel, center_fraction=self.center_fraction,
                                            noise_sigma_range=self.noise_sigma_range)
        return make_sample(clean, y, lab, label_set_index=0, modality=self.modalities.index(self.modality),
                           degradation=DEGRADATIONS.index("undersampling"), mask_kind=self.mask_kind,
                           accel=accel, fraction=fraction, source_index=p, index=i, kspace=kspace, mask=mask)


# ----------------------------------------------------------------------------- split
def _spread(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)`` away from both ends (rounding collisions filled from 0)."""
    pick = set(np.unique(np.linspace(0, n - 1, k + 2)[1:-1].round().astype(int)).tolist())
    j = 0
    while len(pick) < k:
        if j not in pick:
            pick.add(j)
        j += 1
    return sorted(pick)


def split_pairs(pairs: Sequence[Pair], val_fraction: float
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], str]:
    """``(train items, val items, "pairs" | "slices")``: with at least two pairs, whole pairs
    (``round(n_pairs * val_fraction)``, evenly spaced) go to validation; with one pair, evenly spaced
    slices do. Validation gets at least 1 and training keeps at least 1 pair / slice."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    items = [(p, z) for p, (img, _) in enumerate(pairs) for z in range(img.shape[0])]
    if len(items) < 2:
        raise ValueError(f"only {len(items)} slice(s) in the training data: at least 2 are needed "
                         "(one for training, one for validation)")
    if len(pairs) >= 2:
        n_val = min(max(1, int(round(len(pairs) * float(val_fraction)))), len(pairs) - 1)
        val_pairs = set(_spread(len(pairs), n_val))
        return ([it for it in items if it[0] not in val_pairs], [it for it in items if it[0] in val_pairs], "pairs")
    n_val = min(max(1, int(round(len(items) * float(val_fraction)))), len(items) - 1)
    pick = set(_spread(len(items), n_val))
    return ([it for i, it in enumerate(items) if i not in pick], [items[i] for i in sorted(pick)], "slices")


def make_pair_datasets(pairs: Sequence[Pair], *, label_set: str, modality: str, n_classes: Optional[int] = None,
                       val_fraction: float = 0.2, crop: Optional[int] = 128, val_crop: Optional[int] = None,
                       mask_kind: str = "cartesian", accel_range: tuple[float, float] = (2.0, 8.0),
                       center_fraction: float = 0.08, noise_sigma_range: tuple[float, float] = (0.0, 0.0),
                       val_accel: Optional[float] = 4.0, seed: int = 0, augment: bool = True,
                       modalities: Optional[Sequence[str]] = None, class_names: Optional[Sequence[str]] = None,
                       pair_names: Optional[Sequence[str]] = None, origin: str = "napari layers"
                       ) -> tuple[PairsDataset, PairsDataset]:
    """Check ``pairs`` (:func:`check_pairs`), split them (:func:`split_pairs`) and return the
    ``(train, val)`` :class:`PairsDataset` s.

    ``n_classes`` defaults to ``len(class_names)``, else to ``max label + 1`` (at least 2); class
    names and colours default to :func:`class_names_for`. Validation slices are centre-cropped to
    ``val_crop`` (default ``crop``), unaugmented, and degraded at ``val_accel`` (None: drawn from
    ``accel_range``, seeded per item). ``origin`` ("napari layers", "folders") and ``pair_names``
    (default "pair 1", ...) go into the datasets' ``provenance``, which checkpoints record.
    """
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    checked = check_pairs(pairs, n_classes)
    if n_classes is None:
        n_classes = max(2, max((int(lab.max()) + 1 for _, lab in checked if lab.size), default=2))
    names, colours = class_names_for(label_set, int(n_classes))
    if class_names is not None:
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        names = list(class_names)
    pair_names = list(pair_names) if pair_names is not None else [f"pair {k + 1}" for k in range(len(checked))]
    if len(pair_names) != len(checked):
        raise ValueError(f"{len(pair_names)} pair names for {len(checked)} pairs")
    train_items, val_items, by = split_pairs(checked, val_fraction)
    provenance = {
        "origin": str(origin), "pairs": list(pair_names), "label_set": label_set, "classes": list(names),
        "modality": modality, "mask_kind": mask_kind, "val_fraction": float(val_fraction), "split_by": by,
        "train_slices": len(train_items), "val_slices": len(val_items),
        "val_pairs": sorted({pair_names[p] for p, _ in val_items}, key=pair_names.index),
    }
    common = dict(label_set=label_set, modality=modality, mask_kind=mask_kind, accel_range=accel_range,
                  center_fraction=center_fraction, noise_sigma_range=noise_sigma_range, seed=seed,
                  modalities=modalities, class_names=names, colors=colours, pair_names=pair_names,
                  provenance=provenance)
    train = PairsDataset(checked, train_items, split="train", crop=crop, augment=augment, **common)
    val = PairsDataset(checked, val_items, split="val", crop=val_crop if val_crop is not None else crop,
                       fixed_accel=val_accel, augment=False, **common)
    return train, val


# ----------------------------------------------------------------------------- two folders
def pair_key(path: str | Path) -> str:
    """Matching key of a file: :func:`~napari_vldun.io.file_stem`, lower-case, without a
    :data:`LABEL_TOKENS` ending."""
    s = file_stem(path).lower()
    for tok in LABEL_TOKENS:
        if s.endswith(tok):
            return s[: -len(tok)]
    return s


def match_folders(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """``(image file, labels file)`` pairs of the two folders with the same :func:`pair_key`
    (suffixes and a ``_label`` / ``_seg`` / ``_gt`` / ``_mask`` ending ignored), sorted by key."""
    a, b = Path(images_dir).expanduser(), Path(labels_dir).expanduser()
    for d, what in ((a, "images"), (b, "labels")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder {d} not found")

    def files(d: Path) -> dict[str, Path]:
        return {pair_key(p): p for p in sorted(d.iterdir()) if p.is_file() and suffix_of(p) in SUPPORTED_SUFFIXES}

    imgs, labs = files(a), files(b)
    pairs = [(imgs[k], labs[k]) for k in sorted(imgs) if k in labs]
    if not pairs:
        raise ValueError(f"no image in {a} has a labels file of the same name in {b} "
                         f"(images: {sorted(imgs)[:5]}, labels: {sorted(labs)[:5]})")
    return pairs


def load_folder_pairs(images_dir: str | Path, labels_dir: str | Path) -> tuple[list[Pair], list[str]]:
    """Read the :func:`match_folders` pairs with :mod:`napari_vldun.io` (images mapped to [0, 1] by
    :func:`~napari_vldun.io.normalize.to_unit_range`); returns ``(pairs, names)``, names = image file stems."""
    pairs, names = [], []
    for ip, lp in match_folders(images_dir, labels_dir):
        vol = read_image(ip)
        img, _ = to_unit_range(vol)
        lab = read_label(lp, like=vol)
        if lab.shape != img.shape:
            raise ValueError(f"{lp}: labels shape {lab.shape} != image shape {img.shape} of {ip}")
        pairs.append((img, lab))
        names.append(file_stem(ip))
    return pairs, names


def folder_pair_datasets(images_dir: str | Path, labels_dir: str | Path, **kwargs
                         ) -> tuple[PairsDataset, PairsDataset]:
    """:func:`make_pair_datasets` on the pairs of two folders (:func:`load_folder_pairs`);
    the provenance records ``origin="folders"``, the two folders and the file stems."""
    pairs, names = load_folder_pairs(images_dir, labels_dir)
    train, val = make_pair_datasets(pairs, pair_names=names, origin="folders", **kwargs)
    folders = {"images_dir": str(Path(images_dir).expanduser()), "labels_dir": str(Path(labels_dir).expanduser())}
    for ds in (train, val):
        ds.provenance.update(folders)
    return train, val
