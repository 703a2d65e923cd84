"""Stage explorer dock: the unfolding stages (full / low band / high band) of the current slice.

"Compute" runs :func:`napari_vldun.inference.iter_predict` with ``slices=[z]`` and
``return_stages=True`` in a worker, on the same input as Restore & Segment: with the layer's recorded
k-space and the chosen passes when it has one (:class:`.restore.MeasurementChooser`), else the image
only; the status says which. The maps are shown in the dock as a grid of thumbnails (a column per stage,
a row per band, a block of columns per pass when the stages span several passes; clicking one selects it),
a larger view of the selected stage and band (stage slider, band selector), and are stored as hidden
Image layers ``<name> stages full|low|high`` with a leading stage axis (see
:func:`.restore.put_stage_layers`); "show in viewer" makes the selected band visible and moves the
viewer's stage slider with the dock's.

With a "clean reference" (an Image layer of the input's shape; default none) every full-band estimate
gets its PSNR against the reference slice (:func:`napari_vldun.metrics.psnr` on the reference's
[0, 1] scale, as the Compare box of the Degrade dock: the reference normalised by
:func:`._layers.unit_stack`, the estimate mapped to the input's units and through that normalisation),
under its thumbnail and in a plot of PSNR per stage with the input's PSNR as a dashed line.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                            QSlider)

from ._layers import LayerPicker, apply_unit, current_index, from_unit, image_data, now, provenance, unit_stack
from ._layout import scrolled_layout
from ._logic import measurement_text
from ._messages import USER_ERRORS, error_text, set_status, status_label
from ._models import ModelChooser
from ._plots import ImageView, StagePsnrPlot, ThumbnailGrid
from ._stage_logic import band_range, pass_blocks, pass_starts, psnr_text, stage_passes, stage_psnrs, stage_titles
from ._workers import JobDock, Outcome, PredictResult, Status, predict_job, toggle_run_cancel
from .restore import BANDS, STAGES_WIDGET, MeasurementChooser, put_stage_layers


NO_REFERENCE = "choose a clean reference to see the PSNR per stage"


def _is_input(layer) -> bool:
    """Stage layers themselves are not inputs."""
    return provenance(layer).get("widget") != STAGES_WIDGET


class StageExplorerWidget(JobDock):
    """Dock widget: compute and scrub the unfolding stages of one slice."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.stages: np.ndarray | None = None  # (S, 3, H, W)
        self.levels: list[int] = []
        self.passes: list[int] = []  # the pass (0-based) of each stage
        self.titles: list[str] = []
        self.psnrs: list[float] | None = None  # per stage, against the clean reference
        self.input_psnr: float | None = None
        self.stage_layers: list = []
        self.slice_index: int | None = None
        self._job: dict = {}
        self._shown: dict = {}  # what the maps were computed from: input layer, its [0, 1] slice, params

        self.image_picker = LayerPicker(napari_viewer, (Image,), predicate=_is_input)
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        self.model = ModelChooser(self, form)
        self.measurement = MeasurementChooser(form)
        self.reference_picker = LayerPicker(napari_viewer, (Image,), predicate=_is_input, none_text="(none)")
        self.reference_picker.setToolTip("a clean image of the input's shape: the PSNR of every stage against it")
        form.addRow("clean reference", self.reference_picker)
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
        self.grid = ThumbnailGrid()
        self.grid.setToolTip("stages (columns) x bands (rows) of the slice; click one to select it")
        self.psnr_hint = status_label(NO_REFERENCE)
        self.plot = StagePsnrPlot(viewer=napari_viewer)
        self.plot.setVisible(False)
        self.view = ImageView(viewer=napari_viewer, height=2.2)
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
        # tall (~1000 px): the settings, grid, plot and view scroll; Compute / Cancel, progress and status stay
        lay, below, self.scroll = scrolled_layout(self)
        lay.addLayout(form)
        lay.addWidget(self.model.warning)
        lay.addLayout(form2)
        lay.addWidget(self.grid)
        lay.addWidget(self.psnr_hint)
        lay.addWidget(self.plot)
        lay.addWidget(self.view, 1)
        below.addLayout(buttons)
        below.addWidget(self.progress)
        below.addWidget(self.status)

        self.compute_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.stage_slider.valueChanged.connect(self.redraw)
        self.band.currentIndexChanged.connect(self.redraw)
        self.show_in_viewer.toggled.connect(self.redraw)
        self.grid.clicked.connect(self.select)
        self.reference_picker.currentIndexChanged.connect(self.update_psnr)

    # ------------------------------------------------------------------ run
    def start(self):
        if self.worker is not None:
            return None
        layer = self.image_picker.current_layer()
        try:
            data = image_data(layer)
            weights, device = self.model.choice()
            z = current_index(self.viewer, layer, 0) if data.ndim == 3 else 0
            unit, params, dc = self.measurement.inputs(layer, data)
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return None
        self._job = {"layer": layer, "z": z, "data_consistency": "measurement" in dc, "params": params,
                     "input": np.array(unit[z], np.float32)}
        self._outcome = None
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
        self._outcome = Outcome.CANCELLED
        set_status(self.status, "cancelled: no layer was added or changed", "warning")

    def _on_finished(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self._outcome == Outcome.DONE else 0)
        super()._on_finished()

    def _on_result(self, result: PredictResult) -> None:
        layer, z = self._job["layer"], self._job["z"]
        pred = result.prediction
        if pred.stages is None or layer not in self.viewer.layers:
            self._fail("no stage maps: the model returned none (or the input layer was removed)")
            return
        self.stages = pred.stages[0]
        self.levels = list(pred.stage_levels)
        self.passes = stage_passes(getattr(pred, "stage_passes", None), self.stages.shape[0])
        self.titles = stage_titles(self.levels, self.passes)
        self.slice_index = z
        self._shown = {"layer": layer, "input": self._job["input"], "params": self._job["params"],
                       "kspace": self._job["data_consistency"]}
        used = measurement_text(self._job["data_consistency"], result.cascades)
        prov = {"weights": result.source, "random_weights": result.random_weights, "device": result.device,
                "time": now(), "made_by": "stage explorer", "data_consistency": self._job["data_consistency"],
                "cascades": result.cascades, "stage_passes": list(self.passes)}
        self.stage_layers = put_stage_layers(self.viewer, layer, pred.stages, [z], self.levels, prov,
                                             visible_band=self.band.currentText() if self.show_in_viewer.isChecked()
                                             else None)
        n = self.stages.shape[0]
        self.stage_slider.blockSignals(True)
        self.stage_slider.setRange(0, n - 1)
        self.stage_slider.setValue(n - 1)
        self.stage_slider.blockSignals(False)
        self.stage_slider.setEnabled(True)
        self._outcome = Outcome.DONE
        self.model.show_random(result.random_weights)
        n_pass = len(set(self.passes))
        of = f" over {n_pass} passes" if n_pass > 1 else (" of the last pass" if result.cascades > 1 else "")
        set_status(self.status, f"slice {z}: {n} stages{of} (levels {self.levels}), {used}, in "
                   f"{result.seconds:.1f} s" + (" -- random weights" if result.random_weights else ""),
                   "warning" if result.random_weights else "info")
        self._fill_grid()
        self.update_psnr()
        self.redraw()

    # ------------------------------------------------------------------ grid / PSNR
    def _fill_grid(self) -> None:
        several = len(set(self.passes)) > 1
        blocks = [(f"pass {p + 1}" if several else "", cols) for p, cols in pass_blocks(self.passes)]
        short = [t.split(", ", 1)[-1].replace("stage ", "").replace("(level ", "(L") for t in self.titles]
        ranges = [band_range(self.stages[:, b], band) for b, band in enumerate(BANDS)]
        self.grid.set_maps(self.stages, ranges, blocks, short, BANDS)

    def select(self, stage: int, band: int) -> None:
        """Select ``stage`` (0-based, over all passes) and ``band`` (index into BANDS), as a click on its
        thumbnail does: the slider, the band selector, the view and the viewer follow."""
        self.band.blockSignals(True)
        self.band.setCurrentIndex(band)
        self.band.blockSignals(False)
        if self.stage_slider.value() != stage:
            self.stage_slider.setValue(stage)  # redraws
        else:
            self.redraw()

    def reference_slice(self) -> np.ndarray | None:
        """The clean reference's slice of the computed one on its [0, 1] scale (None: no reference);
        ValueError when it does not fit the input."""
        ref, src = self.reference_picker.current_layer(), self._shown.get("layer")
        if ref is None or src is None:
            return None
        data = image_data(ref, "clean reference")
        if data.shape != tuple(np.shape(src.data)):
            raise ValueError(f"the reference '{ref.name}' has shape {data.shape}, the image '{src.name}' "
                             f"{tuple(np.shape(src.data))}: pick a clean image of the same shape")
        unit, self._shown["ref_params"] = unit_stack(ref, data)
        return unit[self.slice_index if data.ndim == 3 else 0]

    def to_reference_scale(self, x: np.ndarray) -> np.ndarray:
        """Maps of the network's [0, 1] scale (the input's normalisation) on the reference's [0, 1] scale."""
        return apply_unit(from_unit(x, self._shown["params"]), self._shown["ref_params"])

    def update_psnr(self, *_) -> None:
        """PSNR of every full-band estimate and of the input against the clean reference (or the hint)."""
        self.psnrs = self.input_psnr = None
        if self.stages is None:
            return
        try:
            ref = self.reference_slice()
        except USER_ERRORS as exc:
            ref = None
            set_status(self.psnr_hint, error_text(exc), "warning")
        else:
            if ref is None:
                set_status(self.psnr_hint, NO_REFERENCE)
        if ref is None:
            self.grid.set_captions(None)
            self.plot.setVisible(False)
            return
        self.psnrs = stage_psnrs(self.to_reference_scale(self.stages[:, 0]), ref)
        self.input_psnr = stage_psnrs(self.to_reference_scale(self._shown["input"][None]), ref)[0]
        self.grid.set_captions([psnr_text(v) for v in self.psnrs])
        best = int(np.argmax(self.psnrs))
        what = "zero-filled input" if self._shown["kspace"] else "input"
        set_status(self.psnr_hint, f"PSNR vs '{self.reference_picker.current_layer().name}', slice "
                   f"{self.slice_index}: {what} {psnr_text(self.input_psnr)}, last stage {psnr_text(self.psnrs[-1])}, "
                   f"best {self.titles[best]} {psnr_text(self.psnrs[best])}")
        self.plot.setVisible(True)
        self._draw_plot()

    def _draw_plot(self) -> None:
        if self.psnrs is not None:
            self.plot.show(self.psnrs, pass_starts(self.passes), self.input_psnr,
                           "zero-filled input" if self._shown.get("kspace") else "input", self.stage_slider.value())

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
        title = self.titles[s] if s < len(self.titles) else f"stage {s + 1}"
        self.stage_label.setText(f"{s + 1} / {n}")
        band = BANDS[b]
        vrange = (0.0, 1.0) if band == "full" else None
        psnr = f", {psnr_text(self.psnrs[s])}" if self.psnrs is not None and band == "full" else ""
        self.view.show(self.current_map(), f"slice {self.slice_index}, {title}, {band}{psnr}", vrange)
        self.grid.select(s, b)
        self._draw_plot()
        if self.show_in_viewer.isChecked():
            for layer in self.stage_layers:
                if layer in self.viewer.layers:
                    layer.visible = provenance(layer).get("band") == band
            shown = [ly for ly in self.stage_layers if ly in self.viewer.layers and ly.visible]
            if shown:
                axis = self.viewer.dims.ndim - shown[0].ndim  # the stage axis (leading axis of the layer)
                self.viewer.dims.set_point(axis, float(s))
