"""GUI tests of the VL-DUN dock widgets on the bundled samples (napari + pytest-qt under Xvfb).

The model is the shipped checkpoint when there is one, else the random tiny model; both give
outputs of the right shapes, names and colours, which is what is checked here. Inputs are small
crops of the samples so that the whole file runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torch  # noqa: E402
from napari.layers import Image, Labels, Layer  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_vldun._sample_data import sample_layers  # noqa: E402
from napari_vldun._widgets._layers import image_data, to_unit  # noqa: E402
from napari_vldun._widgets._models import get_model, shipped_checkpoint_exists  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 120_000  # ms, per worker


@pytest.fixture
def errors(monkeypatch):
    """Collect napari error notifications instead of showing them."""
    seen: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


def _crop_box(labels: np.ndarray, z: int, size: int) -> tuple[slice, slice]:
    """A size x size window centred on the labels of slice z (or the image centre)."""
    h, w = labels.shape[-2:]
    ys, xs = np.nonzero(labels[z])
    cy, cx = (int(ys.mean()), int(xs.mean())) if ys.size else (h // 2, w // 2)
    y0 = min(max(cy - size // 2, 0), h - size)
    x0 = min(max(cx - size // 2, 0), w - size)
    return slice(y0, y0 + size), slice(x0, x0 + size)


def sample_crop(name: str, n_slices: int = 3, size: int = 64, scale=None) -> dict[str, Layer]:
    """clean / degraded / labels layers of a bundled sample, cropped to (n_slices, size, size)."""
    tuples = sample_layers(name)
    labels = tuples[2][0]
    z_best = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))
    z0 = min(max(z_best - n_slices // 2, 0), max(labels.shape[0] - n_slices, 0))
    ys, xs = _crop_box(labels, z_best, size)
    out = {}
    for (data, kwargs, kind), key in zip(tuples, ("clean", "degraded", "labels")):
        crop = np.ascontiguousarray(data[z0:z0 + n_slices, ys, xs])
        kw = {k: v for k, v in kwargs.items() if k not in ("affine",)}
        kw["name"] = f"{name} {key}"
        kw["metadata"] = {k: v for k, v in kw["metadata"].items() if k != "vldun_volume"}  # a crop: new grid
        if scale is not None:
            kw["scale"] = scale
        out[key] = Layer.create(crop, kw, kind)
    return out


def wait_job(qtbot, widget, start=None):
    """Start (optional) and wait for widget.job_finished; returns the outcome string."""
    outcome = []
    widget.job_finished.connect(outcome.append)
    worker = start() if start is not None else widget.start()
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: bool(outcome), timeout=TIMEOUT)
    widget.job_finished.disconnect(outcome.append)
    return outcome[0]


def degrade_4x(viewer, qtbot, clean):
    """A Degrade dock on ``clean`` and the Cartesian 4x layer it made: ``(widget, layer)``."""
    from napari_vldun._widgets.degrade import DegradeWidget

    w = DegradeWidget(viewer)
    qtbot.addWidget(w)
    w.clean_picker.set_layer(clean)
    w.kind.setCurrentText("cartesian")
    w.accel.setValue(4.0)
    new = w.run_degrade()
    assert new is not None, w.last_message
    return w, new


def stage_dock_on_degraded(viewer, qtbot, z: int):
    """A Stage explorer on a Cartesian 4x copy (with k-space) of a 2-slice 48 px ACDC crop, viewer on slice
    ``z``: ``(widget, clean layer, degraded layer)``."""
    from napari_vldun._widgets.stages import StageExplorerWidget

    clean = viewer.add_layer(sample_crop("acdc", 2, 48)["clean"])
    _, deg = degrade_4x(viewer, qtbot, clean)
    viewer.dims.set_current_step(0, z)
    w = StageExplorerWidget(viewer)
    qtbot.addWidget(w)
    w.image_picker.set_layer(deg)
    return w, clean, deg


def compare_dock(viewer, qtbot, clean, ref_labels, result):
    """A Degrade dock whose Compare has ``clean`` and ``ref_labels`` as references and ``result`` (whose
    labels it picks itself) as the result image."""
    from napari_vldun._widgets.degrade import DegradeWidget

    w = DegradeWidget(viewer)
    qtbot.addWidget(w)
    w.ref_picker.set_layer(clean)
    w.ref_labels_picker.set_layer(ref_labels)
    w.result_picker.set_layer(result)
    return w


def hex_rgba(colour: str) -> np.ndarray:
    c = colour.lstrip("#")
    return np.array([int(c[i:i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])


# --------------------------------------------------------------------------- manifest
def test_docks_open_from_the_manifest(make_napari_viewer, qtbot):
    """Every widget contribution opens as a dock; closing docks leaves the viewer working."""
    import npe2

    pm = npe2.PluginManager.instance()
    if "napari-vldun" not in {m.name for m in pm.iter_manifests()}:
        pm.discover()
    viewer = make_napari_viewer()
    names = [w.display_name for w in pm.get_manifest("napari-vldun").contributions.widgets]
    assert names == ["Restore & Segment", "Priors", "Stage explorer", "Degrade & Compare", "Train"]
    docks, widgets = [], {}
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-vldun", name)
        assert widget.viewer == viewer  # napari hands plugins a public-only proxy of the viewer
        docks.append(dock)
        widgets[name] = widget
    # the docks work through the proxy: restore a small image, the priors dock shows its bars
    img = viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="a")
    restore = widgets["Restore & Segment"]
    assert restore.image_picker.current_layer() == img
    restore.label_set.setCurrentText("acdc")  # "auto" would ask first: noise has no anatomy
    assert wait_job(qtbot, restore) == "done", restore.last_message
    assert "a restored" in viewer.layers and "a labels" in viewer.layers
    assert len(widgets["Priors"].chart.heights(0)) == len(viewer.layers["a restored"].metadata["vldun"]["modalities"])
    for dock in docks:
        viewer.window.remove_dock_widget(dock)
    qtbot.wait(50)
    viewer.add_image(np.zeros((16, 16), np.float32), name="b")  # pickers of closed docks are gone quietly
    viewer.layers["a"].name = "c"
    viewer.layers.remove("b")


def test_stacked_docks_keep_their_controls_in_view(make_napari_viewer, qtbot):
    """Three docks stacked in one column of an 800 px window: each fits (its minimum height leaves room for
    the others), Restore's Run button and progress, and the Train plot stay visible without scrolling (the
    forms scroll instead), and the Degrade dock's last status line can be scrolled to (not cut off)."""
    from napari_vldun._widgets._messages import set_status

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((3, 64, 64), np.float32), name="x")
    docks = {}
    for name in ("Restore & Segment", "Degrade & Compare", "Train"):
        _, docks[name] = viewer.window.add_plugin_dock_widget("napari-vldun", name, tabify=False)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    qtbot.wait(300)

    def shown(widget) -> int:
        return widget.visibleRegion().boundingRect().height()

    assert sum(w.minimumSizeHint().height() for w in docks.values()) < 760
    restore, degrade, train = docks.values()
    assert shown(restore.run_button) == restore.run_button.height() > 0
    assert shown(restore.progress) > 0
    assert shown(train.plot) >= 150 and shown(train.start_button) > 0
    set_status(degrade.compare_result, "a status line at the bottom of the dock")
    degrade.scroll.ensureWidgetVisible(degrade.compare_result)
    qtbot.wait(50)
    assert shown(degrade.compare_result) > 0


def test_label_colours_render_where_labels_are(make_napari_viewer, qtbot):
    """The class colour of the sample labels shows up in the rendered canvas, over the labelled area."""
    from napari_vldun.model.config import LABEL_COLORS

    viewer = make_napari_viewer(show=True)
    layers = sample_crop("ct", 1, 64)
    lab = np.asarray(layers["labels"].data)[0]
    assert 0.02 < (lab > 0).mean() < 0.9
    grey = Layer.create(np.full((64, 64), 0.5, np.float32), {"name": "grey", "contrast_limits": (0, 1)}, "image")
    viewer.add_layer(grey)
    labels = viewer.add_layer(Layer.create(lab, {k: v for k, v in {
        "name": "labels", "colormap": layers["labels"].colormap, "opacity": 1.0}.items()}, "labels"))
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    target = hex_rgba(LABEL_COLORS["covid_ct"][1])[:3] * 255
    is_label = np.abs(shot - target).max(-1) <= 12
    is_grey = np.abs(shot - 128).max(-1) <= 12
    inside = is_label | is_grey  # the 64 x 64 image drawn on a black canvas
    assert inside.sum() > 1000
    assert is_label.sum() / inside.sum() == pytest.approx((lab > 0).mean(), abs=0.03)
    # and where the labels are: rows of the rendered image hold labels like the data's rows
    ys, xs = np.nonzero(inside)
    block = is_label[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    rows = np.array_split(block, 8, axis=0)
    data_rows = np.array_split(lab > 0, 8, axis=0)
    np.testing.assert_allclose([r.mean() for r in rows], [r.mean() for r in data_rows], atol=0.05)
    labels.visible = False
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert (np.abs(shot - target).max(-1) <= 12).sum() == 0


# --------------------------------------------------------------------------- Restore & Segment
def test_restore_segment_end_to_end(make_napari_viewer, qtbot, errors):
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.model.config import LABEL_COLORS, LABEL_SETS

    viewer = make_napari_viewer()
    layers = sample_crop("acdc", 2, 64, scale=(8.0, 1.4, 1.4))
    deg = viewer.add_layer(layers["degraded"])
    deg.translate = (0.0, 10.0, -5.0)
    deg.metadata["patient"] = "p028"
    w = RestoreSegmentWidget(viewer)
    qtbot.addWidget(w)
    w.image_picker.set_layer(deg)
    w.label_set.setCurrentText("acdc")
    assert wait_job(qtbot, w) == "done", w.last_message
    assert not errors

    restored = viewer.layers[f"{deg.name} restored"]
    labels = viewer.layers[f"{deg.name} labels"]
    assert isinstance(restored, Image) and isinstance(labels, Labels)
    assert restored.data.shape == labels.data.shape == deg.data.shape
    assert labels.data.dtype == np.uint8
    for lay in (restored, labels):
        np.testing.assert_allclose(lay.scale, deg.scale)
        np.testing.assert_allclose(lay.translate, deg.translate)
        np.testing.assert_allclose(lay.affine.affine_matrix, deg.affine.affine_matrix)
        assert lay.metadata["patient"] == "p028"
    prov = restored.metadata["vldun"]
    assert prov["widget"] == "restore" and prov["source"] == deg.name
    assert prov["label_set"] == "acdc" and prov["device"] == "cpu"
    assert prov["slices_done"] == [0, 1]
    assert prov["modality_probs"].shape == (2, len(prov["modalities"]))
    np.testing.assert_allclose(prov["modality_probs"].sum(1), 1.0, atol=1e-4)
    assert set(prov["normalisation"]) >= {"method", "lo", "hi"}
    assert prov["random_weights"] == (not shipped_checkpoint_exists())
    assert w.model.warning.isVisibleTo(w) == prov["random_weights"]
    # labels: class names and colours of the label set
    assert list(labels.features["name"]) == list(LABEL_SETS["acdc"])
    assert labels.metadata["vldun"]["label_names"] == list(LABEL_SETS["acdc"])
    for i, colour in enumerate(LABEL_COLORS["acdc"][1:], start=1):
        np.testing.assert_allclose(labels.colormap.map(np.array([i]))[0], hex_rgba(colour), atol=1e-2)
    assert labels.colormap.map(np.array([0]))[0][3] == 0  # background transparent
    # restored in the input's units: inside the normalisation window values map back into [lo, hi]
    lo, hi = prov["normalisation"]["lo"], prov["normalisation"]["hi"]
    if prov["normalisation"]["method"] != "none":
        inside = (deg.data >= lo) & (deg.data <= hi)
        assert restored.data[inside].min() >= lo - 1e-3 and restored.data[inside].max() <= hi + 1e-3


def test_restore_current_slice_updates_own_layer(make_napari_viewer, qtbot, errors):
    """One slice at a time: the other slices are NaN / 0 (transparent: the input shows through them, not
    black), and a run on another slice adds to the same layers."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer(show=True)
    img = viewer.add_layer(sample_crop("brain", 3, 48)["degraded"])
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("brats2015")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    w.set_slices("current slice")
    viewer.dims.set_current_step(0, 1)
    assert wait_job(qtbot, w) == "done", w.last_message
    restored = viewer.layers[f"{img.name} restored"]
    labels = viewer.layers[f"{img.name} labels"]
    assert restored.data.shape == labels.data.shape == img.data.shape
    assert restored.metadata["vldun"]["slices_done"] == labels.metadata["vldun"]["slices_done"] == [1]
    assert np.isfinite(restored.data[1]).all() and np.abs(restored.data[1]).sum() > 0
    assert np.isnan(restored.data[0]).all() and np.isnan(restored.data[2]).all()
    assert not labels.data[0].any() and not labels.data[2].any()
    assert np.isnan(restored.metadata["vldun"]["modality_probs"][0]).all()
    # on slice 0 the canvas shows the input, as if the result layers were hidden
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()
    qtbot.wait(100)
    shown = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    restored.visible = labels.visible = False
    qtbot.wait(100)
    bare = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert bare.mean() > 10  # the input is not black
    assert np.abs(shown - bare).max() <= 2
    restored.visible = labels.visible = True
    n_layers = len(viewer.layers)
    assert labels.metadata["vldun"]["tta"] is False
    w.tta.setChecked(True)  # the second slice with test-time flips: recorded in the provenance
    viewer.dims.set_current_step(0, 2)
    assert wait_job(qtbot, w) == "done", w.last_message
    assert labels.metadata["vldun"]["tta"] is True
    assert len(viewer.layers) == n_layers  # updated in place
    assert viewer.layers[f"{img.name} restored"] is restored
    assert restored.metadata["vldun"]["slices_done"] == labels.metadata["vldun"]["slices_done"] == [1, 2]
    assert np.isfinite(restored.data[1:]).all() and np.isnan(restored.data[0]).all()
    assert not errors


def test_restore_slice_range(make_napari_viewer, qtbot, errors):
    """"slice range" from / to: only those slices are computed (in either order), the rest stays empty."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    img = viewer.add_layer(sample_crop("acdc", 4, 32)["degraded"])
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert not w.first_slice.isEnabled()
    w.set_slices("slice range", 2, 1)
    assert w.first_slice.isEnabled() and w.last_slice.maximum() == 3
    assert wait_job(qtbot, w) == "done", w.last_message
    restored = viewer.layers[f"{img.name} restored"]
    assert restored.metadata["vldun"]["slices_done"] == [1, 2]
    assert np.isfinite(restored.data[1:3]).all() and np.isnan(restored.data[[0, 3]]).all()
    assert "2 slice(s)" in w.status.text()
    assert not errors


def test_restore_keeps_bright_voxels(make_napari_viewer, qtbot, errors, shared_data):
    """A real brain MRI (two slices of pyradiomics brain1, int16): the restored maximum is the input's, not
    the 99.5th percentile where the network's [0, 1] window ends."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.io import read_image

    data = np.asarray(read_image(shared_data / "pyradiomics_mri" / "brain1_image.nrrd").data)
    z, y, x = np.unravel_index(int(np.argmax(data)), data.shape)
    y0, x0 = min(max(y - 24, 0), data.shape[1] - 48), min(max(x - 24, 0), data.shape[2] - 48)
    crop = np.ascontiguousarray(data[z - 1:z + 1, y0:y0 + 48, x0:x0 + 48])
    viewer = make_napari_viewer()
    img = viewer.add_image(crop, name="brain1")
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert wait_job(qtbot, w) == "done", w.last_message
    restored = viewer.layers["brain1 restored"]
    hi = restored.metadata["vldun"]["normalisation"]["hi"]
    assert crop.max() > hi + 100
    assert restored.data.max() == pytest.approx(crop.max(), rel=0.05)
    assert not errors


def test_restore_cancel_leaves_no_layer(make_napari_viewer, qtbot, errors):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    img = viewer.add_layer(sample_crop("acdc", 6, 48)["degraded"])
    before = [ly.name for ly in viewer.layers]
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    progressed = []

    def start():
        worker = w.start()
        # in the worker thread, right at the first slice's Progress: stop between slices
        worker.yielded.connect(lambda item: (progressed.append(item), worker.quit()) if hasattr(item, "done")
                               else None, Qt.DirectConnection)
        return worker

    assert wait_job(qtbot, w, start) == "cancelled"
    assert len(progressed) == 1 and progressed[0].done < progressed[0].total
    assert [ly.name for ly in viewer.layers] == before
    # the Cancel button right after Run
    def start_and_cancel():
        worker = w.start()
        w.cancel()
        return worker

    assert wait_job(qtbot, w, start_and_cancel) == "cancelled"
    assert [ly.name for ly in viewer.layers] == before
    assert not errors


def test_restore_cancel_stops_between_passes(make_napari_viewer, qtbot, errors, monkeypatch):
    """Cancel during a slice's first pass stops before its next stage (not at the end of the slice's 8
    passes): the Cancel button sets the job's cancel event, which inference checks between stages."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    clean = viewer.add_layer(sample_crop("acdc", 1, 64)["clean"])
    _, deg = degrade_4x(viewer, qtbot, clean)
    before = [ly.name for ly in viewer.layers]
    model = get_model(None, "cpu").model
    priors, passes_run, cancelled = model.priors.forward, [], threading.Event()

    def counting(*args, **kwargs):  # every pass computes the priors of its input first
        passes_run.append(1)
        if len(passes_run) == 1:  # hold the first pass until Cancel was pressed (no race on a busy machine)
            cancelled.wait(TIMEOUT / 1000)
        return priors(*args, **kwargs)

    monkeypatch.setattr(model.priors, "forward", counting)
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(deg)
    w.use_kspace.setChecked(True)
    w.passes.setValue(8)

    def start_then_cancel_in_the_first_pass():
        worker = w.start()
        qtbot.waitUntil(lambda: bool(passes_run), timeout=TIMEOUT)
        w.cancel()
        cancelled.set()
        assert "cancelling" in w.status.text()
        return worker

    assert wait_job(qtbot, w, start_then_cancel_in_the_first_pass) == "cancelled"
    assert len(passes_run) == 1  # stopped inside the first pass; 8 passes without the check between stages
    assert [ly.name for ly in viewer.layers] == before
    assert not errors


def test_restore_asks_before_putting_heart_labels_on_an_abdomen(make_napari_viewer, qtbot, errors, shared_data,
                                                                 monkeypatch):
    """A real abdominal CT (TotalSegmentator example): the shipped prior sees abdomen_ct, for which the
    checkpoint has no label set, so "auto" would fall back to the ACDC heart classes. The dock asks before
    running (no layer, a warning naming both), runs on the second click (the warning stays in the status), and
    asks again for another label-set choice; an explicit label set runs at once."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.io import read_image
    from napari_vldun.pipeline import to_unit_range

    if not shipped_checkpoint_exists():
        pytest.skip("needs the shipped checkpoint's modality prior")
    shown = []
    monkeypatch.setattr("napari_vldun._widgets.restore.show_warning", shown.append)
    unit, _ = to_unit_range(read_image(shared_data / "totalseg_ct_mr" / "example_ct_sm.nii.gz"))
    viewer = make_napari_viewer()
    img = viewer.add_image(np.ascontiguousarray(unit[14:16], np.float32), name="abdomen ct")
    w = RestoreSegmentWidget(viewer)
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert wait_job(qtbot, w) == "question"
    assert "abdomen ct restored" not in viewer.layers and "abdomen ct labels" not in viewer.layers
    text = w.status.text()
    assert "abdomen_ct" in text and "'acdc'" in text and "anyway" in w.run_button.text() and shown
    assert wait_job(qtbot, w) == "done", w.last_message
    assert viewer.layers["abdomen ct labels"].metadata["vldun"]["label_set"] == "acdc"
    assert "no label set" in w.status.text()
    w.label_set.setCurrentText("covid_ct")
    assert "anyway" not in w.run_button.text()
    assert wait_job(qtbot, w) == "done", w.last_message  # chosen by the user: no question
    w.label_set.setCurrentIndex(0)
    assert wait_job(qtbot, w) == "question"
    assert not errors


def test_restore_never_overwrites_foreign_layer(make_napari_viewer, qtbot, errors):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((48, 48)).astype(np.float32), name="slice")
    mine = np.full((48, 48), 7.0, np.float32)
    foreign = viewer.add_image(mine.copy(), name="slice restored")
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert wait_job(qtbot, w) == "done", w.last_message
    np.testing.assert_array_equal(foreign.data, mine)
    assert "vldun" not in foreign.metadata
    new = viewer.layers["slice restored [2]"]
    assert new.metadata["vldun"]["widget"] == "restore" and new.data.shape == (48, 48)
    # a second run updates "[2]", still leaving the user's layer alone
    n = len(viewer.layers)
    assert wait_job(qtbot, w) == "done"
    assert len(viewer.layers) == n
    np.testing.assert_array_equal(foreign.data, mine)
    assert not errors


# --------------------------------------------------------------------------- bad inputs
def _bad_layer(viewer, case: str):
    rng = np.random.default_rng(1)
    if case == "rgb":
        return viewer.add_image((rng.random((32, 32, 3)) * 255).astype(np.uint8), rgb=True, name="rgb")
    if case == "4d":
        return viewer.add_image(rng.random((2, 2, 32, 32)).astype(np.float32), name="four")
    if case == "nan":
        a = rng.random((32, 32)).astype(np.float32)
        a[3, 4] = np.nan
        return viewer.add_image(a, name="nan")
    if case == "tiny":
        return viewer.add_image(rng.random((4, 4)).astype(np.float32), name="tiny")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["rgb", "4d", "nan", "tiny", "no_layer"])
def test_restore_bad_images(make_napari_viewer, qtbot, errors, case):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    if case != "no_layer":
        w.image_picker.set_layer(_bad_layer(viewer, case))
    n = len(viewer.layers)
    assert w.start() is None
    assert len(errors) == 1 and len(viewer.layers) == n
    expected = {"rgb": "RGB", "4d": "4-D", "nan": "NaN", "tiny": "too small", "no_layer": "no input layer"}[case]
    assert expected in errors[0]


def test_non_image_layer_is_refused(make_napari_viewer):
    viewer = make_napari_viewer()
    lab = viewer.add_labels(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="Labels layer"):
        image_data(lab)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_restore_cuda_without_gpu(make_napari_viewer, qtbot, errors):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="x")
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    w.model.device.setCurrentText("cuda")
    assert w.start() is None
    assert len(errors) == 1 and "CUDA" in errors[0]
    assert len(viewer.layers) == 1


@pytest.mark.parametrize("corruption", ["garbage", "mismatch", "missing"])
def test_restore_bad_checkpoint(make_napari_viewer, qtbot, errors, tmp_path, corruption):
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint

    ckpt = tmp_path / "model"
    if corruption == "garbage":
        save_checkpoint(build_model("tiny"), ckpt)
        (tmp_path / "model.safetensors").write_bytes(b"\x00 this is not a safetensors file" * 10)
    elif corruption == "mismatch":
        save_checkpoint(build_model("tiny"), ckpt)
        import json

        doc = json.loads((tmp_path / "model.json").read_text())
        doc["config"]["widths"] = [8, 16, 32]
        (tmp_path / "model.json").write_text(json.dumps(doc))
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="x")
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    w.set_weights(tmp_path / "model.safetensors")
    assert wait_job(qtbot, w) == "error"
    assert len(errors) == 1 and "model" in errors[0]
    assert [ly.name for ly in viewer.layers] == ["x"]


def test_restore_out_of_memory(make_napari_viewer, qtbot, errors, monkeypatch):
    from napari_vldun._widgets.restore import RestoreSegmentWidget

    loaded = get_model(None, "cpu")

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loaded.model, "forward", oom)
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((2, 32, 32)).astype(np.float32), name="x")
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    w.model.device.setCurrentText("cpu")
    assert wait_job(qtbot, w) == "error"
    assert len(errors) == 1 and "out of memory" in errors[0] and "current slice only" in errors[0]
    assert [ly.name for ly in viewer.layers] == ["x"]


# --------------------------------------------------------------------------- Priors
def test_priors_bars_follow_slice(make_napari_viewer, qtbot, errors):
    from napari_vldun._widgets.priors import PriorsWidget
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.inference import predict

    viewer = make_napari_viewer()
    img = viewer.add_layer(sample_crop("acdc", 2, 48)["clean"])
    priors = PriorsWidget(viewer)
    qtbot.addWidget(priors)
    assert priors.chart.heights(0) == []
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert wait_job(qtbot, w) == "done", w.last_message
    restored = viewer.layers[f"{img.name} restored"]
    assert priors.result_picker.current_layer() is restored
    # the model's own probabilities for each slice
    loaded = get_model(None, "cpu")
    unit, _ = to_unit(img.data)
    for z in (1, 0):
        viewer.dims.set_current_step(0, z)
        expected = predict(loaded, unit, slices=[z])
        np.testing.assert_allclose(priors.chart.heights(0), expected.modality_probs[0], atol=1e-5)
        np.testing.assert_allclose(priors.chart.heights(1), expected.degradation_probs[0], atol=1e-5)
        assert priors.slice_index == z
        assert f"slice {z}" in priors.chart.axes[0].get_title()
    assert not errors


# --------------------------------------------------------------------------- Stage explorer
@pytest.mark.parametrize("sample,n", [("ct", 1), ("acdc", 3)])
def test_stage_explorer(make_napari_viewer, qtbot, errors, sample, n):
    from napari_vldun._widgets.stages import StageExplorerWidget

    viewer = make_napari_viewer()
    layer = sample_crop(sample, n, 48)["degraded"]
    if n == 1:  # a true 2-D image
        layer = Layer.create(layer.data[0], {"name": "ct slice", "scale": (0.7, 0.7)}, "image")
    img = viewer.add_layer(layer)
    if n > 1:
        viewer.dims.set_current_step(0, 2)
    w = StageExplorerWidget(viewer)
    qtbot.addWidget(w)
    w.image_picker.set_layer(img)
    assert wait_job(qtbot, w) == "done", w.last_message
    n_stages = get_model(None, "cpu").model.cfg.num_stages
    for band in ("full", "low", "high"):
        st = viewer.layers[f"{img.name} stages {band}"]
        assert st.data.shape[0] == n_stages and st.data.shape[-2:] == (48, 48)
        assert st.data.shape == ((n_stages, 48, 48) if n == 1 else (n_stages, 1, 48, 48))
        assert not st.visible
        assert st.metadata["vldun"]["slices"] == ([0] if n == 1 else [2])
        np.testing.assert_allclose(st.scale[-2:], img.scale[-2:])
    if n > 1:  # the single slice sits at its place along the slice axis
        assert viewer.layers[f"{img.name} stages full"].translate[1] == pytest.approx(img.translate[0] + 2 * img.scale[0])
    assert w.stage_slider.maximum() == n_stages - 1
    full = viewer.layers[f"{img.name} stages full"].data
    for s in (0, n_stages - 1):
        w.stage_slider.setValue(s)
        w.band.setCurrentText("low")
        np.testing.assert_allclose(w.current_map(), w.stages[s, 1])
        w.band.setCurrentText("full")
        np.testing.assert_allclose(w.current_map(), full[s].reshape(48, 48))
        assert w.view.image is not None
    w.show_in_viewer.setChecked(True)
    assert viewer.layers[f"{img.name} stages full"].visible
    assert not viewer.layers[f"{img.name} stages low"].visible
    assert not errors


def test_stage_explorer_uses_the_recorded_kspace(make_napari_viewer, qtbot, errors):
    """Like Restore & Segment, the Stage explorer runs with the layer's recorded k-space and the chosen
    passes (its stages are the model's with that measurement), and says so; unticked: image only."""
    from napari_vldun._widgets._layers import layer_measurement
    from napari_vldun.inference import predict

    viewer = make_napari_viewer()
    w, clean, deg = stage_dock_on_degraded(viewer, qtbot, z=1)
    w.measurement.passes.setValue(2)
    assert wait_job(qtbot, w) == "done", w.last_message
    assert "with recorded k-space, 2 passes" in w.status.text()
    loaded = get_model(None, "cpu")
    meas = layer_measurement(deg, np.asarray(deg.data))
    expected = predict(loaded, meas["unit"], slices=[1], return_stages=True, measurement=meas["measurement"],
                       cascades=2).stages[0]
    np.testing.assert_allclose(w.stages, expected, atol=1e-5)
    assert viewer.layers[f"{deg.name} stages full"].metadata["vldun"]["cascades"] == 2
    w.measurement.use_kspace.setChecked(False)
    assert wait_job(qtbot, w) == "done", w.last_message
    assert "image only" in w.status.text()
    unit, _ = to_unit(deg.data)
    np.testing.assert_allclose(w.stages, predict(loaded, unit, slices=[1], return_stages=True).stages[0], atol=1e-5)
    assert not errors


def test_stage_explorer_grid_and_psnr_per_stage(make_napari_viewer, qtbot, errors):
    """After Compute the dock shows a stages x bands grid of the slice; with the clean reference chosen every
    full-band estimate has its PSNR (the project's psnr of the stage vs the reference slice) under its
    thumbnail and in the plot, the input's as the dashed line; a click on a thumbnail selects it."""
    from napari_vldun._widgets.stages import NO_REFERENCE
    from napari_vldun.metrics import psnr

    viewer = make_napari_viewer()
    w, clean, deg = stage_dock_on_degraded(viewer, qtbot, z=1)
    assert w.reference_picker.current_layer() is None  # default: no reference
    assert not w.grid.tiles
    assert wait_job(qtbot, w) == "done", w.last_message
    n = w.stages.shape[0]
    assert n == len(w.levels) == len(w.titles) >= 2
    assert "with recorded k-space" in w.status.text()
    assert len(w.grid.tiles) == n * 3
    assert sorted(w.grid.tiles) == [(s, b) for s in range(n) for b in range(3)]
    assert all(not t.pixmap().isNull() for t in w.grid.tiles.values())
    assert w.grid.selected() == (n - 1, 0)  # the last stage, full band, as the slider and band say
    # no reference: no numbers, a hint
    assert w.psnrs is None and w.psnr_hint.text() == NO_REFERENCE
    assert "choose a clean reference" in NO_REFERENCE
    assert w.plot.isHidden() and not any(w.grid.caption_texts())
    # the clean reference: PSNR of each full-band estimate vs the reference slice
    w.reference_picker.set_layer(clean)
    expected = [psnr(np.clip(w.stages[s, 0], 0, 1), clean.data[1]) for s in range(n)]
    np.testing.assert_allclose(w.psnrs, expected, atol=1e-6)
    assert w.grid.caption_texts() == [f"{v:.2f} dB" for v in expected]
    assert not w.plot.isHidden()
    np.testing.assert_allclose(w.plot.values(), expected, atol=1e-6)
    assert len(w.plot.values()) == n
    zero_filled = psnr(np.clip(deg.data[1], 0, 1), clean.data[1])
    assert w.input_psnr == pytest.approx(zero_filled, abs=1e-6)
    assert w.plot.input_value() == pytest.approx(zero_filled, abs=1e-6)
    # the shipped weights run their 3 Cartesian passes here: a boundary after each pass but the last
    passes = w.passes
    assert passes == sorted(passes) and len(set(passes)) == 3
    ends = [i for i in range(1, n) if passes[i] != passes[i - 1]]
    assert w.plot.boundary_positions() == [e + 0.5 for e in ends]  # the plot counts stages from 1
    assert f"zero-filled input {zero_filled:.2f} dB" in w.psnr_hint.text()
    if shipped_checkpoint_exists():  # the trained model improves on the zero-filled input
        assert expected[-1] > zero_filled
    # clicking a thumbnail moves the slider and the band; the slider moves the selection
    qtbot.mouseClick(w.grid.tiles[(1, 2)], Qt.LeftButton)
    assert w.stage_slider.value() == 1 and w.band.currentText() == "high"
    np.testing.assert_allclose(w.current_map(), w.stages[1, 2])
    assert w.grid.selected() == (1, 2)
    qtbot.mouseClick(w.grid.tiles[(0, 0)], Qt.LeftButton)
    assert w.stage_slider.value() == 0 and w.band.currentText() == "full"
    assert f"{expected[0]:.2f} dB" in w.view.axes[0].get_title()
    w.stage_slider.setValue(n - 1)
    assert w.grid.selected() == (n - 1, 0)
    # a reference of another shape: no numbers, the hint says why
    other = viewer.add_image(np.zeros((2, 40, 40), np.float32), name="other")
    w.reference_picker.set_layer(other)
    assert w.psnrs is None and "same shape" in w.psnr_hint.text() and w.plot.isHidden()
    assert not any(w.grid.caption_texts())
    w.reference_picker.set_layer(None)
    assert w.psnr_hint.text() == NO_REFERENCE
    assert not errors


def test_stage_explorer_grid_shows_every_pass(make_napari_viewer, qtbot, errors, tmp_path):
    """A model that reports the stages of every pass (a 'tiny' checkpoint, random weights): one block of
    thumbnails per pass, the plot's pass boundary, a click in the second pass selects that stage."""
    from napari_vldun._widgets._layers import layer_measurement
    from napari_vldun.metrics import psnr
    from napari_vldun.inference import predict
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint

    model = build_model("tiny")
    k = model.cfg.num_stages
    save_checkpoint(model, tmp_path / "model")
    viewer = make_napari_viewer()
    w, clean, deg = stage_dock_on_degraded(viewer, qtbot, z=0)
    w.model.set_weights(tmp_path / "model.safetensors")
    w.measurement.passes.setValue(2)
    w.reference_picker.set_layer(clean)
    assert wait_job(qtbot, w) == "done", w.last_message
    meas = layer_measurement(deg, np.asarray(deg.data))
    pred = predict(get_model(str(tmp_path / "model.safetensors"), "cpu"), meas["unit"], slices=[0],
                   return_stages=True, measurement=meas["measurement"], cascades=2)
    assert pred.stage_passes == [0] * k + [1] * k
    np.testing.assert_allclose(w.stages, pred.stages[0], atol=1e-5)
    assert w.passes == pred.stage_passes
    assert f"{2 * k} stages over 2 passes" in w.status.text() and "2 passes" in w.status.text()
    assert len(w.grid.tiles) == 2 * k * 3
    assert [h.text() for h in w.grid.headers] == ["pass 1", "pass 2"]
    assert w.titles[k] == "pass 2, stage 1 (level 0)"
    expected = [psnr(np.clip(w.stages[s, 0], 0, 1), clean.data[0]) for s in range(2 * k)]
    np.testing.assert_allclose(w.plot.values(), expected, atol=1e-6)
    assert w.plot.boundary_positions() == [k + 0.5]
    qtbot.mouseClick(w.grid.tiles[(k + 1, 0)], Qt.LeftButton)
    assert w.stage_slider.value() == k + 1 and w.band.currentText() == "full"
    assert "pass 2, stage 2" in w.view.axes[0].get_title()
    assert viewer.layers[f"{deg.name} stages full"].metadata["vldun"]["stage_passes"] == pred.stage_passes
    assert not errors


# --------------------------------------------------------------------------- Degrade & Compare
def test_degrade_and_compare(make_napari_viewer, qtbot, errors):
    from napari_vldun.metrics import dice, psnr, ssim

    viewer = make_napari_viewer()
    layers = sample_crop("acdc", 2, 64, scale=(10.0, 1.5, 1.5))
    clean = viewer.add_layer(layers["clean"])
    ref_labels = viewer.add_layer(layers["labels"])
    w, new = degrade_4x(viewer, qtbot, clean)
    assert new.name == "acdc clean degraded (cartesian 4x)"
    assert new.data.shape == clean.data.shape
    np.testing.assert_allclose(new.scale, clean.scale)
    expected = psnr(np.clip(new.data, 0, 1), clean.data)
    assert w.last_metrics["psnr"] == pytest.approx(expected, abs=1e-4)
    assert w.last_metrics["ssim"] == pytest.approx(ssim(np.clip(new.data, 0, 1), clean.data), abs=1e-4)
    assert f"PSNR {expected:.2f} dB" in w.degrade_result.text()
    assert 0.2 < w.last_metrics["fraction"] < 0.35
    # radial with noise and blur
    w.kind.setCurrentText("radial")
    w.noise.setValue(0.02)
    w.blur.setValue(1.0)
    rad = w.run_degrade()
    assert rad.name == "acdc clean degraded (radial 4x, noise 0.02, blur 1)"
    assert w.last_metrics["psnr"] == pytest.approx(psnr(np.clip(rad.data, 0, 1), clean.data), abs=1e-4)
    # compare a "result" (the degraded image) and result labels (reference with a change) with the references
    pred = np.asarray(ref_labels.data).copy()
    pred[:, :10] = 0
    pred_layer = viewer.add_labels(pred, name="pred labels")
    w.ref_picker.set_layer(clean)
    w.result_picker.set_layer(new)
    w.ref_labels_picker.set_layer(ref_labels)
    w.pred_labels_picker.set_layer(pred_layer)
    m = w.run_compare()
    assert m["psnr"] == pytest.approx(expected, abs=1e-4)
    assert m["dice"] == pytest.approx(dice(pred, ref_labels.data, m["classes"]), abs=1e-6)
    assert "Dice" in w.compare_result.text()
    # labels of the wrong shape: a clear error, nothing computed
    bad = viewer.add_labels(np.zeros((2, 32, 32), np.uint8), name="bad labels")
    w.ref_labels_picker.set_layer(bad)
    n = len(viewer.layers)
    assert w.run_compare() is None
    assert len(errors) == 1 and "shape" in errors[0] and len(viewer.layers) == n


def test_restore_uses_the_recorded_kspace(make_napari_viewer, qtbot, errors):
    """A layer made by the Degrade dock (no noise) carries its k-space; Restore makes its output
    consistent with it (closer to the clean image than without, slice by slice) and says so; noise
    leaves no k-space; a bundled sample's degraded layer carries its own."""
    from napari_vldun._widgets._layers import MEASUREMENT_KEY
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.metrics import psnr

    assert MEASUREMENT_KEY in sample_layers("acdc")[1][1]["metadata"]
    viewer = make_napari_viewer()
    clean = viewer.add_layer(sample_crop("acdc", 2, 64)["clean"])
    d, deg = degrade_4x(viewer, qtbot, clean)
    assert MEASUREMENT_KEY in deg.metadata
    w = RestoreSegmentWidget(viewer)
    w.label_set.setCurrentText("acdc")  # chosen: "auto" asks first on an unsure prior
    qtbot.addWidget(w)
    w.image_picker.set_layer(deg)
    out = {}
    w.passes.setValue(2)
    for use in (True, False):
        w.use_kspace.setChecked(use)
        assert w.passes.isEnabled() is use
        assert wait_job(qtbot, w) == "done", w.last_message
        restored = viewer.layers[f"{deg.name} restored"]
        assert restored.metadata["vldun"]["data_consistency"] is use
        assert restored.metadata["vldun"]["cascades"] == (2 if use else 1)
        assert ("2 passes" in w.status.text()) is use
        assert MEASUREMENT_KEY not in restored.metadata
        assert ("recorded k-space" in w.status.text()) is use
        out[use] = np.asarray(restored.data).copy()
    for z in range(2):
        assert psnr(np.clip(out[True][z], 0, 1), clean.data[z]) >= psnr(np.clip(out[False][z], 0, 1), clean.data[z])
    assert not errors
    d.noise.setValue(0.02)
    assert MEASUREMENT_KEY not in d.run_degrade().metadata


def test_compare_restored_result(make_napari_viewer, qtbot, errors):
    """Restore & Segment output compared with the clean image and the reference labels."""
    from napari_vldun._widgets.degrade import DegradeWidget
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.metrics import dice, psnr

    viewer = make_napari_viewer()
    layers = sample_crop("ct", 1, 64)
    clean, deg, ref = (viewer.add_layer(layers[k]) for k in ("clean", "degraded", "labels"))
    r = RestoreSegmentWidget(viewer)
    qtbot.addWidget(r)
    r.image_picker.set_layer(deg)
    r.label_set.setCurrentText("covid_ct")
    assert wait_job(qtbot, r) == "done", r.last_message
    restored = viewer.layers[f"{deg.name} restored"]
    w = DegradeWidget(viewer)
    qtbot.addWidget(w)
    w.ref_picker.set_layer(clean)
    w.result_picker.set_layer(restored)
    assert w.pred_labels_picker.current_layer() is viewer.layers[f"{deg.name} labels"]  # follows provenance
    w.ref_labels_picker.set_layer(ref)
    m = w.run_compare()
    assert m is not None, w.last_message
    assert m["psnr"] == pytest.approx(psnr(np.clip(restored.data, 0, 1), clean.data), abs=1e-4)
    assert m["classes"] == 2
    assert m["dice"] == pytest.approx(dice(viewer.layers[f"{deg.name} labels"].data, ref.data, 2), nan_ok=True)
    assert not errors


def test_compare_scores_computed_slices_only(make_napari_viewer, qtbot, errors):
    """A result that computed 1 of 3 slices is scored over that slice (and says so); the result-labels
    picker follows the result image and never keeps labels of another result."""
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun.metrics import dice, psnr

    viewer = make_napari_viewer()
    layers = sample_crop("acdc", 3, 32)
    clean, deg, ref = (viewer.add_layer(layers[k]) for k in ("clean", "degraded", "labels"))
    r = RestoreSegmentWidget(viewer)
    qtbot.addWidget(r)
    r.label_set.setCurrentText("acdc")
    r.image_picker.set_layer(deg)
    r.set_slices("current slice")
    viewer.dims.set_current_step(0, 1)
    assert wait_job(qtbot, r) == "done", r.last_message
    r.image_picker.set_layer(clean)
    r.set_slices("all slices")
    assert wait_job(qtbot, r) == "done", r.last_message
    part_img, part_lab = viewer.layers[f"{deg.name} restored"], viewer.layers[f"{deg.name} labels"]
    full_img, full_lab = viewer.layers[f"{clean.name} restored"], viewer.layers[f"{clean.name} labels"]
    w = compare_dock(viewer, qtbot, clean, ref, part_img)
    assert w.pred_labels_picker.current_layer() is part_lab
    m = w.run_compare()
    assert m is not None, w.last_message
    assert m["slices"] == m["label_slices"] == 1
    assert m["psnr"] == pytest.approx(psnr(np.clip(part_img.data[[1]], 0, 1), clean.data[[1]]), abs=1e-4)
    assert m["dice"] == pytest.approx(dice(part_lab.data[[1]], ref.data[[1]], m["classes"]), nan_ok=True)
    assert "over 1 of 3 slice(s)" in w.compare_result.text()
    w.result_picker.set_layer(full_img)
    assert w.pred_labels_picker.current_layer() is full_lab
    assert w.run_compare()["label_slices"] == 3
    w.result_picker.set_layer(part_img)
    w.result_picker.set_layer(deg)  # an image without labels: the partial result's labels are dropped
    assert w.pred_labels_picker.current_layer() is None
    w.pred_labels_picker.set_layer(part_lab)  # and picking them back picks their image
    assert w.result_picker.current_layer() is part_img
    assert not errors


# --------------------------------------------------------------------------- Train
def test_train_widget_layers(make_napari_viewer, qtbot, errors, tmp_path, monkeypatch):
    from napari_vldun._widgets.train import TrainWidget
    from napari_vldun.inference import load_model, predict
    from napari_vldun.model.config import LABEL_SETS

    viewer = make_napari_viewer()
    layers = sample_crop("acdc", 3, 48)
    img, lab = viewer.add_layer(layers["clean"]), viewer.add_layer(layers["labels"])
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    assert not w.start_button.isEnabled()  # no output folder yet
    assert w.start() is None and "output folder" in errors[-1]
    errors.clear()
    assert w.add_pair(img, lab)
    assert w.label_set.text() == "acdc" and w.n_classes.value() == 4
    # a labels layer of the wrong shape is refused
    bad = viewer.add_labels(np.zeros((3, 40, 40), np.uint8), name="bad")
    assert not w.add_pair(img, bad) and "shape" in errors[-1]
    errors.clear()
    w.val_fraction.setValue(0.2)
    w.epochs.setValue(1)
    w.steps.setValue(2)
    w.batch.setValue(1)
    w.crop.setValue(32)
    w.device.setCurrentText("cpu")
    out = tmp_path / "run"
    w.set_output_dir(out)
    assert w.start_button.isEnabled()
    assert wait_job(qtbot, w, lambda: w.start(resume=False)) == "done", w.last_message
    assert not errors
    kinds = [ev.kind for ev in w.events]
    assert kinds[0] == "start" and kinds.count("step") == 2 and "epoch" in kinds and kinds[-1] == "done"
    start = w.events[0].metrics
    assert start["train_slices"] == 2 and start["val_slices"] == 1
    assert w.plot.points("loss") == 2 and w.plot.points("val_psnr") == 1 and w.plot.points("val_dice") >= 0
    assert w.epoch_bar.value() == 1
    best = out / "best"
    assert (out / "best.safetensors").is_file() and (out / "last.json").is_file()
    loaded = load_model(weights=best, device="cpu")
    assert loaded.label_sets == {"acdc": list(LABEL_SETS["acdc"])}
    pred = predict(loaded, np.clip(img.data[:1], 0, 1))
    assert pred.labels.shape == (1, 48, 48) and pred.restored.shape == (1, 48, 48) and pred.label_set == "acdc"
    # a second Start in the same folder needs a confirmation; declining keeps the checkpoint
    stamp = (out / "best.safetensors").stat().st_mtime_ns
    asked = []
    monkeypatch.setattr(w, "_confirm", lambda q: asked.append(q) or False)
    assert w.start() is None and asked
    assert (out / "best.safetensors").stat().st_mtime_ns == stamp
    assert w.resume_button.isEnabled()


def test_train_widget_stop_and_folders(make_napari_viewer, qtbot, errors, tmp_path):
    """Folders of NIfTI pairs; Stop after the first step writes 'last', Resume continues it."""
    from napari_vldun._widgets.train import TrainWidget
    from napari_vldun.io import write_nifti

    layers = sample_crop("brain", 2, 40)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for k in range(2):
        write_nifti(layers["clean"].data[k:k + 1], tmp_path / "img" / f"case{k}.nii.gz")
        write_nifti(layers["labels"].data[k:k + 1].astype(np.uint8), tmp_path / "lab" / f"case{k}_seg.nii.gz")
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    w.source.setCurrentText("folders")
    w.images_dir.setText(str(tmp_path / "img"))
    w.labels_dir.setText(str(tmp_path / "lab"))
    w.label_set.setText("brats2015")
    w.n_classes.setValue(5)
    w.modality.setCurrentText("brain_mri")
    w.val_fraction.setValue(0.5)
    w.epochs.setValue(2)
    w.batch.setValue(1)
    w.crop.setValue(32)
    w.device.setCurrentText("cpu")
    w.set_output_dir(tmp_path / "out")

    def start():
        worker = w.start()
        # stop requested in the worker thread at the first step (Stop button = the same event)
        worker.yielded.connect(lambda ev: w._stop.set() if getattr(ev, "kind", "") == "step" else None,
                               Qt.DirectConnection)
        return worker

    assert wait_job(qtbot, w, start) == "stopped", w.last_message
    assert (tmp_path / "out" / "last.state.json").is_file()
    assert w.resume_button.isEnabled()
    assert wait_job(qtbot, w, lambda: w.start(resume=True)) == "done", w.last_message
    assert w.events[0].metrics["resumed"] and w.events[-1].kind == "done"
    assert not errors


def test_train_modalities_are_the_models(make_napari_viewer, qtbot):
    """The modality choice lists the classes of the model training starts from: the shipped checkpoint's
    own (``model.cfg.modalities``), the tiny config's from scratch."""
    from napari_vldun._widgets.train import TrainWidget
    from napari_vldun.inference import SHIPPED_WEIGHTS
    from napari_vldun.model import get_config
    from napari_vldun.model.checkpoint import read_checkpoint_config

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    qtbot.addWidget(w)

    def offered():
        return [w.modality.itemText(i) for i in range(w.modality.count())]

    assert offered() == list(get_config("tiny").modalities)
    if not shipped_checkpoint_exists():
        pytest.skip("no shipped checkpoint")
    w.modality.setCurrentText("brain_mri")
    w.start_from.setCurrentIndex(1)
    shipped = list(read_checkpoint_config(SHIPPED_WEIGHTS)[0].modalities)
    assert offered() == shipped and "fundus" not in shipped
    assert w.modality.currentText() == "brain_mri"  # kept where the model has it
    assert get_model(None, "cpu").model.cfg.modalities == tuple(shipped)


def test_open_label_volume_without_label_name(make_napari_viewer, qtbot, tmp_path):
    """An integer NIfTI of 0..4 named like an image opens as Labels (via the plugin's reader) and can be
    picked as reference labels in Compare."""
    from napari_vldun._widgets.degrade import DegradeWidget
    from napari_vldun.io import write_nifti

    seg = np.zeros((2, 32, 32), np.int16)
    seg[:, 8:20, 8:20], seg[:, 10:14, 10:14], seg[1, 20:30, 20:30] = 2, 4, 1
    write_nifti(seg, tmp_path / "case01.nii.gz")
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((2, 32, 32)).astype(np.float32), name="img")
    w = DegradeWidget(viewer)
    qtbot.addWidget(w)
    (layer,) = viewer.open(str(tmp_path / "case01.nii.gz"), plugin="napari-vldun")
    assert isinstance(layer, Labels)
    np.testing.assert_array_equal(np.asarray(layer.data), seg)
    w.ref_labels_picker.set_layer(layer)
    assert w.ref_labels_picker.current_layer() is layer
    assert img in viewer.layers
