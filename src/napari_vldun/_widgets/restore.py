"""Restore & Segment dock: runs :func:`napari_vldun.inference.iter_predict` on an image layer (all slices,
the current one or a range).

The run happens in a napari ``thread_worker`` (:func:`._workers.predict_job`); the progress bar moves
after every slice and Cancel stops between slices. Output layers are written only when the whole
prediction has arrived, so a cancelled or failed run leaves the layer list untouched:

* ``<name> restored`` (Image, the input's units via :func:`napari_vldun.pipeline.restore_units`: what the
  normalisation window clipped comes back from the input; scale / translate / affine / metadata copied),
* ``<name> labels`` (Labels, the checkpoint's class colours; class names in ``features``),
* with "keep stage maps": hidden ``<name> stages full|low|high`` Images with a leading stage axis,
* with "uncertainty layer": ``<name> uncertainty`` (Image, 'magma', additive): the per-pixel normalised
  entropy of the segmentation softmax, in [0, 1] (:func:`napari_vldun.inference.normalised_entropy`).

While running, the status shows the slice, the device, the time elapsed and an estimate of the time left
(from the mean time per slice so far), and a hint when the CPU was chosen though a CUDA GPU is there.

"Save results ..." writes the last result of the picked input (restored image, labels, uncertainty, a
measurements CSV and a provenance JSON; for an input read from a DICOM series also the labels as a DICOM SEG
referencing that series, :mod:`napari_vldun.io.dicom_seg`) into a folder, with the input's geometry, as one
atomic set (:func:`napari_vldun.measure.iter_save_results`, in a worker: Cancel between files leaves nothing);
existing files are replaced only after the user confirms.

Slices not computed (yet) are NaN in the restored image and 0 in the labels, both drawn transparent, so
the input shows through; ``metadata["vldun"]["slices_done"]`` of both layers lists the computed ones
(runs on other slices of the same input add to them).

Per-slice prior probabilities and the provenance (weights, device, label set, normalisation, time)
are stored in ``metadata["vldun"]`` of the restored layer; the Priors dock reads them from there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QMessageBox, QProgressBar,
                            QPushButton, QSpinBox)

from ..inference import InferenceError
from ..measure import iter_save_results, label_measurements, safe_stem
from ..pipeline import restore_units
from ._labels import label_colormap, label_features
from ._layers import (VOLUME_KEY, LayerPicker, current_index, geometry, image_data, layer_like, layer_measurement,
                      known_spacing, layer_seg_export, now, output_slot, provenance, put_layer, unit_stack)
from ._logic import (SLICE_MODES, chosen_slices, computed_slices, device_hint, fill_slices, measurement_text,
                     progress_text)
from ._layout import scrolled_layout
from ._messages import USER_ERRORS, error_text, results_hub, set_status, show_warning, status_label
from ._models import ModelChooser, checkpoint_label_sets
from ._workers import (JobDock, LabelSetQuestion, Outcome, PredictResult, SavedResults, Status, predict_job, save_job,
                       toggle_run_cancel)

WIDGET = "restore"
STAGES_WIDGET = "stages"
BANDS = ("full", "low", "high")


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA GPU (for the "you chose the CPU" hint)."""
    import torch

    return bool(torch.cuda.is_available())


def put_stage_layers(viewer, source_layer, stages: np.ndarray, slices: list[int], levels: list[int],
                     prov: dict, visible_band: str | None = None) -> list:
    """Add or update ``<name> stages full|low|high`` from ``stages`` (Zs, S, 3, H, W).

    2-D input: ``(S, H, W)``. 3-D input, one slice ``z``: ``(S, 1, H, W)`` placed at slice ``z``
    (the stage axis is a new leading viewer axis, the slice axis stays aligned with the input).
    3-D input, several slices: ``(S, Z, H, W)``, slices not computed are NaN (transparent).
    """
    zs, s = stages.shape[0], stages.shape[1]
    shape = tuple(np.shape(source_layer.data))
    layers = []
    for b, band in enumerate(BANDS):
        maps = stages[:, :, b]  # (Zs, S, H, W)
        if source_layer.ndim == 2:
            data = np.ascontiguousarray(maps[0])
            geom = geometry(source_layer, lead=1)
        elif zs == 1:
            data = np.ascontiguousarray(maps.transpose(1, 0, 2, 3))
            geom = geometry(source_layer, lead=1, offset=(slices[0], 0, 0))
        else:
            data = np.full((s, *shape), np.nan, np.float32)
            data[:, slices] = maps.transpose(1, 0, 2, 3)
            geom = geometry(source_layer, lead=1)
        p = {**prov, "band": band, "stage_levels": list(levels), "slices": list(slices)}
        lo, hi = (0.0, 1.0) if band == "full" else (float(np.nanmin(maps)), float(np.nanmax(maps)))  # signed
        layer = put_layer(viewer, "image", f"{source_layer.name} stages {band}", data, widget=STAGES_WIDGET,
                            source_layer=source_layer, prov=p, geom=geom, colormap="gray",
                            visible=(band == visible_band), contrast_limits=(lo, hi if hi > lo else lo + 1.0))
        layers.append(layer)
    return layers


class MeasurementChooser:
    """The "use the recorded k-space" and "passes" controls, shared by Restore & Segment and the Stage
    explorer so that both run the network on the same input; not a widget, it adds two rows to ``form``."""

    def __init__(self, form) -> None:
        self.use_kspace = QCheckBox("use the recorded k-space")
        self.use_kspace.setChecked(True)
        self.use_kspace.setToolTip(
            "when the image carries its acquisition (made by the Degrade dock without noise, or a bundled "
            "sample), make the restored image consistent with the measured k-space (data consistency)")
        self.passes = QSpinBox()
        self.passes.setRange(0, 8)
        self.passes.setSpecialValueText("checkpoint's")
        self.passes.setToolTip("with the recorded k-space: passes of the network, each made consistent with the "
                               "measurement (fewer is faster; 'checkpoint's' uses the number it was tuned for)")
        self.use_kspace.toggled.connect(self.passes.setEnabled)
        self.precision = QComboBox()
        self.precision.addItems(["fp32", "bf16", "auto"])
        self.precision.setToolTip("bf16: convolutions and matrix products in bfloat16 (faster on CPUs with "
                                  "AVX512-bf16 and on GPUs; within 0.1 dB of fp32 for the shipped model)")
        self.compile = QCheckBox("compile the network")
        self.compile.setToolTip("torch.compile: faster on volumes of many slices of one size; the first slice of "
                                "each size compiles (about a minute on a CPU); runs as usual where no C++ "
                                "compiler exists")
        form.addRow("", self.use_kspace)
        form.addRow("passes", self.passes)
        form.addRow("precision", self.precision)
        form.addRow("", self.compile)

    def inputs(self, layer, data: np.ndarray) -> tuple[np.ndarray, dict, dict]:
        """``(unit, params, dc)`` for ``layer`` (its array ``data``): the ``(Z, H, W)`` stack in [0, 1] the
        network gets, its normalisation and the :func:`._workers.predict_job` keywords of the recorded
        measurement (:func:`._layers.layer_measurement`; empty when unused or there is none)."""
        meas = layer_measurement(layer, data) if self.use_kspace.isChecked() else None
        prec = {"precision": self.precision.currentText(), "compile": self.compile.isChecked()}
        if meas is None:
            unit, params = unit_stack(layer, data)
            return unit, params, prec
        return meas["unit"], meas["params"], {"measurement": meas["measurement"],
                                              "cascades": self.passes.value() or None, **prec}


class RestoreSegmentWidget(JobDock):
    """Dock widget: restore + segment the chosen image layer with a VL-DUN checkpoint.

    ``job_finished`` says "done", "cancelled", "question" (the label set may not fit: nothing ran, the
    user chooses or runs again) or "error" when a run ends."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_outputs: list = []
        self.last_saved: dict = {}
        self._job: dict = {}
        self._results: dict = {}
        self._t0 = self._t_slices = 0.0
        self._hint = ""
        self._save_dir = ""
        self._kind = "predict"  # the running job: "predict" or "save"
        self._steps = None  # the save generator a "save" job runs
        self._answered: tuple | None = None  # (layer, slices) whose label-set question the user answered: run

        self.image_picker = LayerPicker(napari_viewer, (Image,))
        self.slice_mode = QComboBox()
        self.slice_mode.addItems(list(SLICE_MODES))
        self.slice_mode.setToolTip("3-D stacks: restore every slice, only the one shown in the viewer, or a range")
        self.first_slice, self.last_slice = QSpinBox(), QSpinBox()
        for box, tip in ((self.first_slice, "first slice of the range"), (self.last_slice, "last slice (included)")):
            box.setRange(0, 0)
            box.setToolTip(tip)
            box.setEnabled(False)
        slice_row = QHBoxLayout()
        slice_row.setContentsMargins(0, 0, 0, 0)
        for w in (self.slice_mode, self.first_slice, self.last_slice):
            slice_row.addWidget(w)
        self.label_set = QComboBox()
        self.keep_stages = QCheckBox("keep stage maps")
        self.keep_stages.setToolTip("also add the full / low / high band maps of every unfolding stage (hidden layers)")
        self.uncertainty = QCheckBox("uncertainty layer")
        self.uncertainty.setToolTip("also add '<name> uncertainty': the per-pixel entropy of the segmentation, "
                                    "0 = one class certain, 1 = all classes equally likely")
        self.tta = QCheckBox("test-time flips")
        self.tta.setToolTip("segment each slice and its three mirror images (k-space mirrored with it) and average: "
                            "steadier labels, 4x the time")
        self.run_button = QPushButton("Restore && Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.save_button = QPushButton("Save results ...")
        self.save_button.setToolTip("write the restored image, labels (and uncertainty) as NIfTI with the input's "
                                    "geometry, a measurements CSV and a provenance JSON into a folder (and the labels "
                                    "as a DICOM SEG when the input is a DICOM series)")
        self.save_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = status_label()

        form = QFormLayout()
        form.addRow("image", self.image_picker)
        form.addRow("slices (from, to)", slice_row)
        self.model = ModelChooser(self, form)
        form.addRow("label set", self.label_set)
        self.measurement = MeasurementChooser(form)
        self.use_kspace, self.passes = self.measurement.use_kspace, self.measurement.passes
        form.addRow("", self.keep_stages)
        form.addRow("", self.uncertainty)
        form.addRow("", self.tta)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        # stacked with other docks, the form scrolls; the buttons, progress and status stay in view
        lay, below, self.scroll = scrolled_layout(self)
        lay.addLayout(form)
        lay.addWidget(self.model.warning)
        lay.addStretch(1)
        below.addLayout(buttons)
        below.addWidget(self.save_button)
        below.addWidget(self.progress)
        below.addWidget(self.status)

        self.model.callbacks.append(self._refresh_label_sets)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_clicked)
        self.slice_mode.currentIndexChanged.connect(self._update_range)
        self.image_picker.currentIndexChanged.connect(self._update_range)
        for signal in (self.slice_mode.currentIndexChanged, self.image_picker.currentIndexChanged,
                       self.label_set.currentIndexChanged, self.first_slice.valueChanged,
                       self.last_slice.valueChanged):
            signal.connect(self._forget_answer)
        self._refresh_label_sets()
        self._update_range()

    def _update_range(self, *_) -> None:
        """The from / to boxes span the picked stack and are live only for "slice range"."""
        layer = self.image_picker.current_layer()
        shape = np.shape(layer.data) if layer is not None and not getattr(layer, "multiscale", False) else ()
        n = int(shape[0]) if len(shape) == 3 else 1
        ranged = self.slice_mode.currentText() == "slice range" and n > 1
        for box in (self.first_slice, self.last_slice):
            box.setMaximum(n - 1)
            box.setEnabled(ranged)

    def set_slices(self, mode: str, first: int = 0, last: int = 0) -> None:
        """Choose "all slices", "current slice" or "slice range" ``first..last``."""
        self.slice_mode.setCurrentText(mode)
        self._update_range()
        self.first_slice.setValue(first)
        self.last_slice.setValue(last)

    def _forget_answer(self, *_) -> None:
        """Another input or label set: the next run asks again when the label set may not fit."""
        self._answered = None
        self.run_button.setText("Restore && Segment")

    # ------------------------------------------------------------------ checkpoint / label sets
    def set_weights(self, path: str | Path | None) -> None:
        """Use the shipped checkpoint (``None``) or a local checkpoint file."""
        self.model.set_weights(path)

    def weights(self) -> str | None:
        """The chosen checkpoint path, ``None`` for the shipped default."""
        return self.model.weights()

    def _refresh_label_sets(self) -> None:
        current = self.label_set.currentText()
        try:
            sets, _ = checkpoint_label_sets(self.weights())
        except (ValueError, OSError):  # not readable yet: reported when run
            sets = {}
        self.label_set.blockSignals(True)
        self.label_set.clear()
        self.label_set.addItem("auto (from modality)")
        self.label_set.addItems(list(sets))
        idx = self.label_set.findText(current)
        self.label_set.setCurrentIndex(max(idx, 0))
        self.label_set.blockSignals(False)

    def chosen_label_set(self) -> str | None:
        return None if self.label_set.currentIndex() <= 0 else self.label_set.currentText()

    # ------------------------------------------------------------------ run
    def start(self):
        """Check the inputs and start the worker; returns it (None when refused)."""
        if self.worker is not None:
            return None
        layer = self.image_picker.current_layer()
        try:
            data = image_data(layer)
            weights, device = self.model.choice()  # CUDA asked for without CUDA: refuse now
            unit, params, dc = self.measurement.inputs(layer, data)
            current = current_index(self.viewer, layer, 0) if data.ndim == 3 else 0
            slices = chosen_slices(unit.shape[0], self.slice_mode.currentText(), current,
                                   self.first_slice.value(), self.last_slice.value())
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return None
        mask = None
        if "measurement" in dc:
            src = provenance(layer)
            mask = {"sampled_fraction": dc["measurement"].fraction,
                    **{k: src[k] for k in ("mask", "accel", "center_fraction", "seed") if k in src}}
        self._job = {"layer": layer, "shape": data.shape, "params": params, "weights": weights, "device": device,
                     "slices": slices, "stages": self.keep_stages.isChecked(), "data_consistency": "measurement" in dc,
                     "input": data.reshape(unit.shape), "unit": unit, "precision": dc["precision"], "mask": mask}
        self._t0 = self._t_slices = time.perf_counter()
        self._hint = device_hint(device, cuda_available())
        self._kind, self._outcome = "predict", None
        n = unit.shape[0] if slices is None else len(slices)
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.last_message = ""
        set_status(self.status, "starting ...")
        ask = self._answered != (layer, None if slices is None else tuple(slices))
        self._job["question"] = (layer, None if slices is None else tuple(slices))
        return self._launch(predict_job, weights, device, unit, label_set=self.chosen_label_set(), slices=slices,
                            ask_label_set=ask,
                            return_stages=self.keep_stages.isChecked(),
                            return_uncertainty=self.uncertainty.isChecked(), tta=self.tta.isChecked(),
                            cancel=self.new_cancel_event(), **dc)

    def _update_buttons(self) -> None:
        toggle_run_cancel(self.run_button, self.cancel_button, self.worker is not None)
        self.save_button.setEnabled(self.worker is None and bool(self._results))

    def cancel(self) -> None:
        """Stop at the next stage of the slice (the next file) in progress; nothing is added (written)."""
        if self.worker is not None:
            what = "file" if self._kind == "save" else "stage"
            set_status(self.status, f"cancelling after the current {what} ...")
            self.request_cancel()

    def _on_yielded(self, item) -> None:
        if isinstance(item, Status):
            if item.device:  # the model is loaded: the slices start now
                self._job["run_device"] = item.device
                self._t_slices = time.perf_counter()
            set_status(self.status, self._with_hint(item.text))
        else:  # inference Progress (save: files written)
            self.progress.setRange(0, item.total)
            self.progress.setValue(item.done)
            if self._kind == "save":
                set_status(self.status, f"writing file {item.done + 1} / {item.total} ...")
                return
            t = time.perf_counter()
            set_status(self.status, self._with_hint(progress_text(
                item.done, item.total, t - self._t0, t - self._t_slices, self._job.get("run_device"))))

    def _with_hint(self, text: str) -> str:
        return f"{text} ({self._hint})" if self._hint else text

    def _on_aborted(self) -> None:
        self._outcome = Outcome.CANCELLED
        self.progress.setValue(0)
        if self._steps is not None:  # the worker has left it: remove the staged files now
            self._steps.close()
            self._steps = None
        what = "no file was written" if self._kind == "save" else "no layer was added or changed"
        set_status(self.status, f"cancelled: {what}", "warning")

    def _on_result(self, result: PredictResult | SavedResults | LabelSetQuestion) -> None:
        if isinstance(result, LabelSetQuestion):  # nothing ran: the user chooses, or runs again to go on
            self._outcome = Outcome.QUESTION
            self._answered = self._job.get("question")
            self.progress.setValue(0)
            self.run_button.setText("Restore && Segment anyway")
            text = (f"not run: {result.warning}. Pick a label set above, or press 'Restore & Segment anyway' "
                    f"to go on with '{result.label_set}'")
            show_warning(text)
            set_status(self.status, text, "warning")
            return
        if isinstance(result, SavedResults):
            self.last_saved = {k: Path(v) for k, v in result.paths.items()}
            self._steps = None
            self._outcome = Outcome.DONE
            self.progress.setValue(self.progress.maximum())
            folder = next(iter(self.last_saved.values())).parent
            set_status(self.status, f"saved {', '.join(p.name for p in self.last_saved.values())} into {folder}")
            return
        try:
            self.last_outputs = self._publish(result)
        except USER_ERRORS as exc:  # e.g. the input layer was deleted meanwhile
            self._fail(error_text(exc))
            return
        self._outcome = Outcome.DONE
        self.model.show_random(result.random_weights)
        msg = (f"done in {result.seconds:.1f} s on {result.device}: label set {result.prediction.label_set}"
               f" ({len(result.slices)} slice(s)); {measurement_text(self._job.get('data_consistency'), result.cascades)}")
        if result.random_weights:
            msg += " -- random weights: outputs are meaningless"
        anatomy = result.label_set_warning
        if anatomy:
            msg += f" -- {anatomy}"
            show_warning(anatomy)
        msg = self._with_hint(msg)
        set_status(self.status, msg, "warning" if result.random_weights or anatomy else "info")

    # ------------------------------------------------------------------ outputs
    def _publish(self, result: PredictResult) -> list:
        job = self._job
        layer = job["layer"]
        if layer not in self.viewer.layers:
            raise InferenceError(f"input layer '{layer.name}' was removed during the run; nothing was added")
        pred = result.prediction
        shape = tuple(job["shape"])
        vol_shape = (1, *shape) if len(shape) == 2 else shape
        z_total = vol_shape[0]
        slices = result.slices
        full = len(slices) == z_total and slices == list(range(z_total))
        names = result.label_sets.get(pred.label_set, []) if pred.label_set else []
        colors = result.label_colors.get(pred.label_set, []) if pred.label_set else []
        rname, lname, uname = f"{layer.name} restored", f"{layer.name} labels", f"{layer.name} uncertainty"
        slot_r, old_r = output_slot(self.viewer, rname, WIDGET, layer.name, Image)
        slot_l, old_l = output_slot(self.viewer, lname, WIDGET, layer.name, Labels)
        slot_u, old_u = output_slot(self.viewer, uname, WIDGET, layer.name, Image)

        def earlier(old):
            """An earlier partial result of this input to add to, or None."""
            return old if not full and old is not None and tuple(np.shape(old.data)) == shape else None

        old_r, old_l, old_u = earlier(old_r), earlier(old_l), earlier(old_u)
        old_prov = provenance(old_r) if old_r is not None else {}

        def merge(values, fill, dtype, old):
            """The new slices with the computed ones of the earlier result; ``fill`` elsewhere."""
            if old is None:
                return fill_slices(vol_shape, slices, values, fill, dtype)
            return fill_slices(vol_shape, slices, values, fill, dtype, old.data,
                               computed_slices(provenance(old), z_total))

        restored = labels = uncertainty = None
        done = done_l = done_u = list(range(z_total))
        if pred.restored is not None:
            values = restore_units(pred.restored, job["params"], job["input"][slices], job["unit"][slices])
            restored, done = merge(values, np.nan, np.float32, old_r)
        if pred.labels is not None:
            labels, done_l = merge(pred.labels, 0, np.uint8, old_l)
        if pred.uncertainty is not None:
            uncertainty, done_u = merge(pred.uncertainty, np.nan, np.float32, old_u)

        def probs(key, new, width):
            arr = np.full((z_total, width), np.nan, np.float32)
            prev = old_prov.get(key)
            if prev is not None and np.shape(prev) == arr.shape:
                arr[:] = prev
            if new is not None:
                arr[slices] = new
            return arr

        prov = {
            "weights": result.source, "random_weights": result.random_weights, "device": result.device,
            "label_set": pred.label_set, "label_names": list(names), "label_colors": list(colors),
            "normalisation": dict(job["params"]), "data_consistency": bool(job.get("data_consistency")),
            "cascades": result.cascades, "precision": job.get("precision", "fp32"), "mask": job.get("mask"),
            "time": now(), "seconds": round(result.seconds, 3), "slices_done": done,
            "tta": pred.tta,
            "postprocessing": None if pred.postprocessing is None else pred.postprocessing.describe(list(names)),
            "modalities": result.modalities, "degradations": result.degradations,
            "modality_probs": probs("modality_probs", pred.modality_probs, len(result.modalities)),
            "degradation_probs": probs("degradation_probs", pred.degradation_probs, len(result.degradations)),
            "restored_layer": slot_r, "labels_layer": slot_l,
            "uncertainty_layer": slot_u if uncertainty is not None else None,
        }
        made = {}
        if restored is not None:
            made["restored"] = put_layer(
                self.viewer, "image", rname, restored.reshape(shape), widget=WIDGET, source_layer=layer, prov=prov,
                colormap="gray", contrast_limits=tuple(layer.contrast_limits))
        if labels is not None:
            feats = label_features(names, colors) if names else None
            kwargs = {"colormap": label_colormap(colors), "opacity": 0.6}
            if feats is not None:
                kwargs["features"] = feats
            made["labels"] = put_layer(self.viewer, "labels", lname, labels.reshape(shape), widget=WIDGET,
                                       source_layer=layer, prov={**{k: prov[k] for k in (
                                           "weights", "random_weights", "device", "label_set", "label_names",
                                           "label_colors", "time", "restored_layer", "tta", "postprocessing")},
                                           "slices_done": done_l},
                                       **kwargs)
        if uncertainty is not None:
            made["uncertainty"] = put_layer(
                self.viewer, "image", uname, uncertainty.reshape(shape), widget=WIDGET, source_layer=layer,
                prov={**{k: prov[k] for k in ("weights", "random_weights", "device", "label_set", "time",
                                              "restored_layer", "labels_layer")}, "slices_done": done_u,
                      "kind": "uncertainty", "meaning": "normalised entropy of the segmentation softmax"},
                colormap="magma", blending="additive", contrast_limits=(0.0, 1.0))
        self._results = {"source": layer, **made}
        outputs = list(made.values())
        if pred.stages is not None:
            outputs += put_stage_layers(self.viewer, layer, pred.stages, slices, pred.stage_levels,
                                        {"weights": result.source, "device": result.device, "time": now(),
                                         "made_by": WIDGET})
        self.image_picker.set_layer(layer)
        if outputs:
            results_hub().published.emit(outputs[0])
        return outputs

    # ------------------------------------------------------------------ save
    def result_layers(self) -> dict:
        """The last result's layers still in the viewer: ``{"source": input, "restored", "labels",
        "uncertainty"}`` (those there are)."""
        return {k: lay for k, lay in self._results.items() if lay in self.viewer.layers}

    def save_results(self, folder: str | Path, overwrite: bool = False,
                     confirm: Callable[[str], bool] | None = None):
        """Write the last result into ``folder`` in a worker (:func:`napari_vldun.measure.iter_save_results`):
        NIfTI files with the input layer's geometry, the measurements CSV and a provenance JSON, placed
        together at the end (Cancel or an error leaves nothing). Existing files are replaced when
        ``overwrite``, or when ``confirm(message)`` says yes (the button asks in a dialog). Returns the
        worker; None when refused (nothing written; the reason is shown). ``last_saved``: ``{part: path}``."""
        if self.worker is not None:
            return None
        try:
            try:
                steps = self._save_steps(folder, overwrite)
                first = next(steps)  # checks the targets and stages the files: fast, here
            except FileExistsError as exc:
                if confirm is None:
                    raise
                if not confirm(error_text(exc)):
                    set_status(self.status, "not saved: those files exist", "warning")
                    return None
                steps = self._save_steps(folder, True)
                first = next(steps)
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return None
        self._kind, self._outcome, self.last_message = "save", None, ""
        self._steps = steps
        self.progress.setRange(0, first[1])
        self.progress.setValue(0)
        set_status(self.status, f"writing {first[1]} file(s) into {Path(folder)} ...")
        return self._launch(save_job, steps, first)

    def _save_steps(self, folder: str | Path, overwrite: bool):
        """:func:`napari_vldun.measure.iter_save_results` (not started) for the last result's layers."""
        layers = self.result_layers()
        src = layers.get("source")
        parts = {k: layers.get(k) for k in ("restored", "labels", "uncertainty")}
        if src is None or not any(v is not None for v in parts.values()):
            raise InferenceError("no result to save: run Restore & Segment first (and keep its input and output "
                                 "layers)")
        shape = tuple(np.shape(src.data))
        for lay in parts.values():
            if lay is not None and tuple(np.shape(lay.data)) != shape:
                raise InferenceError(f"layer '{lay.name}' has shape {np.shape(lay.data)}, its input '{src.name}' "
                                     f"{shape}; run Restore & Segment again")
        rest, lab, unc = parts["restored"], parts["labels"], parts["uncertainty"]
        prov = provenance(rest if rest is not None else lab if lab is not None else unc)
        n_z = shape[0] if len(shape) == 3 else 1
        spacing = known_spacing(src)  # None: unknown, no volumes
        rows = label_slices = seg = None
        if lab is not None:
            label_slices = computed_slices(provenance(lab), n_z)
            image = np.asarray((rest if rest is not None else src).data, np.float32)
            rows = label_measurements(np.asarray(lab.data), image, spacing, provenance(lab).get("label_names") or [],
                                      slices=label_slices)
            seg = layer_seg_export(src, provenance(lab).get("label_names") or [], label_slices, prov.get("weights"))
        mods = np.asarray(prov.get("modality_probs", np.zeros((0, 0))), float)
        summary = {
            "input": src.name, "source_file": ((src.metadata or {}).get(VOLUME_KEY) or {}).get("source"),
            "shape": list(shape), "spacing_mm": list(spacing) if spacing else None,
            **{k: prov.get(k) for k in ("weights", "random_weights", "device", "precision", "data_consistency",
                                        "mask", "label_set", "label_names", "normalisation", "time", "seconds")},
            "passes": prov.get("cascades"),
            "slices_computed": computed_slices(prov, n_z), "label_slices_computed": label_slices, "slices_total": n_z,
            "modality_probs": (dict(zip(prov.get("modalities", []), np.nanmean(mods, 0).round(4).tolist()))
                               if mods.ndim == 2 and mods.size and np.isfinite(mods).any() else None),
        }
        arrays = {k: None if v is None else np.asarray(v.data) for k, v in parts.items()}
        return iter_save_results(folder, safe_stem(src.name), summary=summary, like=layer_like(src),
                                 measurements=rows, dicom_seg=seg, overwrite=overwrite, **arrays)

    def _confirm_overwrite(self, message: str) -> bool:
        answer = QMessageBox.question(self, "Replace files?", f"{message}\n\nReplace them?",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def _save_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save results into a folder", self._save_dir)
        if folder:
            self._save_dir = folder
            self.save_results(folder, confirm=self._confirm_overwrite)
