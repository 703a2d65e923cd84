"""Registry of the real image sources in ``shared/data`` and their train/val splits.

Every source yields 2-D slices ``(H, W)`` of float32 images in [0, 1] (and integer
label maps for labelled sources).  A slice is identified by a :class:`SliceItem`
(image file + index along the first axis of the loaded ``(Z, H, W)`` volume; 2-D
files are loaded as ``Z == 1``).  Volumes are read with :func:`napari_vldun.io.read_image`
(``(Z, H, W)``, slices along the first axis), normalised once and cached in memory.

Sources and splits (``describe_splits()`` gives the slice counts)
------------------------------------------------------------------
``acdc`` (cardiac_mri, Cartesian, labels ``acdc``)
    train: every file of ``acdc/train_slices/*.h5`` (70 patients, ED+ES slices);
    val: every slice of ``acdc/val_volumes/*.h5`` (10 other patients).  Images are
    already scaled to [0, 1] per volume (clipped to [0, 1] for safety).
``brats2015`` / ``brats2015_flair`` (brain_mri, Cartesian, labels ``brats2015``)
    split by patient: train pat0003 + pat0005, val pat0006.  Image
    ``T1c_subtrMeanDivStd.nii.gz`` (``brats2015``; the paper uses T1, absent here) or
    ``Flair_subtrMeanDivStd.nii.gz`` (``brats2015_flair``), label ``OTMultiClass``
    (0..4).  The z-scores are rescaled with the 0.5/99.5 percentiles computed inside
    ``brainmask`` (clipped to [0, 1]); voxels outside the brain mask are 0.  Only the
    axial 240x240 slices whose brain mask covers >= 10 % of the slice are used.
``covid_ct`` (lung_ct, radial, labels ``covid_ct``)
    the 50 JPEG slices of ``covid_ct/train/LungInfection-Train/Doctor-label/Imgs``
    with masks in the sibling ``GT/*.png`` ({0,255} -> {0,1} infection); intensities
    /255.  No patient ids exist: val = the 10 slices with the largest numeric file
    stems (50..58 and 67), train = the other 40.  Slices of one patient may fall on
    both sides of the split.
``totalseg_ct`` (abdomen_ct, radial), ``totalseg_mr`` (abdomen_mri, Cartesian),
``pyradiomics_brain`` (brain_mri, Cartesian), ``spinalcord_mri`` (spine_mri, Cartesian: t1w and t2)
    restoration / modality-prior only (no label set).  CT is windowed with
    :func:`napari_vldun.io.normalize` (``method="ct"``, window :data:`CT_WINDOW`), MRI
    with percentile clipping (``method="mri"``, 0.5/99.5 %).  Split along the first axis
    of each volume: the last ``round(0.2 * Z)`` slices (at least 1) are val, the rest
    train -- *the same volume* on both sides (no patient separation).  Slices with
    std < 0.02 after normalisation are skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

from ..io import normalize, read_image, read_label

__all__ = [
    "CT_WINDOW", "MIN_BRAIN_COVERAGE", "MIN_SLICE_STD", "VAL_FRACTION", "CaseData",
    "SliceItem", "SourceSpec", "SOURCES", "clear_cache", "default_data_root",
    "describe_splits", "load_case", "volume_slices",
]

#: CT window (HU) used for the HU-valued CT sources (``io.CT_WINDOWS["wide"]``).
CT_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
#: Minimum fraction of a BraTS axial slice covered by the brain mask.
MIN_BRAIN_COVERAGE = 0.10
#: Slices of the unlabelled volumes with a smaller std (after normalisation) are skipped.
MIN_SLICE_STD = 0.02
#: Fraction of the last slices (along Z) of the unlabelled volumes held out for val.
VAL_FRACTION = 0.2


def default_data_root() -> Path:
    """The shared data folder.

    ``$VLDUN_DATA`` if set (must be a folder), else the first existing of
    ``<repo>/../shared/data`` and ``./shared/data``; raises ``FileNotFoundError`` otherwise.
    """
    env = os.environ.get("VLDUN_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"VLDUN_DATA={env!r} is not a folder")
        return p
    candidates = [Path(__file__).resolve().parents[3].parent / "shared" / "data",
                  Path.cwd() / "shared" / "data"]
    for p in candidates:
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "shared data folder not found; set the VLDUN_DATA environment variable to it "
        f"(looked in: {', '.join(str(c) for c in candidates)})")


@dataclass(frozen=True)
class SliceItem:
    """One 2-D slice: ``index`` along the first axis of the loaded volume of ``path``."""

    source: str
    path: str
    index: int
    case: str  # volume id (file stem or patient folder)
    patient: str  # patient id used for splitting (slice id where none exists)


class CaseData(NamedTuple):
    """A loaded, normalised volume: ``image`` float32 (Z, H, W) in [0, 1], ``label`` uint8 or None."""

    image: np.ndarray
    label: Optional[np.ndarray]
    spacing: tuple[float, ...]
    info: dict


Split = tuple[list[SliceItem], list[SliceItem]]


@dataclass(frozen=True)
class SourceSpec:
    """A data source: where it is, what it is and how it is split.

    ``list_items(root) -> (train_items, val_items)``; ``load(path) -> CaseData``.
    ``mask_kind`` is the k-space mask of the joint task ("cartesian" MRI, "radial" CT).
    """

    name: str
    folder: str
    modality: str
    mask_kind: str
    label_set: Optional[str]
    list_items: Callable[[Path], Split] = field(repr=False)
    load: Callable[[str], CaseData] = field(repr=False)
    split_rule: str = ""

    def items(self, root: Optional[Path] = None) -> Split:
        """``(train_items, val_items)`` under ``root`` (default :func:`default_data_root`), cached."""
        root = Path(root) if root is not None else default_data_root()
        key = (self.name, str(root.resolve()))
        if key not in _ITEM_CACHE:
            folder = root / self.folder
            if not folder.is_dir():
                raise FileNotFoundError(f"source {self.name!r}: folder {folder} not found")
            _ITEM_CACHE[key] = self.list_items(folder)
        train, val = _ITEM_CACHE[key]
        return list(train), list(val)


_ITEM_CACHE: dict[tuple[str, str], Split] = {}
_CASE_CACHE: dict[tuple[str, str], CaseData] = {}


def clear_cache() -> None:
    """Forget every cached volume and item list."""
    _ITEM_CACHE.clear()
    _CASE_CACHE.clear()


def load_case(source: str, path: str | Path) -> CaseData:
    """Load (once, then from the in-memory cache) the normalised volume of ``path``."""
    key = (source, str(path))
    if key not in _CASE_CACHE:
        _CASE_CACHE[key] = SOURCES[source].load(str(path))
    return _CASE_CACHE[key]


def _as_zhw(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a


# ------------------------------------------------------------------------- ACDC
def _load_acdc(path: str) -> CaseData:
    v = read_image(path)  # h5 'image' in [0, 1] and 'label'
    img = np.clip(_as_zhw(v.data), 0.0, 1.0).astype(np.float32)
    lab = _as_zhw(v.label).astype(np.uint8) if v.label is not None else None
    sp = v.spacing if v.data.ndim == 3 else (1.0,) + v.spacing
    return CaseData(img, lab, sp, {"note": "ACDC h5 stores no spacing"})


def _acdc_patient(name: str) -> str:
    m = re.match(r"(patient\d+)", name)
    return m.group(1) if m else name


def _list_acdc(folder: Path) -> Split:
    train = []
    for p in sorted((folder / "train_slices").glob("*.h5")):
        case = re.sub(r"_slice_\d+$", "", p.stem)
        train.append(SliceItem("acdc", str(p), 0, case, _acdc_patient(p.stem)))
    val = []
    for p in sorted((folder / "val_volumes").glob("*.h5")):
        z = load_case("acdc", p).image.shape[0]
        val += [SliceItem("acdc", str(p), k, p.stem, _acdc_patient(p.stem)) for k in range(z)]
    return train, val


# ------------------------------------------------------------------------- BraTS
BRATS_TRAIN = ("brats_2013_pat0003_1", "brats_2013_pat0005_1")
BRATS_VAL = ("brats_2013_pat0006_1",)


def _load_brats(path: str) -> CaseData:
    p = Path(path)
    v = read_image(p)  # (155, 240, 240): axial slices first
    brain = read_image(p.parent / "brainmask.nii.gz").data > 0
    lab = read_label(p.parent / "OTMultiClass.nii.gz", like=v)
    x = v.data
    lo, hi = (float(t) for t in np.percentile(x[brain], [0.5, 99.5]))
    img = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    img[~brain] = 0.0
    return CaseData(img, lab.astype(np.uint8), v.spacing,
                    {"lo": lo, "hi": hi, "brain_coverage": _coverage(brain)})


def _coverage(brain: np.ndarray) -> np.ndarray:
    """Share of brain voxels per axial slice: (Z, H, W) bool -> (Z,) float."""
    return brain.reshape(brain.shape[0], -1).mean(1)


def _list_brats(sequence: str) -> Callable[[Path], Split]:
    name = "brats2015" if sequence == "T1c" else "brats2015_flair"

    def list_items(folder: Path) -> Split:
        out: Split = ([], [])
        for part, cases in ((0, BRATS_TRAIN), (1, BRATS_VAL)):
            for case in cases:
                p = folder / case / f"{sequence}_subtrMeanDivStd.nii.gz"
                # the mask alone decides which slices count (listing does not load and normalise the case)
                cov = _coverage(read_image(p.parent / "brainmask.nii.gz").data > 0)
                pat = case.split("_")[2]
                out[part].extend(SliceItem(name, str(p), int(k), case, pat)
                                 for k in np.flatnonzero(cov >= MIN_BRAIN_COVERAGE))
        return out
    return list_items


# ------------------------------------------------------------------------- COVID-19 CT
COVID_VAL_COUNT = 10


def _load_covid(path: str) -> CaseData:
    v = read_image(path)
    gt = Path(path).parent.parent / "GT" / (Path(path).stem + ".png")
    lab = read_label(gt, like=v)  # {0, 255} -> {0, 1}
    img = np.clip(v.data / 255.0, 0.0, 1.0).astype(np.float32)
    return CaseData(img[None], lab[None].astype(np.uint8), (1.0, 1.0, 1.0), {})


def _list_covid(folder: Path) -> Split:
    files = sorted((folder / "train" / "LungInfection-Train" / "Doctor-label" / "Imgs").glob("*.jpg"),
                   key=lambda p: int(p.stem))
    items = [SliceItem("covid_ct", str(p), 0, f"covid_{p.stem}", f"covid_{p.stem}") for p in files]
    return items[:-COVID_VAL_COUNT], items[-COVID_VAL_COUNT:]


# ------------------------------------------------------------------------- unlabelled volumes
def _load_plain(method: str) -> Callable[[str], CaseData]:
    def load(path: str) -> CaseData:
        v = read_image(path)
        x, params = normalize(v, method, window=CT_WINDOW)
        return CaseData(_as_zhw(x).astype(np.float32), None, v.spacing, params)
    return load


def _list_plain(name: str, files: tuple[str, ...]) -> Callable[[Path], Split]:
    def list_items(folder: Path) -> Split:
        out: Split = ([], [])
        for f in files:
            p = folder / f
            img = load_case(name, p).image
            z = img.shape[0]
            n_val = max(1, int(round(VAL_FRACTION * z)))
            std = img.reshape(z, -1).std(1)
            case = p.name.split(".")[0]
            for k in range(z):
                if std[k] >= MIN_SLICE_STD:
                    out[int(k >= z - n_val)].append(SliceItem(name, str(p), k, case, case))
        return out
    return list_items


_PLAIN_RULE = ("last round(0.2*Z) slices along Z of each volume are val (same volume in "
               "train and val); slices with std < 0.02 skipped")


def _plain(name: str, folder: str, files: tuple[str, ...], modality: str, method: str) -> SourceSpec:
    return SourceSpec(name, folder, modality, "radial" if method == "ct" else "cartesian", None,
                      _list_plain(name, files), _load_plain(method), _PLAIN_RULE)


_BRATS_RULE = "by patient: train pat0003+pat0005, val pat0006; axial slices with brain mask >= 10%"

#: Registry: source name -> :class:`SourceSpec`.
SOURCES: dict[str, SourceSpec] = {
    "acdc": SourceSpec("acdc", "acdc", "cardiac_mri", "cartesian", "acdc", _list_acdc, _load_acdc,
                       "train_slices (70 patients) / every slice of val_volumes (10 other patients)"),
    "brats2015": SourceSpec("brats2015", "brats2015", "brain_mri", "cartesian", "brats2015",
                            _list_brats("T1c"), _load_brats, _BRATS_RULE + " (T1c)"),
    "brats2015_flair": SourceSpec("brats2015_flair", "brats2015", "brain_mri", "cartesian",
                                  "brats2015", _list_brats("Flair"), _load_brats,
                                  _BRATS_RULE + " (FLAIR)"),
    "covid_ct": SourceSpec("covid_ct", "covid_ct", "lung_ct", "radial", "covid_ct", _list_covid,
                           _load_covid, "no patient ids: val = the 10 largest numeric file stems"),
    "totalseg_ct": _plain("totalseg_ct", "totalseg_ct_mr", ("example_ct_sm.nii.gz",),
                          "abdomen_ct", "ct"),
    "totalseg_mr": _plain("totalseg_mr", "totalseg_ct_mr", ("example_mr_sm.nii.gz",),
                          "abdomen_mri", "mri"),
    "pyradiomics_brain": _plain("pyradiomics_brain", "pyradiomics_mri", ("brain1_image.nrrd",),
                                "brain_mri", "mri"),
    "spinalcord_mri": _plain("spinalcord_mri", "spinalcord_mri", ("t1/t1w.nii.gz", "t2/t2.nii.gz"),
                             "spine_mri", "mri"),
}


def describe_splits(root: Optional[Path] = None, sources: Optional[list[str]] = None) -> dict:
    """Split table: ``name -> {train, val, train_patients, val_patients, modality, mask_kind, label_set, rule}``.

    ``train``/``val`` are slice counts, ``train_patients`` a count, ``val_patients`` the
    sorted patient ids of val (file stems where no patient id exists).
    """
    out = {}
    for name in sources or list(SOURCES):
        spec = SOURCES[name]
        train, val = spec.items(root)
        out[name] = {
            "train": len(train), "val": len(val),
            "train_patients": len({it.patient for it in train}),
            "val_patients": sorted({it.patient for it in val}),
            "modality": spec.modality, "mask_kind": spec.mask_kind,
            "label_set": spec.label_set, "rule": spec.split_rule,
        }
    return out


def volume_slices(source: str, split: str = "val", root: Optional[Path] = None
                  ) -> Iterator[tuple[str, np.ndarray, Optional[np.ndarray], tuple[float, ...]]]:
    """Yield ``(case_id, clean (Z, H, W) float32 [0, 1], label (Z, H, W) uint8 or None, spacing)``.

    One entry per volume of the split, stacking exactly the slices of that split
    (e.g. every slice of each ACDC val volume; the brain-covering slices of BraTS).
    For sources whose train items are single 2-D files (ACDC train, COVID) each file
    is its own "volume" with ``Z == 1``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    items = SOURCES[source].items(root)[split == "val"]
    groups: dict[tuple[str, str], list[int]] = {}
    for it in items:
        groups.setdefault((it.case, it.path), []).append(it.index)
    for (case, path), idx in groups.items():
        data = load_case(source, path)
        lab = data.label[idx] if data.label is not None else None
        yield case, np.ascontiguousarray(data.image[idx]), lab, data.spacing
