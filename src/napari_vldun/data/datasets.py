"""Slice datasets over :data:`~napari_vldun.data.sources.SOURCES` with on-the-fly degradation.

:class:`SliceDataset` returns, per item ``i``, a dict of tensors::

    clean            (1, crop, crop) float32 in [0, 1]
    degraded         (1, crop, crop) float32 >= 0 (zero-filled magnitude; may exceed 1
                     slightly by Gibbs ringing in "joint" mode unless noise was added,
                     which clamps to [0, 1]; clamped to [0, 1] in "prior" mode)
    label            (crop, crop) int64 (zeros for unlabelled sources)
    has_label        bool ()
    label_set_index  int64 () index into ``dataset.label_sets`` (-1: no labels)
    modality         int64 () index into ``dataset.modalities``
    degradation      int64 () index into ``model.config.DEGRADATIONS``
    mask_kind        int64 () index into :data:`ITEM_MASK_KINDS` ("none", "cartesian", "radial")
    accel            float32 () acceleration used (1.0 when no undersampling)
    fraction         float32 () sampled k-space fraction (1.0 when no undersampling)
    source_index     int64 () index into ``dataset.sources``
    index            int64 () ``i``
    kspace           (1, crop, crop) complex64: the measured centred k-space ``M . F(clean)``
                     ("joint" mode; zeros otherwise)
    mask             (1, crop, crop) float32 {0, 1}: the sampling mask of ``kspace`` (zeros when
                     there is no k-space measurement: "prior" mode, or noise was added)

Randomness: item ``i`` draws its crop/augmentation and its degradation from two
generators spawned from ``SeedSequence([seed, 1, epoch, i])`` in "train" and
``SeedSequence([seed, 0, i])`` in "val" (independent of the epoch, so evaluations
are comparable across runs).  Call :meth:`SliceDataset.set_epoch` (or
:func:`set_loader_epoch`) before iterating each epoch; with ``num_workers > 0`` do
not use persistent workers (they keep a stale epoch).
The crop generator is used before the augmentation draws, so a dataset with and
without ``augment`` picks the same crop; the degradation is applied to the cropped
(and augmented) clean image, i.e. to the k-space of the crop.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..degradation import cartesian_mask, gaussian_noise, radial_mask, random_primitive
from ..degradation.measurement import Measurement
from ..degradation.masks import MASK_KINDS
from ..model.config import DEGRADATIONS, LABEL_SETS
from .sources import SOURCES, SliceItem, load_case

__all__ = ["ITEM_MASK_KINDS", "SliceDataset", "augment_pair", "center_crop", "random_crop", "crop_pair",
           "item_rngs", "degrade_sample", "make_sample", "make_loader", "collate_for", "collate_slices",
           "batch_to", "set_loader_epoch"]

#: Values of the ``mask_kind`` entry of a sample.
#: ``mask_kind`` index of a sample: "none" (a clean prior-phase item) or a degradation mask kind.
ITEM_MASK_KINDS: tuple[str, ...] = ("none", *MASK_KINDS)

AccelRange = Union[tuple[float, float], dict]


# ------------------------------------------------------------------------- crops / augmentation
def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Zero-pad (centred) the last two axes to at least ``(h, w)``."""
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if ph == 0 and pw == 0:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(x, pad)


def center_crop(image: np.ndarray, label: Optional[np.ndarray], crop: int):
    """Centre crop / zero-pad ``(H, W)`` arrays to ``(crop, crop)``."""
    image = _pad_to(image, crop, crop)
    h, w = image.shape[-2:]
    t, l = (h - crop) // 2, (w - crop) // 2
    out = image[t:t + crop, l:l + crop]
    if label is not None:
        label = _pad_to(label, crop, crop)[t:t + crop, l:l + crop]
    return out, label


def random_crop(image: np.ndarray, label: Optional[np.ndarray], crop: int,
                rng: np.random.Generator, foreground: float = 0.0):
    """Zero-pad (centred) to at least ``crop`` then take a ``crop x crop`` window: with probability
    ``foreground`` (when ``label`` has a labelled pixel) centred on a random labelled pixel, shifted by up
    to ``crop // 4`` px per axis and kept inside the image; otherwise uniformly placed."""
    image = _pad_to(image, crop, crop)
    h, w = image.shape[-2:]
    if foreground > 0 and label is not None and rng.random() < foreground:
        fg = np.flatnonzero(_pad_to(label, crop, crop) > 0)
        if fg.size:
            cy, cx = divmod(int(fg[int(rng.integers(0, fg.size))]), w)
            j = crop // 4
            cy, cx = cy + int(rng.integers(-j, j + 1)), cx + int(rng.integers(-j, j + 1))
            t, l = min(max(cy - crop // 2, 0), h - crop), min(max(cx - crop // 2, 0), w - crop)
            out = image[t:t + crop, l:l + crop]
            return out, _pad_to(label, crop, crop)[t:t + crop, l:l + crop]
    t, l = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    out = image[t:t + crop, l:l + crop]
    if label is not None:
        label = _pad_to(label, crop, crop)[t:t + crop, l:l + crop]
    return out, label


def augment_pair(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator):
    """Random 90-degree rotation (k ~ U{0..3}) then random up-down and left-right flips (p = 0.5).

    The same operation is applied to ``image`` and ``label`` (``(H, W)`` arrays; ``label``
    may be None); returns contiguous copies ``(image, label)``.
    """
    k = int(rng.integers(0, 4))
    flip_ud, flip_lr = bool(rng.random() < 0.5), bool(rng.random() < 0.5)

    def op(x: np.ndarray) -> np.ndarray:
        x = np.rot90(x, k, axes=(-2, -1))
        if flip_ud:
            x = x[..., ::-1, :]
        if flip_lr:
            x = x[..., :, ::-1]
        return np.ascontiguousarray(x)

    return op(image), (op(label) if label is not None else None)


def crop_pair(image: np.ndarray, label: Optional[np.ndarray], crop: Optional[int], rng: np.random.Generator, *,
              random: bool, augment: bool, foreground: float = 0.0,
              intensity: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Crop (``random``: :func:`random_crop` with ``foreground`` oversampling, else :func:`center_crop`;
    ``crop=None``: none) then :func:`augment_pair` when ``augment``, then a random gamma in [0.7, 1.5]
    (log-uniform) when ``intensity``. Returns float32 / label copies that share no memory with the inputs
    (samples must never alias cached volumes)."""
    if crop is not None:
        if random:
            image, label = random_crop(image, label, crop, rng, foreground)
        else:
            image, label = center_crop(image, label, crop)
    if augment:
        image, label = augment_pair(image, label, rng)
    image = np.array(image, np.float32, copy=True)
    if intensity:
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
        image = np.clip(image, 0.0, None) ** gamma
    return image, (None if label is None else label.copy())


# ------------------------------------------------------------------------- per-item randomness / degradation
def item_rngs(seed: int, split: str, epoch: int, i: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(crop/augmentation generator, degradation generator) of item ``i`` (see the module docstring):
    spawned from ``SeedSequence([seed, 0, i])`` for "val", ``[seed, 1, epoch, i]`` otherwise."""
    key = [seed, 0, i] if split == "val" else [seed, 1, epoch, i]
    a, b = np.random.SeedSequence(key).spawn(2)
    return np.random.default_rng(a), np.random.default_rng(b)


def degrade_sample(clean: torch.Tensor, mask_kind: str, rng: np.random.Generator, *,
                   accel_range: tuple[float, float], fixed_accel: Optional[float] = None,
                   center_fraction: float = 0.08, noise_sigma_range: tuple[float, float] = (0.0, 0.0)
                   ) -> tuple[torch.Tensor, float, float, torch.Tensor, torch.Tensor]:
    """The "joint" degradation of one ``(1, H, W)`` clean slice: k-space undersampling with a
    ``mask_kind`` ("cartesian" | "radial") mask at ``accel ~ U(accel_range)`` (or ``fixed_accel``;
    the draw is made either way, so the later draws do not depend on it), then Gaussian noise with
    ``sigma ~ U(noise_sigma_range)`` when > 0.

    Returns ``(degraded, accel, sampled fraction, kspace, mask)``: the measured k-space ``M . F(clean)``
    (1, H, W) complex64 and its mask (1, H, W) float32. With noise added (in image space, so it has no
    k-space counterpart) the mask returned is zero: no data consistency for that sample."""
    drawn = float(rng.uniform(*accel_range))
    accel = fixed_accel if fixed_accel is not None else drawn
    mseed, nseed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
    kw = {"center_fraction": center_fraction} if mask_kind == "cartesian" else {}
    zf, meas = Measurement.simulate(clean.detach().cpu().numpy().reshape(1, *clean.shape[-2:]), mask_kind, accel,
                                    seed=mseed, **kw)
    y = torch.from_numpy(zf).to(clean.dtype)
    kspace, mask = torch.from_numpy(meas.kspace), torch.from_numpy(np.array(meas.mask))
    sigma = float(rng.uniform(*noise_sigma_range))
    if sigma > 0:
        y = gaussian_noise(y, sigma, seed=nseed)
        mask.zero_()
    return y, float(accel), meas.fraction, kspace, mask


def make_sample(clean: torch.Tensor, degraded: torch.Tensor, label: Optional[np.ndarray], *, label_set_index: int,
                modality: int, degradation: int, mask_kind: str, accel: float, fraction: float,
                source_index: int, index: int, kspace: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> dict:
    """The sample dict of the module docstring (``label=None``: unlabelled, zeros and index -1;
    ``kspace``/``mask`` None: no measurement, zeros)."""
    shape = (1, *clean.shape[-2:])
    if kspace is None or mask is None:
        kspace, mask = torch.zeros(shape, dtype=torch.complex64), torch.zeros(shape, dtype=torch.float32)
    has = label is not None
    lab = (torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)) if has
           else torch.zeros(tuple(clean.shape[-2:]), dtype=torch.int64))
    return {
        "clean": clean,
        "degraded": degraded.to(torch.float32).contiguous(),
        "label": lab,
        "has_label": torch.tensor(has),
        "label_set_index": torch.tensor(label_set_index if has else -1),
        "modality": torch.tensor(modality),
        "degradation": torch.tensor(degradation, dtype=torch.int64),
        "mask_kind": torch.tensor(ITEM_MASK_KINDS.index(mask_kind)),
        "accel": torch.tensor(accel, dtype=torch.float32),
        "fraction": torch.tensor(fraction, dtype=torch.float32),
        "source_index": torch.tensor(source_index),
        "index": torch.tensor(index, dtype=torch.int64),
        "kspace": kspace.reshape(shape).to(torch.complex64),
        "mask": mask.reshape(shape).to(torch.float32),
    }


# ------------------------------------------------------------------------- dataset
def _check_range(r, what: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not 0.0 <= lo <= hi:
        raise ValueError(f"{what} must be (lo, hi) with 0 <= lo <= hi, got {r}")
    return lo, hi


def check_source_crops(crops: dict, sources: Sequence[str], crop: Optional[int]) -> dict[str, int]:
    """``{source: window}`` checked: known sources of ``sources``, integer windows in [8, ``crop``]."""
    if not isinstance(crops, dict):
        raise ValueError(f"source_crops must be a {{source: size}} table, got {crops!r}")
    if crops and crop is None:
        raise ValueError("source_crops needs a crop size (crop=None takes whole slices)")
    out = {}
    for k, v in crops.items():
        if k not in sources:
            raise ValueError(f"source_crops: {k!r} is not one of the sources {list(sources)}")
        if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= int(crop):
            raise ValueError(f"source_crops[{k!r}] must be an integer in [8, crop={crop}], got {v!r}")
        out[k] = int(v)
    return out


def check_source_weights(weights: dict, sources: Sequence[str]) -> dict[str, float]:
    """``weights`` {source: relative weight} checked against ``sources``: one finite weight > 0 for each
    source and no other key. Returns it with float values; raises ValueError naming the fault."""
    extra = sorted(set(weights) - set(sources))
    missing = sorted(set(sources) - set(weights))
    if extra or missing:
        raise ValueError(f"source weights must name exactly the sources {sorted(sources)}"
                         + (f"; not sources: {extra}" if extra else "") + (f"; missing: {missing}" if missing else ""))
    out = {}
    for k, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"source weight of {k!r} must be a number > 0, got {v!r}")
        out[k] = float(v)
    return out


class SliceDataset(Dataset):
    """2-D slices of ``sources`` with a degraded copy made on the fly (see module docstring).

    Args:
        sources: names in :data:`SOURCES`.
        split: "train" or "val" (see :mod:`.sources` for the splits).
        root: data folder (default :func:`~.sources.default_data_root`).
        crop: square output size; train: random crop, val: centre crop (zero-padded when the
            slice is smaller).  ``None`` keeps the full slice (sizes differ: batch size 1).
        mode: "joint" (k-space undersampling with the source's mask kind, accel ~
            U(accel_range) or ``fixed_accel``, optional Gaussian noise sigma ~
            U(noise_sigma_range), degradation = "undersampling") or "prior" (a class drawn
            uniformly from DEGRADATIONS applied with :func:`random_primitive`; its
            "undersampling" picks a Cartesian or radial mask with p = 0.5 whatever the source).
        accel_range: (lo, hi) or ``{"cartesian": (lo, hi), "radial": (lo, hi)}``.
        fixed_accel: every sample uses exactly this acceleration (evaluation).
        center_fraction: fully sampled centre of the Cartesian masks.
        noise_sigma_range: Gaussian noise std range added after undersampling ("joint").
        seed: base seed of every random draw.
        modalities: modality class list (default: sorted modality names of ``sources``).
        max_slices_per_source: keep at most this many slices per source, evenly spaced over
            the sorted item list (so several patients stay represented).
        augment: random rot90/flips (default: ``split == "train"``).
        foreground_oversample: share of "train" crops centred on a labelled pixel (see :func:`random_crop`).
        intensity_augment: random gamma of the clean "train" slice (see :func:`crop_pair`).
        source_crops: ``{source: size}``: that source's window is ``size`` (<= ``crop``), zero-padded
            (centred) to ``crop`` so that batches stack (e.g. BraTS trained on tumour-sized windows while
            ACDC gets large ones); the k-space degradation is of the padded window.
        balance: ``None`` (every slice equally likely) or "modality" / "source": position ``i``
            of an epoch holds a slice of a group drawn uniformly, then a slice drawn uniformly
            within it (seeded by seed and epoch, with replacement; same length). Used by the
            prior phase, whose sets are ~75 % cardiac MRI otherwise. A {source: weight} dict draws
            the source with those relative weights instead of uniformly (every source of the set
            needs a weight > 0).
    """

    def __init__(self, sources: Sequence[str], split: str = "train", root=None,
                 crop: Optional[int] = 128, mode: str = "joint",
                 accel_range: AccelRange = (2.0, 8.0), fixed_accel: Optional[float] = None,
                 center_fraction: float = 0.08, noise_sigma_range=(0.0, 0.0), seed: int = 0,
                 modalities: Optional[Sequence[str]] = None,
                 max_slices_per_source: Optional[int] = None, augment: Optional[bool] = None,
                 balance: Optional[str] = None, foreground_oversample: float = 0.0,
                 intensity_augment: bool = False, source_crops: Optional[dict] = None):
        if isinstance(sources, str):
            sources = [sources]
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(f"unknown or no sources {unknown}; known: {sorted(SOURCES)}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if mode not in ("joint", "prior"):
            raise ValueError(f"mode must be 'joint' or 'prior', got {mode!r}")
        if isinstance(balance, dict):
            balance = check_source_weights(balance, sources)
        elif balance not in (None, "modality", "source"):
            raise ValueError(f"balance must be None, 'modality', 'source' or a {{source: weight}} dict, got {balance!r}")
        if crop is not None and int(crop) < 1:
            raise ValueError(f"crop must be a positive int or None, got {crop}")
        self.source_crops = check_source_crops(source_crops or {}, sources, crop)
        self.sources = list(sources)
        self.split, self.mode, self.seed = split, mode, int(seed)
        self.crop = None if crop is None else int(crop)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.fixed_accel = None if fixed_accel is None else float(fixed_accel)
        if self.fixed_accel is not None and self.fixed_accel < 1.0:
            raise ValueError(f"fixed_accel must be >= 1, got {fixed_accel}")
        kinds = ("cartesian", "radial")
        if isinstance(accel_range, dict):
            self.accel_range = {k: _check_range(accel_range[k], f"accel_range[{k!r}]")
                                for k in kinds if k in accel_range}
        else:
            r = _check_range(accel_range, "accel_range")
            self.accel_range = {k: r for k in kinds}
        for k, (lo, _) in self.accel_range.items():
            if lo < 1.0:
                raise ValueError(f"accel_range[{k!r}] must be >= 1")
        self.center_fraction = float(center_fraction)
        self.noise_sigma_range = _check_range(noise_sigma_range, "noise_sigma_range")
        mods = sorted({SOURCES[s].modality for s in self.sources})
        self.modalities = list(modalities) if modalities is not None else mods
        missing = [m for m in mods if m not in self.modalities]
        if missing:
            raise ValueError(f"modalities {missing} of the sources are not in {self.modalities}")
        used = {SOURCES[s].label_set for s in self.sources} - {None}
        self.label_sets = [k for k in LABEL_SETS if k in used] + sorted(used - set(LABEL_SETS))
        self.epoch = 0
        self.items: list[SliceItem] = []
        for s in self.sources:
            its = SOURCES[s].items(root)[split == "val"]
            n = max_slices_per_source
            if n is not None and len(its) > n:
                keep = np.unique(np.linspace(0, len(its) - 1, int(n)).round().astype(int))
                its = [its[j] for j in keep]
            self.items.extend(its)
        self._source_index = {s: j for j, s in enumerate(self.sources)}
        self.balance = balance
        self.foreground_oversample = float(foreground_oversample) if split == "train" else 0.0
        self.intensity_augment = bool(intensity_augment) and split == "train"
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws "train" items use (no effect on "val")."""
        self.epoch = int(epoch)

    def _rngs(self, i: int) -> tuple[np.random.Generator, np.random.Generator]:
        return item_rngs(self.seed, self.split, self.epoch, i)

    def _item(self, i: int) -> SliceItem:
        """The slice at position ``i`` of the current epoch (see ``balance``)."""
        if self.balance is None:
            return self.items[i]
        if self._order is None or self._order[0] != self.epoch:
            by_source = self.balance == "source" or isinstance(self.balance, dict)
            key = [(it.source if by_source else SOURCES[it.source].modality) for it in self.items]
            names = sorted(set(key))
            groups = [np.flatnonzero(np.array(key) == k) for k in names]
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, self.epoch]))
            if isinstance(self.balance, dict):
                p = np.array([self.balance[k] for k in names], dtype=np.float64)
                g = rng.choice(len(groups), size=len(self.items), p=p / p.sum())
            else:
                g = rng.integers(0, len(groups), len(self.items))
            pick = rng.random(len(self.items))
            order = np.array([groups[a][int(u * len(groups[a]))] for a, u in zip(g, pick)], dtype=np.int64)
            self._order = (self.epoch, order)
        return self.items[int(self._order[1][i])]

    def item_info(self, i: int) -> dict:
        """Provenance of item ``i``: source, path, slice index, case, patient, mask kind, modality."""
        it = self._item(i)
        spec = SOURCES[it.source]
        return {"source": it.source, "path": it.path, "slice": it.index, "case": it.case,
                "patient": it.patient, "mask_kind": spec.mask_kind, "modality": spec.modality,
                "label_set": spec.label_set}

    def clean_pair(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The cropped (and augmented) clean slice and label of item ``i`` at the current epoch."""
        return self._clean_pair(i, self._rngs(i)[0])

    def _clean_pair(self, i: int, rng: np.random.Generator):
        it = self._item(i)
        data = load_case(it.source, it.path)
        img = data.image[it.index]
        lab = data.label[it.index] if data.label is not None else None
        crop = self.source_crops.get(it.source, self.crop)
        img, lab = crop_pair(img, lab, crop, rng, random=self.split == "train", augment=self.augment,
                             foreground=self.foreground_oversample, intensity=self.intensity_augment)
        if crop != self.crop:  # a smaller window of this source, zero-padded (centred) to the batch's size
            img = _pad_to(img, self.crop, self.crop)
            lab = None if lab is None else _pad_to(lab, self.crop, self.crop)
        return img, lab

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        it = self._item(i)
        spec = SOURCES[it.source]
        crop_rng, rng = self._rngs(i)
        img, lab = self._clean_pair(i, crop_rng)
        clean = torch.from_numpy(img)[None]
        kspace = mask = None
        if self.mode == "joint":
            kind = spec.mask_kind
            y, accel, fraction, kspace, mask = degrade_sample(clean, kind, rng, accel_range=self.accel_range[kind],
                                                fixed_accel=self.fixed_accel, center_fraction=self.center_fraction,
                                                noise_sigma_range=self.noise_sigma_range)
            deg = DEGRADATIONS.index("undersampling")
        else:
            deg = int(rng.integers(0, len(DEGRADATIONS)))
            sub = int(rng.integers(0, 2**31 - 1))
            y, params = random_primitive(clean, DEGRADATIONS[deg], seed=sub, return_params=True)
            kind, accel, fraction = "none", 1.0, 1.0
            if "accel" in params:
                kind, accel = params["kind"], float(params["accel"])
                shape = tuple(clean.shape[-2:])
                m = (cartesian_mask(shape, accel, seed=params["seed"]) if kind == "cartesian"
                     else radial_mask(shape, accel=accel, seed=params["seed"]))
                fraction = m.fraction
        set_index = self.label_sets.index(spec.label_set) if lab is not None else -1
        return make_sample(clean, y, lab, label_set_index=set_index, modality=self.modalities.index(spec.modality),
                           degradation=deg, mask_kind=kind, accel=accel, fraction=fraction,
                           source_index=self._source_index[it.source], index=i, kspace=kspace, mask=mask)


# ------------------------------------------------------------------------- loaders
def make_loader(dataset: SliceDataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                distributed: bool = False, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``dataset`` (``DistributedSampler`` seeded by ``dataset.seed`` when ``distributed``).

    A joint-mode dataset with ``crop=None`` needs ``batch_size == 1``; a prior-mode one batches whole
    slices with :func:`collate_slices` (the prior tower takes a list of images of different sizes).
    Non-distributed shuffling uses a generator seeded by ``dataset.seed``.  Call :func:`set_loader_epoch`
    every epoch.
    """
    if getattr(dataset, "crop", 0) is None and batch_size != 1 and getattr(dataset, "mode", "joint") != "prior":
        raise ValueError("a dataset with crop=None has slices of different sizes: use batch_size=1")
    collate = collate_for(dataset)
    seed = int(getattr(dataset, "seed", 0))
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory)


def collate_for(dataset) -> Optional[Callable]:
    """The ``collate_fn`` for a loader over ``dataset``: :func:`collate_slices` for uncropped slices, else the
    default (None)."""
    return collate_slices if getattr(dataset, "crop", 0) is None else None


def batch_to(batch: dict, device: torch.device) -> dict:
    """``batch`` with its tensors, and the tensors of its lists (:func:`collate_slices`), on ``device``."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        return [move(t) for t in v] if isinstance(v, list) else v

    return {k: move(v) for k, v in batch.items()}


def collate_slices(samples: list[dict]) -> dict:
    """Batch sample dicts of possibly different slice sizes: each key's tensors are stacked where their
    shapes agree, else kept as a list (e.g. ``degraded``: B tensors (1, H_i, W_i) of whole slices)."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        same = all(isinstance(v, torch.Tensor) and v.shape == vals[0].shape for v in vals)
        out[k] = torch.stack(vals) if same else vals
    return out


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's dataset and of its ``DistributedSampler`` (if any)."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
