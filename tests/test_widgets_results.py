"""GUI tests of what the docks do with a result: the uncertainty layer, the running time / device status,
Save results (NIfTI with the input's geometry + CSV + JSON, atomic, no silent overwrite) and the Compare
dock's measurement and Dice tables (napari + pytest-qt under Xvfb; tiny crops)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Image, Layer  # noqa: E402

from test_widgets import compare_dock, errors, sample_crop, wait_job  # noqa: E402,F401  (errors: a fixture)

pytestmark = pytest.mark.gui


def _restore_dock(viewer, qtbot, layer, **checks):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    w = RestoreSegmentWidget(viewer)
    qtbot.addWidget(w)
    w.image_picker.set_layer(layer)
    w.label_set.setCurrentText("acdc")
    for name, on in checks.items():
        getattr(w, name).setChecked(on)
    return w


def test_uncertainty_layer_and_running_status(make_napari_viewer, qtbot, errors, monkeypatch):
    """"uncertainty layer" adds '<name> uncertainty' (magma, additive, [0, 1], the normalised entropy of the
    chosen softmax; NaN where not computed); the status shows slice, device, elapsed and time left, and a
    hint when the CPU was chosen with a CUDA GPU there."""
    import napari_vldun._widgets.restore as restore
    from napari_vldun._widgets._models import get_model
    from napari_vldun.inference import predict

    viewer = make_napari_viewer()
    img = viewer.add_layer(sample_crop("acdc", 3, 32)["degraded"])
    w = _restore_dock(viewer, qtbot, img, uncertainty=True, use_kspace=False)
    w.model.device.setCurrentText("cpu")
    monkeypatch.setattr(restore, "cuda_available", lambda: True)
    seen: list[str] = []
    start = w.start

    def start_and_watch():
        worker = start()
        worker.yielded.connect(lambda *_: seen.append(w.status.text()))  # after the dock's own handler
        return worker

    w.set_slices("slice range", 1, 2)
    assert wait_job(qtbot, w, start_and_watch) == "done", w.last_message
    unc = viewer.layers[f"{img.name} uncertainty"]
    assert isinstance(unc, Image) and unc.data.shape == img.data.shape and unc.data.dtype == np.float32
    assert unc.colormap.name == "magma" and str(unc.blending) == "additive"
    assert tuple(unc.contrast_limits) == (0.0, 1.0)
    assert np.isnan(unc.data[0]).all() and unc.metadata["vldun"]["slices_done"] == [1, 2]
    assert 0.0 <= np.nanmin(unc.data) and np.nanmax(unc.data) <= 1.0
    job = w._job
    expect = predict(get_model(None, "cpu"), job["unit"], label_set="acdc", slices=[1, 2],
                     return_uncertainty=True).uncertainty
    np.testing.assert_allclose(unc.data[1:], expect, atol=1e-5)
    assert viewer.layers[f"{img.name} restored"].metadata["vldun"]["uncertainty_layer"] == unc.name
    progress = [t for t in seen if t.startswith("slice ")]
    assert progress[0].startswith("slice 1 / 2 on cpu: ") and "elapsed, about" in progress[0] and "left" in progress[0]
    assert progress[-1].startswith("slice 2 / 2 on cpu: ") and "left" not in progress[-1].split("(")[0]
    assert all("CUDA GPU is available" in t for t in seen)
    assert "CUDA GPU is available" in w.status.text()
    # without the box: no uncertainty layer is made or changed; with 'auto' no hint
    viewer.layers.remove(unc)
    w.uncertainty.setChecked(False)
    w.model.device.setCurrentText("auto")
    monkeypatch.setattr(restore, "cuda_available", lambda: False)
    assert wait_job(qtbot, w) == "done", w.last_message
    assert f"{img.name} uncertainty" not in viewer.layers
    assert "CUDA" not in w.status.text()
    assert not errors


def _nifti_input(tmp_path):
    """A 2-slice 48 px crop of the ACDC sample written as NIfTI with an oblique, shifted affine and opened
    through the plugin's reader (its geometry in the layer metadata): ``(layer kwargs tuple, file affine)``."""
    from napari_vldun._reader import layers_from_file
    from napari_vldun.io import Volume, write_nifti

    crop = sample_crop("acdc", 2, 48)["degraded"]
    data = np.asarray(crop.data, np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    nifti_affine = np.array([[1.3 * c, -1.3 * s, 0, -40.0], [1.3 * s, 1.3 * c, 0, 22.5], [0, 0, 8.0, 11.0],
                             [0, 0, 0, 1]])
    from napari_vldun.io.volume import REVERSE3

    path = tmp_path / "scan.nii.gz"
    write_nifti(data, path, like=Volume(data=data, spacing=(8.0, 1.3, 1.3), affine=nifti_affine @ REVERSE3,
                                        meta={"format": "dicom"}))
    (tup,) = layers_from_file(path)
    return tup, nifti_affine


def test_save_results(make_napari_viewer, qtbot, errors, tmp_path, monkeypatch):
    """Save results: restored / labels / uncertainty NIfTI with the input file's affine, measurements CSV and a
    provenance JSON; an existing file is not replaced without a yes; the button asks for a folder."""
    import nibabel as nib
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    from napari_vldun.measure import label_measurements

    (data, kwargs, kind), file_affine = _nifti_input(tmp_path)
    viewer = make_napari_viewer()
    img = viewer.add_layer(Layer.create(data, {**kwargs, "name": "scan"}, kind))
    w = _restore_dock(viewer, qtbot, img, uncertainty=True, use_kspace=False)
    assert not w.save_button.isEnabled()
    assert w.save_results(tmp_path / "none") is None and "no result" in errors.pop()
    w.measurement.precision.setCurrentText("bf16")
    assert wait_job(qtbot, w) == "done", w.last_message
    assert w.save_button.isEnabled()
    out = tmp_path / "out"
    assert wait_job(qtbot, w, lambda: w.save_results(out)) == "done", w.last_message
    paths = w.last_saved
    assert sorted(p.name for p in out.iterdir()) == [f"scan_{n}" for n in (
        "labels.nii.gz", "measurements.csv", "restored.nii.gz", "results.json", "uncertainty.nii.gz")]
    restored, labels, unc = (viewer.layers[f"scan {k}"] for k in ("restored", "labels", "uncertainty"))
    for part, layer in (("restored", restored), ("labels", labels), ("uncertainty", unc)):
        f = nib.load(paths[part])
        np.testing.assert_allclose(f.affine, file_affine, atol=1e-5)
        np.testing.assert_allclose(np.asarray(f.dataobj).transpose(2, 1, 0), layer.data, atol=1e-6)
    assert nib.load(paths["labels"]).get_data_dtype() == np.uint8
    doc = json.loads(paths["summary"].read_text())
    assert doc["input"] == "scan" and doc["source_file"] == str(tmp_path / "scan.nii.gz")
    assert doc["precision"] == "bf16" and doc["passes"] == 1 and doc["mask"] is None
    assert doc["label_set"] == "acdc" and doc["slices_computed"] == [0, 1] and doc["slices_total"] == 2
    assert doc["weights"] == restored.metadata["vldun"]["weights"]
    assert {"napari_vldun", "torch", "numpy"} <= set(doc["versions"])
    assert doc["spacing_mm"] == pytest.approx([8.0, 1.3, 1.3])
    rows = label_measurements(labels.data, restored.data, (8.0, 1.3, 1.3), labels.metadata["vldun"]["label_names"])
    table = list(csv.DictReader(paths["measurements"].open()))
    assert [int(r["voxels"]) for r in table] == [r["voxels"] for r in rows]
    assert [float(r["volume_ml"]) for r in table] == pytest.approx([r["volume_ml"] for r in rows], rel=1e-5)
    assert doc["measurements"][0]["volume_ml"] == pytest.approx(rows[0]["volume_ml"])
    # saving again: refused without overwrite (nothing changes); replaced with it
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert w.save_results(out) is None and "would overwrite" in errors.pop()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert wait_job(qtbot, w, lambda: w.save_results(out, overwrite=True)) == "done"
    # the button: a folder dialog, then a question before replacing
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(out)))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.No))
    w.save_button.click()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps and "not saved" in w.status.text()
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))
    with qtbot.waitSignal(w.job_finished, timeout=60_000):
        w.save_button.click()
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.iterdir()) and "saved" in w.status.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scan.nii.gz"]  # nothing else touched
    # cancelled while writing: nothing is left, not even the new folder (each file write is slowed so that the
    # cancel lands between two files however fast the machine is)
    import time

    from napari_vldun._widgets import _workers, restore as restore_mod

    def slow_save_job(steps, first):
        def slowed():
            try:
                while True:
                    time.sleep(0.5)
                    try:
                        item = next(steps)
                    except StopIteration as stop:
                        return stop.value
                    yield item
            finally:
                steps.close()

        return (yield from _workers.save_job(slowed(), first))

    monkeypatch.setattr(restore_mod, "save_job", slow_save_job)
    gone = tmp_path / "gone"

    def save_and_cancel():
        worker = w.save_results(gone)
        w.cancel()
        return worker

    assert wait_job(qtbot, w, save_and_cancel) == "cancelled"
    assert not gone.exists() and "no file was written" in w.status.text()
    assert not errors


def test_save_results_of_a_dicom_series_adds_a_seg(make_napari_viewer, qtbot, errors, tmp_path, shared_data):
    """An input read from a DICOM series (a crop of the real dcmqi CT) also gets ``<stem>_labels.seg.dcm``: the
    labels layer as it is (edits included) on the computed slices only, each frame on its own source instance;
    when the series is gone, Save results says so and writes nothing."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from test_dicom_seg import frames_by_source, referenced_instances, small_ct_series

    from napari_vldun._reader import layers_from_file

    ct = shared_data / "dcmqi_ct" / "ct-3slice"
    if not ct.is_dir():
        pytest.skip(f"{ct} not found")
    series = small_ct_series(ct, tmp_path / "series", rows=slice(220, 268), cols=slice(180, 220))
    (data, kwargs, kind), = layers_from_file(series)
    viewer = make_napari_viewer()
    img = viewer.add_layer(Layer.create(data, {**kwargs, "name": "scan"}, kind))
    w = _restore_dock(viewer, qtbot, img, use_kspace=False)
    w.set_slices("slice range", 1, 2)
    assert wait_job(qtbot, w) == "done", w.last_message
    labels = viewer.layers["scan labels"]
    painted = np.array(labels.data)
    painted[1, 2:9, 3:30] = 2  # the user's edits count; asymmetric so that any flip shows
    painted[2, 30:40, 25:31] = 3
    painted[0, 5:20, 5:20] = 1  # slice 0 was not computed: not in the SEG
    labels.data = painted
    assert wait_job(qtbot, w, lambda: w.save_results(tmp_path / "out")) == "done", w.last_message
    seg_path = w.last_saved["dicom_seg"]
    assert seg_path.name == "scan_labels.seg.dcm"
    assert json.loads(w.last_saved["summary"].read_text())["files"]["dicom_seg"] == str(seg_path)
    seg = pydicom.dcmread(seg_path)
    src = sorted((pydicom.dcmread(f) for f in series.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV cavity", "LV myocardium", "LV cavity"]
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "napari-vldun" and alg.AlgorithmSource == Path(
        labels.metadata["vldun"]["weights"]).name
    assert referenced_instances(seg) == [str(src[1].SOPInstanceUID), str(src[2].SOPInstanceUID)]
    frames = frames_by_source(seg)
    assert str(src[0].SOPInstanceUID) not in frames
    for k in (1, 2):
        got = frames[str(src[k].SOPInstanceUID)]
        assert {n for n, _ in got} == set(np.unique(painted[k])) - {0}
        for n, mask in got:
            np.testing.assert_array_equal(mask, painted[k] == n)
    # the series is gone: a clear message, nothing written
    for f in series.iterdir():
        f.unlink()
    assert w.save_results(tmp_path / "again") is None
    assert "source DICOM series is gone" in errors.pop() and not (tmp_path / "again").exists()
    assert not errors


def test_compare_dice_and_measurement_tables(make_napari_viewer, qtbot, errors, tmp_path, monkeypatch):
    """Compare shows Dice per class (all computed slices, then per slice) and the measurements of the result
    and reference labels over the result's computed slices; Export CSV writes them (never silently over a
    file); a failed Compare empties the tables."""
    from qtpy.QtWidgets import QFileDialog

    from napari_vldun._widgets._messages import read_table
    from napari_vldun.metrics import dice_per_class
    from napari_vldun.model.config import LABEL_SETS

    names = list(LABEL_SETS["acdc"])
    viewer = make_napari_viewer()
    layers = sample_crop("acdc", 2, 32, scale=(10.0, 1.5, 1.5))
    clean, ref = viewer.add_layer(layers["clean"]), viewer.add_layer(layers["labels"])
    t = np.asarray(ref.data)
    assert t[1].any()
    pred = t.copy()
    pred[1, :, :16] = 0
    pred[0] = 0  # not computed
    res_data = np.asarray(clean.data, np.float32).copy()
    res_data[0] = np.nan
    prov = {"widget": "restore", "source": "x", "slices_done": [1], "label_names": names}
    res = viewer.add_image(res_data, name="res", scale=clean.scale,
                           metadata={"vldun": {**prov, "labels_layer": "res labels"}})
    lab = viewer.add_labels(pred, name="res labels", scale=clean.scale,
                            metadata={"vldun": {**prov, "restored_layer": "res"}})
    w = compare_dock(viewer, qtbot, clean, ref, res)
    assert w.pred_labels_picker.current_layer() is lab
    assert not w.export_button.isEnabled()
    m = w.run_compare()
    assert m is not None, w.last_message
    expect = dice_per_class(pred[[1]], t[[1]], len(names))
    cells = read_table(w.dice_table)
    assert [r[0] for r in cells] == ["all computed", "slice 1"]
    assert [w.dice_table.horizontalHeaderItem(j).text() for j in range(w.dice_table.columnCount())] == \
        ["slices", *names[1:]]
    assert cells[0][1:] == ["n/a" if expect[k] is None else f"{expect[k]:.3f}" for k in range(1, len(names))]
    assert cells[1] == ["slice 1", *cells[0][1:]]  # one computed slice: the same
    rows = w.last_measurements
    assert [r["source"] for r in rows] == ["result"] * (len(names) - 1) + ["reference"] * (len(names) - 1)
    vox = 10.0 * 1.5 * 1.5
    for r in rows:
        labels = pred if r["source"] == "result" else t
        n = int((labels[1] == r["label"]).sum())
        assert r["slices"] == [1] and r["voxels"] == n
        assert r["volume_ml"] == pytest.approx(n * vox / 1000) and r["area_mm2"] == [pytest.approx(n * 1.5 * 1.5)]
        if n:
            assert r["mean_intensity"] == pytest.approx(float(clean.data[1][labels[1] == r["label"]].mean()), rel=1e-5)
    shown = read_table(w.measure_table)
    assert len(shown) == len(rows) and shown[0][:4] == ["result", "1", names[1], str(rows[0]["voxels"])]
    # export: a CSV with the slice-1 areas; refused over an existing file unless overwrite; the button path
    assert w.export_button.isEnabled()
    out = w.export_measurements(tmp_path / "m.csv")
    table = list(csv.DictReader(out.open()))
    assert len(table) == len(rows) and "area_mm2_slice_1" in table[0] and "area_mm2_slice_0" not in table[0]
    assert w.export_measurements(out) is None and "would overwrite" in errors.pop()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "CSV (*.csv)")))
    out.write_text("old")
    w.export_button.click()
    assert out.read_text().startswith("source,label,name,voxels")
    # result labels alone: their measurements over their computed slices, no Dice
    w.ref_labels_picker.set_layer(None)
    assert w.run_compare() is not None
    assert {r["source"] for r in w.last_measurements} == {"result"} and w.last_measurements[0]["slices"] == [1]
    assert [(r["label"], r["voxels"]) for r in w.last_measurements] == \
        [(r["label"], r["voxels"]) for r in rows if r["source"] == "result"]
    assert w.dice_table.rowCount() == 0 and w.measure_table.rowCount() == len(names) - 1
    # a failed Compare: no stale tables
    w.ref_labels_picker.set_layer(viewer.add_labels(np.zeros((2, 16, 16), np.uint8), name="bad"))
    assert w.run_compare() is None and "shape" in errors.pop()
    assert w.measure_table.rowCount() == w.dice_table.rowCount() == 0 and not w.export_button.isEnabled()
    assert not errors
