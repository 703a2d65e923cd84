"""Stage explorer dock: the unfolding stages (full / low band / high band) of the current slice.

"Compute" runs :func:`napari_vldun.inference.iter_predict` with ``slices=[z]`` and
``return_stages=True`` in a worker, on the same input as Restore & Segment: with the layer's recorded
k-space and the chosen passes when it has one (:class:`.restore.MeasurementChooser`), else the image
only; the status says which. The maps are shown in the dock (stage slider, band selector) and
stored as hidden Image layers ``<name> stages full|low|high`` with a leading stage axis (see
:func:`.restore.put_stage_layers`); "show in viewer" makes the selected band visible and moves the
viewer's stage slider with the dock's.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                            QSlider, QVBoxLayout)

from ._layers import LayerPicker, current_index, image_data, now, provenance
from ._logic import measurement_text
from ._messages import USER_ERRORS, error_text, set_status, status_label
from ._models import ModelChooser
from ._plots import ImageView
from ._workers import JobDock, PredictResult, Status, predict_job, toggle_run_cancel
from .restore import BANDS, STAGES_WIDGET, MeasurementChooser, put_stage_layers


def _is_input(layer) -> bool:
    """Stage layers themselves are not inputs."""
    return provenance(layer).get("widget") != STAGES_WIDGET


class StageExplorerWidget(JobDock):
    """Dock widget: compute and scrub the unfolding stages of one slice."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.stages: np.ndarray | None = None  # (S, 3, H, W)
        self.levels: list[int] = []
        self.stage_layers: list = []
        self.slice_index: int | None = None
        self._job: dict = {}

        self.image_picker = LayerPicker(napari_viewer, (Image,), predicate=_is_input)
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        self.model = ModelChooser(self, form)
        self.measurement = MeasurementChooser(form)
        self.compute_button = QPushButton("Compute stages of current slice")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.stage_slider = QSlider(Qt.Horizontal)
        self.stage_slider.setRange(0, 0)
        self.stage_slider.setEnabled(False)
        self.stage_label = QLabel("stage -")
        self.band = QComboBox()
        self.band.addItems(BANDS)
        self.show_in_viewer = QCheckBox("show in viewer")
        self.show_in_viewer.setToolTip("make the selected band's stage layer visible and follow the stage slider")
        self.view = ImageView(viewer=napari_viewer)
        self.status = status_label()

        buttons = QHBoxLayout()
        buttons.addWidget(self.compute_button)
        buttons.addWidget(self.cancel_button)
        scrub = QHBoxLayout()
        scrub.addWidget(self.stage_slider, 1)
        scrub.addWidget(self.stage_label)
        form2 = QFormLayout()
        form2.addRow("stage", scrub)
        form2.addRow("band", self.band)
        form2.addRow("", self.show_in_viewer)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.model.warning)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addLayout(form2)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.status)

        self.compute_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.stage_slider.valueChanged.connect(self.redraw)
        self.band.currentIndexChanged.connect(self.redraw)
        self.show_in_viewer.toggled.connect(self.redraw)

    # ------------------------------------------------------------------ run
    def start(self):
        if self.worker is not None:
            return None
        layer = self.image_picker.current_layer()
        try:
            data = image_data(layer)
            weights, device = self.model.choice()
            z = current_index(self.viewer, layer, 0) if data.ndim == 3 else 0
            unit, _, dc = self.measurement.inputs(layer, data)
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return None
        self._job = {"layer": layer, "z": z, "data_consistency": "kspace" in dc}
        self._outcome = ""
        self.progress.setRange(0, 0)  # busy
        set_status(self.status, f"computing the stages of slice {z} ...")
        return self._launch(predict_job, weights, device, unit, slices=[z], return_stages=True,
                            cancel=self.new_cancel_event(), **dc)

    def _update_buttons(self) -> None:
        toggle_run_cancel(self.compute_button, self.cancel_button, self.worker is not None)

    def cancel(self) -> None:
        self.request_cancel()

    def _on_yielded(self, item) -> None:
        if isinstance(item, Status):
            set_status(self.status, item.text)

    def _on_aborted(self) -> None:
        self._outcome = "cancelled"
        set_status(self.status, "cancelled: no layer was added or changed", "warning")

    def _on_finished(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self._outcome == "done" else 0)
        super()._on_finished()

    def _on_result(self, result: PredictResult) -> None:
        layer, z = self._job["layer"], self._job["z"]
        pred = result.prediction
        if pred.stages is None or layer not in self.viewer.layers:
            self._fail("no stage maps: the model returned none (or the input layer was removed)")
            return
        self.stages = pred.stages[0]
        self.levels = list(pred.stage_levels)
        self.slice_index = z
        used = measurement_text(self._job["data_consistency"], result.cascades)
        prov = {"weights": result.source, "random_weights": result.random_weights, "device": result.device,
                "time": now(), "made_by": "stage explorer", "data_consistency": self._job["data_consistency"],
                "cascades": result.cascades}
        self.stage_layers = put_stage_layers(self.viewer, layer, pred.stages, [z], self.levels, prov,
                                             visible_band=self.band.currentText() if self.show_in_viewer.isChecked()
                                             else None)
        n = self.stages.shape[0]
        self.stage_slider.blockSignals(True)
        self.stage_slider.setRange(0, n - 1)
        self.stage_slider.setValue(n - 1)
        self.stage_slider.blockSignals(False)
        self.stage_slider.setEnabled(True)
        self._outcome = "done"
        self.model.show_random(result.random_weights)
        set_status(self.status, f"slice {z}: {n} stages (levels {self.levels}), {used}, in {result.seconds:.1f} s"
                     + (" -- random weights" if result.random_weights else ""),
                     "warning" if result.random_weights else "info")
        self.redraw()

    # ------------------------------------------------------------------ view
    def current_map(self) -> np.ndarray | None:
        if self.stages is None:
            return None
        return self.stages[self.stage_slider.value(), self.band.currentIndex()]

    def redraw(self, *_) -> None:
        if self.stages is None:
            return
        s, b = self.stage_slider.value(), self.band.currentIndex()
        n = self.stages.shape[0]
        level = self.levels[s] if s < len(self.levels) else "?"
        self.stage_label.setText(f"{s + 1} / {n}")
        band = BANDS[b]
        vrange = (0.0, 1.0) if band == "full" else None
        self.view.show(self.current_map(), f"slice {self.slice_index}, stage {s + 1}/{n} (level {level}), {band}",
                       vrange)
        if self.show_in_viewer.isChecked():
            for layer in self.stage_layers:
                if layer in self.viewer.layers:
                    layer.visible = provenance(layer).get("band") == band
            shown = [ly for ly in self.stage_layers if ly in self.viewer.layers and ly.visible]
            if shown:
                axis = self.viewer.dims.ndim - shown[0].ndim  # the stage axis (leading axis of the layer)
                self.viewer.dims.set_point(axis, float(s))
