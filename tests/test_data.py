"""Tests for napari_vldun.data (sources, splits, SliceDataset) on the real shared data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vldun.data import (ITEM_MASK_KINDS, SOURCES, SliceDataset, augment_pair,
                               default_data_root, describe_splits, load_case, make_loader,
                               volume_slices)
from napari_vldun.io import read_image
from napari_vldun.model.config import DEGRADATIONS, LABEL_SETS

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")

LABELLED = ["acdc", "brats2015", "covid_ct"]
KEYS = {"clean", "degraded", "label", "has_label", "label_set_index", "modality",
        "degradation", "mask_kind", "accel", "fraction", "source_index", "index", "kspace", "mask"}


def _ds(sources, split="train", **kw) -> SliceDataset:
    kw.setdefault("crop", 48)
    kw.setdefault("max_slices_per_source", 4)
    return SliceDataset(sources, split, root=DATA, **kw)


# ------------------------------------------------------------------ root and splits
def test_default_data_root(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("VLDUN_DATA", raising=False)
    assert default_data_root().resolve() == DATA.resolve()
    monkeypatch.setenv("VLDUN_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.setenv("VLDUN_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="VLDUN_DATA"):
        default_data_root()


@pytest.mark.parametrize("name", LABELLED)
def test_labelled_splits_disjoint(name: str) -> None:
    train, val = SOURCES[name].items(DATA)
    assert train and val
    assert not {(i.path, i.index) for i in train} & {(i.path, i.index) for i in val}
    assert not {i.patient for i in train} & {i.patient for i in val}
    assert all(i.source == name for i in train + val)


def test_acdc_patients_from_file_names() -> None:
    train, val = SOURCES["acdc"].items(DATA)
    pat = re.compile(r"(patient\d{3})")
    train_p = {pat.match(Path(i.path).name).group(1) for i in train}
    val_p = {pat.match(Path(i.path).name).group(1) for i in val}
    assert len(train_p) == 70 and len(val_p) == 10 and not train_p & val_p
    assert all("train_slices" in i.path for i in train)
    assert all("val_volumes" in i.path for i in val)
    vols = list(volume_slices("acdc", "val", root=DATA))
    assert len(vols) == 20 and sum(v[1].shape[0] for v in vols) == len(val)
    for case, img, lab, spacing in vols[:3]:
        assert img.dtype == np.float32 and img.ndim == 3 and 6 <= img.shape[0] <= 17
        assert lab.shape == img.shape and 0 <= img.min() and img.max() <= 1 and lab.max() <= 3


def test_unlabelled_split_holds_out_last_slices() -> None:
    for name in ("totalseg_ct", "totalseg_mr", "pyradiomics_brain", "spinalcord_mri"):
        spec = SOURCES[name]
        assert spec.label_set is None
        train, val = spec.items(DATA)
        assert train and val
        for path in {i.path for i in val}:
            assert max(i.index for i in train if i.path == path) < min(
                i.index for i in val if i.path == path)


def test_covid_holdout_is_last_ten_stems() -> None:
    train, val = SOURCES["covid_ct"].items(DATA)
    stems = sorted(int(Path(i.path).stem) for i in train + val)
    assert len(stems) == 50 and len(val) == 10
    assert sorted(int(Path(i.path).stem) for i in val) == stems[-10:]


def test_describe_splits() -> None:
    d = describe_splits(DATA)
    assert set(d) == set(SOURCES)
    assert d["acdc"]["train"] == 1312 and d["acdc"]["val"] > 0 and len(d["acdc"]["val_patients"]) == 10
    assert d["brats2015"]["val_patients"] == ["pat0006"]
    assert d["covid_ct"] == {**d["covid_ct"], "train": 40, "val": 10}
    assert all(v["train"] > 0 and v["val"] > 0 for v in d.values())


def test_brats_axial_slices_with_brain() -> None:
    train, val = SOURCES["brats2015"].items(DATA)
    vol = read_image(train[0].path)
    assert vol.shape == (155, 240, 240)
    assert np.argmax(np.abs(vol.affine[:3, 0])) == 2  # first axis -> world S (axial slices)
    for it in train[::40] + val[::30]:
        data = load_case("brats2015", it.path)
        assert data.image.shape[1:] == (240, 240)
        assert data.info["brain_coverage"][it.index] >= 0.10
    ds = _ds(["brats2015"], "val", crop=None, max_slices_per_source=3)
    s = ds[1]
    assert s["clean"].shape == (1, 240, 240) and s["label"].shape == (240, 240)
    assert (s["clean"] > 0).float().mean() > 0.05 and s["label"].max() <= 4


# ------------------------------------------------------------------ samples
def test_sample_format_all_sources() -> None:
    names = [n for n in SOURCES if n != "brats2015_flair"]
    ds = _ds(names, max_slices_per_source=2)
    assert ds.modalities == sorted({SOURCES[n].modality for n in names})
    assert ds.label_sets == [k for k in LABEL_SETS if k in ("acdc", "brats2015", "covid_ct")]
    for i in range(len(ds)):
        s, info = ds[i], ds.item_info(i)
        assert set(s) == KEYS
        assert s["clean"].shape == s["degraded"].shape == (1, 48, 48)
        assert s["clean"].dtype == s["degraded"].dtype == torch.float32
        assert s["label"].shape == (48, 48) and s["label"].dtype == torch.int64
        assert 0 <= s["clean"].min() and s["clean"].max() <= 1
        assert torch.isfinite(s["degraded"]).all() and s["degraded"].min() >= 0
        assert s["degraded"].max() < 1.5
        assert ds.modalities[int(s["modality"])] == info["modality"]
        assert ds.sources[int(s["source_index"])] == info["source"]
        assert int(s["index"]) == i
        assert int(s["degradation"]) == DEGRADATIONS.index("undersampling")
        assert 2.0 <= float(s["accel"]) <= 8.0 and 0 < float(s["fraction"]) < 1
        assert ITEM_MASK_KINDS[int(s["mask_kind"])] == SOURCES[info["source"]].mask_kind
        if info["label_set"] is None:
            assert not s["has_label"] and int(s["label_set_index"]) == -1
            assert s["label"].abs().sum() == 0
        else:
            assert s["has_label"] and ds.label_sets[int(s["label_set_index"])] == info["label_set"]
            assert 0 <= s["label"].min() and s["label"].max() < len(LABEL_SETS[info["label_set"]])


def test_ct_radial_mri_cartesian_and_fixed_accel() -> None:
    ds = _ds(["covid_ct", "totalseg_ct", "acdc", "brats2015"], "val", crop=64, fixed_accel=4.0,
             max_slices_per_source=2)
    for i in range(len(ds)):
        s, info = ds[i], ds.item_info(i)
        expected = "radial" if info["modality"].endswith("_ct") else "cartesian"
        assert info["mask_kind"] == expected == ITEM_MASK_KINDS[int(s["mask_kind"])]
        assert float(s["accel"]) == 4.0
        assert abs(float(s["fraction"]) - 0.25) < 0.05


def test_modalities_argument() -> None:
    mods = ["lung_ct", "cardiac_mri", "brain_mri", "extra"]
    ds = _ds(["acdc", "covid_ct"], modalities=mods)
    for i in range(len(ds)):
        assert mods[int(ds[i]["modality"])] == ds.item_info(i)["modality"]
    with pytest.raises(ValueError):
        _ds(["acdc", "covid_ct"], modalities=["cardiac_mri"])


def _dihedral(x: np.ndarray):
    for k in range(4):
        r = np.rot90(x, k)
        for ud in (False, True):
            for lr in (False, True):
                y = r[::-1] if ud else r
                yield (k, ud, lr), (y[:, ::-1] if lr else y)


def test_augment_pair_keeps_alignment() -> None:
    _, val = SOURCES["acdc"].items(DATA)
    data = load_case("acdc", val[len(val) // 2].path)
    img, lab = data.image[val[len(val) // 2].index], data.label[val[len(val) // 2].index]
    assert lab.max() > 0
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(12):
        a_img, a_lab = augment_pair(img, lab, rng)
        ops = [op for op, y in _dihedral(img) if y.shape == a_img.shape and np.array_equal(y, a_img)]
        assert ops, "augmented image is not a dihedral transform of the input"
        assert any(np.array_equal(dict(_dihedral(lab))[op], a_lab) for op in ops)
        seen.add(ops[0])
    assert len(seen) > 3


def test_dataset_augmentation_aligned_with_label() -> None:
    plain = _ds(["acdc", "brats2015", "covid_ct"], crop=64, augment=False, seed=5)
    aug = _ds(["acdc", "brats2015", "covid_ct"], crop=64, augment=True, seed=5)
    n_changed = 0
    for i in range(len(plain)):
        p_img, p_lab = plain.clean_pair(i)
        s = aug[i]
        a_img, a_lab = s["clean"][0].numpy(), s["label"].numpy()
        ops = [op for op, y in _dihedral(p_img) if np.array_equal(y, a_img)]
        assert ops
        labs = dict(_dihedral(p_lab.astype(np.int64)))
        assert any(np.array_equal(labs[op], a_lab) for op in ops)
        n_changed += not np.array_equal(p_img, a_img)
    assert n_changed > 0


# ------------------------------------------------------------------ determinism
def test_val_degradation_deterministic() -> None:
    a = _ds(["acdc", "covid_ct"], "val", seed=7)
    b = _ds(["acdc", "covid_ct"], "val", seed=7)
    b.set_epoch(3)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["degraded"], sb["degraded"]) and sa["accel"] == sb["accel"]
    c = _ds(["acdc", "covid_ct"], "val", seed=8)
    assert any(not torch.equal(a[i]["degraded"], c[i]["degraded"]) for i in range(len(a)))


def test_train_degradation_changes_with_epoch() -> None:
    ds = _ds(["acdc", "totalseg_ct"], seed=1, augment=False)
    ds.set_epoch(0)
    e0 = [ds[i] for i in range(len(ds))]
    again = ds[0]
    assert torch.equal(again["degraded"], e0[0]["degraded"])
    ds.set_epoch(1)
    e1 = [ds[i] for i in range(len(ds))]
    assert all(float(x["accel"]) != float(y["accel"]) for x, y in zip(e0, e1))
    assert any(not torch.equal(x["degraded"], y["degraded"]) for x, y in zip(e0, e1))


def test_noise_range_adds_noise() -> None:
    clean = _ds(["acdc"], "val", fixed_accel=4.0)
    noisy = _ds(["acdc"], "val", fixed_accel=4.0, noise_sigma_range=(0.05, 0.05))
    diff = noisy[0]["degraded"] - clean[0]["degraded"]
    assert 0.02 < float(diff.std()) < 0.08


def test_joint_samples_carry_their_measurement() -> None:
    """The k-space of a joint sample is what its mask measures of the clean crop: its zero-filled
    magnitude is the degraded image; noise (added in image space) and prior samples carry no mask."""
    from napari_vldun.degradation import fft2c, ifft2c

    for src in ("acdc", "covid_ct"):
        s = _ds([src], "val", fixed_accel=4.0)[1]
        assert s["kspace"].dtype == torch.complex64 and s["kspace"].shape == s["clean"].shape
        torch.testing.assert_close(ifft2c(s["kspace"]).abs(), s["degraded"], atol=1e-5, rtol=0)
        m = s["mask"]
        assert set(m.unique().tolist()) == {0.0, 1.0} and abs(float(m.mean()) - float(s["fraction"])) < 1e-6
        torch.testing.assert_close(s["kspace"], fft2c(s["clean"].to(torch.complex64)) * m, atol=1e-5, rtol=0)
    noisy = _ds(["acdc"], "val", fixed_accel=4.0, noise_sigma_range=(0.05, 0.05))[0]
    assert not noisy["mask"].any()
    prior = _ds(["acdc"], "train", mode="prior")[0]
    assert not prior["mask"].any() and not prior["kspace"].abs().any()


def test_prior_mode_covers_all_degradations() -> None:
    ds = _ds(["acdc", "covid_ct", "spinalcord_mri"], mode="prior", crop=32,
             max_slices_per_source=25)
    seen, inside = set(), []
    for i in range(len(ds)):
        s = ds[i]
        name = DEGRADATIONS[int(s["degradation"])]
        seen.add(name)
        if name == "clean":
            assert torch.allclose(s["degraded"], s["clean"])
        if name == "undersampling":
            assert ITEM_MASK_KINDS[int(s["mask_kind"])] in ("cartesian", "radial")
            assert float(s["fraction"]) < 1.0
        else:
            assert ITEM_MASK_KINDS[int(s["mask_kind"])] == "none" and float(s["accel"]) == 1.0
    assert seen == set(DEGRADATIONS)


def test_balance_by_modality_evens_out_a_skewed_set() -> None:
    """ACDC has ~30x the COVID slices; balanced by modality each is about half of an epoch."""
    plain = _ds(["acdc", "covid_ct"], mode="prior", crop=32, max_slices_per_source=None)
    ds = _ds(["acdc", "covid_ct"], mode="prior", crop=32, max_slices_per_source=None, balance="modality")
    share = lambda d: np.mean([d.item_info(i)["modality"] == "lung_ct" for i in range(len(d))])  # noqa: E731
    assert len(ds) == len(plain) and share(plain) < 0.05
    assert 0.45 < share(ds) < 0.55
    first = [ds.item_info(i)["path"] for i in range(50)]
    assert first == [ds.item_info(i)["path"] for i in range(50)]  # fixed within an epoch
    ds.set_epoch(1)
    assert first != [ds.item_info(i)["path"] for i in range(50)]  # redrawn each epoch
    i = next(i for i in range(len(ds)) if ds.item_info(i)["modality"] == "lung_ct")
    assert ds.modalities[int(ds[i]["modality"])] == "lung_ct"  # the sample is the slice item_info names
    with pytest.raises(ValueError, match="balance"):
        _ds(["acdc"], balance="patient")


def test_balance_by_source_weights_draws_sources_in_those_proportions() -> None:
    ds = _ds(["acdc", "covid_ct"], crop=32, max_slices_per_source=None, balance={"acdc": 3, "covid_ct": 1})
    share = np.mean([ds.item_info(i)["source"] == "acdc" for i in range(len(ds))])
    assert 0.70 < share < 0.80  # 3 : 1, not the 30 : 1 of the slice counts, nor 1 : 1
    with pytest.raises(ValueError, match="missing: \\['covid_ct'\\]"):
        _ds(["acdc", "covid_ct"], balance={"acdc": 1})
    with pytest.raises(ValueError, match="> 0"):
        _ds(["acdc"], balance={"acdc": 0})


# ------------------------------------------------------------------ loaders
def test_make_loader_batches() -> None:
    ds = _ds(["acdc", "totalseg_mr"], crop=32)
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=True)))
    assert batch["clean"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)
    assert batch["accel"].shape == (4,) and batch["has_label"].dtype == torch.bool
    full = _ds(["acdc"], "val", crop=None)
    with pytest.raises(ValueError):
        make_loader(full, batch_size=2, shuffle=False)
    assert next(iter(make_loader(full, 1, False)))["clean"].shape[0] == 1


def test_source_crops_cut_a_smaller_window_and_pad_it_to_the_batch_size() -> None:
    kw = dict(crop=96, max_slices_per_source=6, foreground_oversample=1.0, augment=False, seed=3)
    ds = _ds(["acdc", "brats2015"], source_crops={"brats2015": 40}, **kw)
    plain = _ds(["acdc", "brats2015"], **kw)
    seen, inside = set(), []
    for i in range(len(ds)):
        info, item, ref = ds.item_info(i), ds[i], plain[i]
        assert item["clean"].shape == (1, 96, 96) and item["label"].shape == (96, 96)
        if info["source"] == "brats2015":
            outside = np.ones((96, 96), bool)
            outside[28:68, 28:68] = False  # the 40 px window sits in the middle, zeros around it
            assert item["clean"][0][outside].abs().max() == 0 and (item["label"][outside] == 0).all()
            inside.append(float(item["clean"][0][~outside].abs().max()))
        else:  # other sources are untouched
            assert torch.equal(item["clean"], ref["clean"]) and torch.equal(item["label"], ref["label"])
        seen.add(info["source"])
    assert seen == {"acdc", "brats2015"} and max(inside) > 0
    for bad, match in (({"covid_ct": 40}, "not one of the sources"), ({"brats2015": 200}, r"\[8, crop=96\]"),
                       ({"brats2015": 4.5}, "integer")):
        with pytest.raises(ValueError, match=match):
            _ds(["acdc", "brats2015"], source_crops=bad, **kw)
