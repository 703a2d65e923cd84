"""In-memory training data (napari_vldun.data.memory) and training on it through iter_train's run_builder,
on a real ACDC validation volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.data import ITEM_MASK_KINDS, PairsDataset, folder_pair_datasets, make_pair_datasets, split_pairs
from napari_vldun.io import file_stem
from napari_vldun.model.config import DEGRADATIONS, LABEL_SETS

KEYS = {"clean", "degraded", "label", "has_label", "label_set_index", "modality", "degradation", "mask_kind",
        "accel", "fraction", "source_index", "index", "kspace", "mask"}


@pytest.fixture(scope="module")
def acdc_volume(shared_data):
    """patient002_frame01 of the ACDC validation volumes: image (Z, H, W) float32 in [0, 1], labels 0..3."""
    h5py = pytest.importorskip("h5py")
    path = shared_data / "acdc" / "val_volumes" / "patient002_frame01.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with h5py.File(path, "r") as f:
        image = np.clip(np.asarray(f["image"][()], np.float32), 0.0, 1.0)
        label = np.asarray(f["label"][()])
    assert image.ndim == 3 and image.shape == label.shape
    return image, label


def datasets(volume, **kw):
    opts = dict(label_set="acdc", modality="cardiac_mri", val_fraction=0.2, crop=48, seed=0,
                pair_names=["patient002_frame01"])
    opts.update(kw)
    return make_pair_datasets([volume], **opts)


def test_sample_format(acdc_volume):
    train, val = datasets(acdc_volume, noise_sigma_range=(0.0, 0.02))
    z = acdc_volume[0].shape[0]
    assert len(train) + len(val) == z and len(val) == round(0.2 * z)
    assert train.label_sets == ["acdc"] and train.label_classes == {"acdc": list(LABEL_SETS["acdc"])}
    assert train.modalities == ["cardiac_mri"] and train.sources == ["patient002_frame01"]
    for ds in (train, val):
        for i in range(len(ds)):
            s = ds[i]
            assert set(s) == KEYS
            assert s["clean"].shape == s["degraded"].shape == (1, 48, 48)
            assert s["clean"].dtype == s["degraded"].dtype == torch.float32
            assert s["label"].shape == (48, 48) and s["label"].dtype == torch.int64
            assert 0 <= s["clean"].min() and s["clean"].max() <= 1 and torch.isfinite(s["degraded"]).all()
            assert 0 <= int(s["label"].min()) and int(s["label"].max()) <= 3
            assert bool(s["has_label"]) and int(s["label_set_index"]) == 0 and int(s["modality"]) == 0
            assert int(s["degradation"]) == DEGRADATIONS.index("undersampling")
            assert int(s["mask_kind"]) == ITEM_MASK_KINDS.index("cartesian")
            assert 0 < float(s["fraction"]) < 1 and int(s["index"]) == i and int(s["source_index"]) == 0
            for k in ("has_label", "label_set_index", "modality", "degradation", "mask_kind", "source_index",
                      "index", "accel", "fraction"):
                assert s[k].ndim == 0, k
    assert all(float(val[i]["accel"]) == 4.0 for i in range(len(val)))  # the fixed validation acceleration
    assert all(2.0 <= float(train[i]["accel"]) <= 8.0 for i in range(len(train)))
    # the labelled heart is in the centre crop of some validation slice
    assert any((val[i]["label"] > 0).any() for i in range(len(val)))
    radial, _ = datasets(acdc_volume, mask_kind="radial")
    assert int(radial[0]["mask_kind"]) == ITEM_MASK_KINDS.index("radial")


def test_validation_split(acdc_volume):
    image, label = acdc_volume
    z = image.shape[0]
    _, val = datasets(acdc_volume, val_fraction=0.01)
    assert len(val) == 1 and val.provenance["split_by"] == "slices"  # at least one validation slice
    train, val = datasets(acdc_volume, val_fraction=0.5)
    assert len(val) == z // 2 and not set(train.items) & set(val.items)
    # one 2-D pair of two slices: one each
    tr, va, by = split_pairs([(image[:2], label[:2])], 0.01)
    assert len(tr) == len(va) == 1 and by == "slices"
    # several pairs: split by pair, each pair entirely on one side
    pairs = [(image[k:k + 2], label[k:k + 2]) for k in range(0, 8, 2)]
    train, val = make_pair_datasets(pairs, label_set="acdc", modality="cardiac_mri", val_fraction=0.2, crop=48,
                                    pair_names=["a", "b", "c", "d"])
    assert val.provenance["split_by"] == "pairs" and len(val) == 2 and len(train) == 6
    assert {p for p, _ in val.items}.isdisjoint({p for p, _ in train.items})
    assert val.provenance["val_pairs"] == [val.sources[p] for p in sorted({p for p, _ in val.items})]
    # 2-D pairs become one-slice volumes
    train, val = make_pair_datasets([(image[3], label[3]), (image[5], label[5])], label_set="acdc",
                                    modality="cardiac_mri", crop=48)
    assert len(train) == len(val) == 1
    with pytest.raises(ValueError, match="at least 2"):
        make_pair_datasets([(image[3], label[3])], label_set="acdc", modality="cardiac_mri")
    with pytest.raises(ValueError, match="classes"):
        make_pair_datasets([acdc_volume], label_set="acdc", modality="cardiac_mri", n_classes=3)
    with pytest.raises(ValueError, match="shape"):
        make_pair_datasets([(image, label[:-1])], label_set="acdc", modality="cardiac_mri")


def test_val_degradation_deterministic(acdc_volume):
    train, val = datasets(acdc_volume)
    first = [val[i] for i in range(len(val))]
    val.set_epoch(5)
    again_train, again_val = datasets(acdc_volume)  # a fresh dataset: same validation inputs
    for i, s in enumerate(first):
        for other in (val[i], again_val[i]):
            assert torch.equal(s["degraded"], other["degraded"]) and torch.equal(s["label"], other["label"])
    # training draws depend on the epoch (and only on it)
    a = train[0]["degraded"]
    train.set_epoch(1)
    assert not torch.equal(a, train[0]["degraded"])
    train.set_epoch(0)
    assert torch.equal(a, train[0]["degraded"]) and torch.equal(a, again_train[0]["degraded"])


def test_folders_matched_by_name(tmp_path, acdc_volume):
    image, label = acdc_volume
    assert file_stem("Case1.NII.GZ") == "Case1" and file_stem("a.b.nrrd") == "a.b" and file_stem("x.txt") == "x"
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for k in range(3):
        np.save(tmp_path / "img" / f"case{k}.npy", image[2 * k:2 * k + 2])
        np.save(tmp_path / "lab" / f"case{k}_seg.npy", label[2 * k:2 * k + 2])
    np.save(tmp_path / "img" / "unmatched.npy", image[:1])
    train, val = folder_pair_datasets(tmp_path / "img", tmp_path / "lab", label_set="acdc", modality="cardiac_mri",
                                      val_fraction=0.34, crop=48)
    assert train.sources == ["case0", "case1", "case2"]
    prov = val.provenance
    assert prov["origin"] == "folders" and prov["pairs"] == ["case0", "case1", "case2"]
    assert prov["split_by"] == "pairs" and prov["val_pairs"] == ["case1"] and len(val) == 2 and len(train) == 4
    assert prov["images_dir"] == str(tmp_path / "img")
    np.testing.assert_array_equal(train.pairs[0][1], label[:2])
    with pytest.raises(ValueError, match="no image"):
        folder_pair_datasets(tmp_path / "img", tmp_path, label_set="acdc", modality="cardiac_mri")


def test_iter_train_on_pairs(tmp_path, acdc_volume):
    from napari_vldun.model.checkpoint import load_checkpoint
    from napari_vldun.train import TrainConfig, iter_train, make_run_builder

    cfg = TrainConfig(model="tiny", model_overrides={"use_priors": False}, sources=[], crop=48, batch_size=2,
                      epochs=1, steps_per_epoch=2, out_dir=str(tmp_path / "run"), device="cpu", seed=0)
    with pytest.raises(ValueError, match="run_builder"):  # no sources and no datasets
        next(iter(iter_train(cfg)))
    train, val = datasets(acdc_volume, val_fraction=0.1)
    events = list(iter_train(cfg, run_builder=make_run_builder(train, val)))
    kinds = [e.kind for e in events]
    assert kinds == ["start", "step", "step", "epoch", "checkpoint", "checkpoint", "done"]
    start = events[0].metrics
    assert start["train_slices"] == len(train) and start["val_slices"] == len(val) == 1
    assert start["label_sets"] == ["acdc"] and "napari layers" in start["notes"][0]
    assert all(np.isfinite(e.metrics["loss"]) for e in events if e.kind == "step")
    assert "val_psnr" in events[3].metrics and "val_dice" in events[3].metrics

    model, meta = load_checkpoint(tmp_path / "run" / "best")
    assert list(model.cfg.label_sets) == ["acdc"] and "cardiac_mri" in model.cfg.modalities
    assert meta["label_sets"]["acdc"]["classes"] == list(LABEL_SETS["acdc"])
    assert list(meta["data_sources"]) == ["napari layers"] and meta["train_sources"] == []
    prov = meta["data_provenance"]
    assert prov["origin"] == "napari layers" and prov["pairs"] == ["patient002_frame01"]
    assert prov["train_slices"] == len(train) and prov["val_slices"] == 1 and prov["label_set"] == "acdc"
    assert meta["train_config"]["sources"] == [] and meta["global_step"] == 2
    y = torch.from_numpy(acdc_volume[0][4, :64, :64].copy())[None, None]
    with torch.no_grad():
        out = model(y)
    assert out.restored.shape == y.shape and out.seg_logits["acdc"].shape == (1, 4, 64, 64)
    # the datasets were re-indexed to the model's modality list
    assert train.modalities == val.modalities == list(model.cfg.modalities)
    assert int(train[0]["modality"]) == list(model.cfg.modalities).index("cardiac_mri")
    # a dataset that is not PairsDataset-like is refused with a clear message
    with pytest.raises(TypeError, match="label_sets"):
        next(iter(iter_train(cfg.replace(overwrite=True), run_builder=make_run_builder(object(), val))))
    assert isinstance(train, PairsDataset)
