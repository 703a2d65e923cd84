"""Qt-free result measurements (napari_vldun.measure): label areas / volumes / intensities, CSV, Dice
tables, normalised entropy and the atomic result set. No display needed."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from napari_vldun.inference import normalised_entropy
from napari_vldun.measure import (dice_table, iter_save_results, label_measurements, measurements_csv,
                                  result_file_names, save_results, write_measurements_csv)


def _labels() -> np.ndarray:
    lab = np.zeros((3, 8, 10), np.uint8)
    lab[0, :2, :5] = 1      # 10 voxels of class 1 on slice 0
    lab[1, :3, :3] = 1      # 9 on slice 1
    lab[2, 4:, :] = 3       # 40 of class 3 on slice 2 (class 2 absent)
    return lab


def test_label_measurements_areas_volumes_means():
    lab = _labels()
    img = np.arange(lab.size, dtype=np.float32).reshape(lab.shape)
    rows = label_measurements(lab, img, (2.0, 0.5, 0.4), ["bg", "a", "b", "c"])
    by = {r["label"]: r for r in rows}
    assert sorted(by) == [1, 2, 3] and by[2]["name"] == "b"
    assert by[1]["voxels"] == 19 and by[2]["voxels"] == 0 and by[3]["voxels"] == 40
    assert by[1]["area_mm2"] == pytest.approx([10 * 0.2, 9 * 0.2, 0.0])
    assert by[1]["volume_ml"] == pytest.approx(19 * 2.0 * 0.5 * 0.4 / 1000)
    assert by[3]["volume_ml"] == pytest.approx(40 * 0.4 / 1000)
    assert by[1]["mean_intensity"] == pytest.approx(float(img[lab == 1].mean()))
    assert math.isnan(by[2]["mean_intensity"])
    # NaN image voxels (slices not computed) are left out of the mean; a slice subset; unknown labels named
    img[0] = np.nan
    lab[1, 7, 9] = 7
    rows = label_measurements(lab, img, (1.0, 1.0), ["bg", "a"], slices=[0, 1])
    by = {r["label"]: r for r in rows}
    assert sorted(by) == [1, 7] and by[7]["name"] == "label 7" and by[7]["slices"] == [0, 1]
    assert by[1]["mean_intensity"] == pytest.approx(float(img[1][lab[1] == 1].mean()))
    assert by[1]["volume_ml"] == pytest.approx(19 / 1000)  # 2-entry spacing: 1 mm slices
    with pytest.raises(ValueError, match="negative"):
        label_measurements(-lab.astype(np.int16), None, (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        label_measurements(lab, img[:2], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        label_measurements(lab, None, (0, 1, 1))


def test_measurements_csv_round_trip(tmp_path):
    lab = _labels()
    rows = [{**r, "source": "result"} for r in label_measurements(lab, None, (1, 1, 1), ["bg", "a"])]
    rows += [{**r, "source": "reference"} for r in label_measurements(lab, None, (1, 1, 1), ["bg", "a"], slices=[2])]
    table = list(csv.DictReader(io.StringIO(measurements_csv(rows))))
    assert [(t["source"], t["label"]) for t in table] == [("result", "1"), ("result", "3"), ("reference", "1"),
                                                          ("reference", "3")]
    assert table[0]["area_mm2_slice_1"] == "9" and table[0]["mean_intensity"] == ""
    assert table[2]["area_mm2_slice_0"] == "" and table[3]["area_mm2_slice_2"] == "40"
    p = write_measurements_csv(tmp_path / "m.csv", rows)
    assert p.read_text() == measurements_csv(rows)
    with pytest.raises(FileExistsError):
        write_measurements_csv(p, rows)


def test_dice_table_per_class_and_slice():
    from napari_vldun.metrics import dice_per_class

    true = _labels()
    pred = true.copy()
    pred[1] = 0          # class 1 missed on slice 1
    pred[2, 4, :] = 2    # class 2 predicted where absent
    t = dice_table(pred, true, 4, ["bg", "a", "b", "c"], slices=[1, 2])
    assert t["classes"] == ["a", "b", "c"]
    assert t["per_class"] == {"a": dice_per_class(pred[1:], true[1:], 4)[1], "b": 0.0,
                              "c": pytest.approx(2 * 30 / 70)}
    assert [s["slice"] for s in t["per_slice"]] == [1, 2]
    assert t["per_slice"][0]["dice"] == {"a": 0.0, "b": None, "c": None}
    assert t["per_slice"][1]["dice"]["a"] is None


def test_normalised_entropy():
    logits = np.zeros((4, 2, 3), np.float32)
    logits[0, 0, 0] = 50.0  # certain
    h = normalised_entropy(logits)
    assert h.shape == (2, 3) and h.dtype == np.float32
    assert h[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert h[1, 1] == pytest.approx(1.0)  # uniform over 4 classes
    two = np.stack([np.zeros((1, 1)), np.full((1, 1), np.log(3.0))])  # p = (1/4, 3/4)
    expect = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(2)
    assert normalised_entropy(two)[0, 0] == pytest.approx(expect, rel=1e-5)
    assert normalised_entropy(np.ones((1, 2, 2))).max() == 0.0


def test_save_results_atomic_set(tmp_path, monkeypatch):
    import nibabel as nib

    from napari_vldun.io import Volume
    from napari_vldun.io.volume import default_affine

    lab = _labels()
    img = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    like = Volume(data=np.zeros(lab.shape, np.float32), spacing=(2.0, 0.5, 0.4),
                  affine=default_affine((2.0, 0.5, 0.4)))
    rows = label_measurements(lab, img, (2.0, 0.5, 0.4), ["bg", "a"])
    out = tmp_path / "results"
    paths = save_results(out, "my scan/1", summary={"weights": "w", "x": math.nan}, restored=img, labels=lab,
                         uncertainty=img / 2, like=like, measurements=rows)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"my_scan_1_{n}" for n in ("restored.nii.gz", "labels.nii.gz", "uncertainty.nii.gz", "measurements.csv",
                                   "results.json"))
    r = nib.load(paths["restored"])
    np.testing.assert_allclose(np.asarray(r.dataobj).transpose(2, 1, 0), img)
    np.testing.assert_allclose(r.header.get_zooms(), (0.4, 0.5, 2.0))
    labs = nib.load(paths["labels"])
    assert labs.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(labs.dataobj).transpose(2, 1, 0), lab)
    doc = json.loads(paths["summary"].read_text())
    assert doc["x"] is None and doc["weights"] == "w" and "torch" in doc["versions"]
    assert doc["measurements"][0]["voxels"] == 19 and set(doc["files"]) == set(paths)
    # an existing file: refused before anything is written, unless overwrite
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="would overwrite"):
        save_results(out, "my scan/1", summary={}, labels=lab, like=like)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    save_results(out, "my scan/1", summary={"again": 1}, labels=lab, like=like, overwrite=True)
    assert json.loads(paths["summary"].read_text())["again"] == 1
    # a wrong shape is refused before anything is written; a failure after the NIfTIs were written (the
    # JSON, last) leaves nothing behind, not even the new folder
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="shape"):
        save_results(other, "s", summary={}, restored=img, uncertainty=img[:1], like=like)
    assert not other.exists()
    import napari_vldun.io.atomic as atomic

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_json", full_disk)
    with pytest.raises(OSError, match="space"):
        save_results(other, "s", summary={}, restored=img, labels=lab, like=like)
    assert not other.exists() and sorted(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    # cancelled after the first file: closing the generator leaves nothing
    gen = iter_save_results(other, "s", summary={}, restored=img, labels=lab, like=like)
    assert next(gen)[::2] == (0, other / "s_restored.nii.gz") and next(gen) == (1, 3, other / "s_labels.nii.gz")
    gen.close()
    assert not other.exists() and sorted(tmp_path.iterdir()) == [out]
    assert set(result_file_names(other, "s", ["labels"])) == {"labels"}
