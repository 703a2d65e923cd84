"""Screenshots of the VL-DUN dock widgets for the docs: docs/screenshots/<widget>.png.

Opens a napari window (on a virtual X display when there is none: re-runs itself under
``xvfb-run``), loads the bundled ACDC sample, runs each dock -- Restore & Segment, Priors, Stage
explorer, Degrade & Compare, Train (a couple of steps) -- and saves the whole window with the dock.

    python scripts/screenshots.py [--out docs/screenshots] [--sample acdc]

Without a trained checkpoint the model has random weights: the layouts are real, the outputs are not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 300_000


def _ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("VLDUN_SCREENSHOTS_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no X display and no xvfb-run: install xvfb (see .ci/apt-packages.txt)")
    env = dict(os.environ, VLDUN_SCREENSHOTS_CHILD="1")
    cmd = [xvfb, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(cmd, env=env))


def _run(app, widget, start, timeout: float = 1800.0) -> str:
    """Call ``start()`` and process Qt events until ``widget.job_finished`` fires; returns its outcome."""
    done: list[str] = []
    widget.job_finished.connect(done.append)
    if start() is None:
        raise RuntimeError(f"{type(widget).__name__} refused to start: {widget.last_message}")
    t0 = time.time()
    while not done:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{type(widget).__name__} did not finish in {timeout:.0f} s")
    widget.job_finished.disconnect(done.append)
    return done[0]


def _settle(app, seconds: float = 0.8) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def _dismiss_notifications(app) -> None:
    """Close napari's toast notifications (e.g. deprecation notices) before a screenshot."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for w in app.allWidgets():
        if isinstance(w, NapariQtNotification):
            w.hide()
            w.deleteLater()


def _save(viewer, app, path: Path) -> None:
    """Whole window (dock included) -> PNG under MAX_BYTES (palette-reduced / shrunk if needed)."""
    from PIL import Image

    _settle(app)
    _dismiss_notifications(app)
    _settle(app, 0.3)
    arr = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(arr[..., :3])
    path.parent.mkdir(parents=True, exist_ok=True)
    for colours, width in ((256, img.width), (128, img.width), (128, int(img.width * 0.8)), (64, int(img.width * 0.7))):
        im = img if width == img.width else img.resize((width, int(img.height * width / img.width)), Image.LANCZOS)
        im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            break
    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {img.width}x{img.height}, "
          f"{path.stat().st_size / 1024:.0f} KB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--sample", default="acdc")
    args = ap.parse_args()
    _ensure_display()

    import napari
    import numpy as np
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_vldun._widgets._models import clear_model_cache
    from napari_vldun._widgets.degrade import DegradeWidget
    from napari_vldun._widgets.priors import PriorsWidget
    from napari_vldun._widgets.restore import RestoreSegmentWidget
    from napari_vldun._widgets.stages import StageExplorerWidget
    from napari_vldun._widgets.train import TrainWidget

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    viewer = napari.Viewer(title="napari-vldun")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1560, 980)
    viewer.open_sample("napari-vldun", args.sample)
    clean = viewer.layers[f"{args.sample} clean"]
    degraded = next(ly for ly in viewer.layers if ly.name.startswith(f"{args.sample} degraded"))
    ref_labels = viewer.layers[f"{args.sample} labels"]
    labels = np.asarray(ref_labels.data)
    z = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1))) if labels.ndim == 3 else 0
    if labels.ndim == 3:
        viewer.dims.set_current_step(0, z)
    clean.visible = False
    ref_labels.visible = False
    out = args.out
    print(f"sample {args.sample}, slice {z}; writing to {out}", flush=True)

    def dock(widget, name):
        return viewer.window.add_dock_widget(widget, name=name, area="right")

    # ---- Restore & Segment
    restore = RestoreSegmentWidget(viewer)
    d = dock(restore, "Restore & Segment")
    restore.image_picker.set_layer(degraded)
    restore.label_set.setCurrentText(list_label_set(args.sample))
    outcome = _run(app, restore, restore.start)
    print(f"restore: {outcome} {restore.status.text()}", flush=True)
    degraded.visible = True
    viewer.layers[f"{degraded.name} restored"].visible = False
    _save(viewer, app, out / "restore_segment.png")
    viewer.layers[f"{degraded.name} restored"].visible = True
    degraded.visible = False
    viewer.window.remove_dock_widget(d)

    # ---- Priors
    priors = PriorsWidget(viewer)
    d = dock(priors, "Priors")
    priors.update_plot()
    degraded.visible = True
    for suffix in ("restored", "labels"):
        viewer.layers[f"{degraded.name} {suffix}"].visible = False
    _save(viewer, app, out / "priors.png")
    for suffix in ("restored", "labels"):
        viewer.layers[f"{degraded.name} {suffix}"].visible = True
    degraded.visible = False
    viewer.window.remove_dock_widget(d)

    # ---- Stage explorer
    stages = StageExplorerWidget(viewer)
    d = dock(stages, "Stage explorer")
    stages.image_picker.set_layer(degraded)
    stages.reference_picker.set_layer(clean)  # PSNR per stage
    stages.show_in_viewer.setChecked(True)
    outcome = _run(app, stages, stages.start)
    print(f"stages: {outcome} {stages.status.text()}", flush=True)
    stages.stage_slider.setValue(2)
    stages.band.setCurrentText("full")
    viewer.layers[f"{degraded.name} restored"].visible = False
    viewer.layers[f"{degraded.name} labels"].visible = False
    _save(viewer, app, out / "stage_explorer.png")
    for band in ("full", "low", "high"):
        viewer.layers.remove(f"{degraded.name} stages {band}")
    viewer.window.remove_dock_widget(d)
    if labels.ndim == 3:
        viewer.dims.set_current_step(0, z)

    # ---- Degrade & Compare
    degrade = DegradeWidget(viewer)
    d = dock(degrade, "Degrade & Compare")
    clean.visible = True
    degrade.clean_picker.set_layer(clean)
    degrade.kind.setCurrentText("cartesian")
    degrade.accel.setValue(6.0)
    new = degrade.run_degrade()
    degrade.ref_picker.set_layer(clean)
    degrade.result_picker.set_layer(viewer.layers[f"{degraded.name} restored"])
    degrade.ref_labels_picker.set_layer(ref_labels)
    degrade.run_compare()
    clean.visible = False
    new.visible = True
    _save(viewer, app, out / "degrade.png")
    viewer.window.remove_dock_widget(d)

    # ---- Train (a couple of steps on the sample's own pairs)
    train = TrainWidget(viewer)
    viewer.window._qt_window.resize(1560, 1180)  # the whole form and the plot
    d = dock(train, "Train")
    train.add_pair(clean, ref_labels)
    train.epochs.setValue(3)
    train.steps.setValue(2)
    train.batch.setValue(2)
    train.crop.setValue(64)
    train.device.setCurrentText("cpu")
    with tempfile.TemporaryDirectory(prefix="vldun-train-") as tmp:
        train.set_output_dir(Path(tmp) / "run")
        outcome = _run(app, train, train.start)
        print(f"train: {outcome} {train.status.text()}", flush=True)
        ref_labels.visible = True
        clean.visible = True
        new.visible = False
        _save(viewer, app, out / "train.png")
    viewer.window.remove_dock_widget(d)
    clear_model_cache()
    viewer.close()


def list_label_set(sample: str) -> str:
    from napari_vldun.pipeline import list_samples

    return list_samples()[sample].get("label_set") or "auto (from modality)"


if __name__ == "__main__":
    main()
