"""Degrade dock: simulate k-space undersampling (+ optional blur and noise) on a clean layer and
score results against references.

Degrade: the clean layer is brought to [0, 1] (as Restore & Segment does), optionally blurred
(:func:`~napari_vldun.degradation.gaussian_blur`), undersampled with one Cartesian or radial mask for
every slice (:func:`~napari_vldun.degradation.degrade`), optionally given Gaussian noise
(:func:`~napari_vldun.degradation.gaussian_noise`), mapped back to the clean layer's units and added
as ``<name> degraded (cartesian 4x)``. PSNR / SSIM against the clean layer are computed in [0, 1]
(the degraded image clipped to [0, 1]; mean over slices) with :mod:`napari_vldun.metrics`.

Compare: PSNR / SSIM of any result image against a clean reference, and Dice / IoU of a result
labels layer against reference labels, each only over the slices that result computed
(``metadata["vldun"]["slices_done"]``), and the status says over how many. Picking a result image picks the
labels made with it (and drops labels that belong to another result); picking a result's labels picks
its image.

Compare also fills two tables: the Dice of every class over the computed slices together and slice by
slice (:func:`napari_vldun.measure.dice_table`), and the measurements of the result and reference labels
(voxels, volume in mL, mean intensity of the result / reference image, areas per slice in the CSV;
:func:`napari_vldun.measure.label_measurements`, spacing from the reference layer's scale in mm) over
the same slices; "Export CSV ..." writes the measurements (:func:`napari_vldun.measure.measurements_csv`).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from pathlib import Path

from qtpy.QtWidgets import QComboBox, QFileDialog, QGroupBox, QPushButton, QTableWidget, QWidget

from ..degradation import gaussian_blur, gaussian_noise
from ..degradation.measurement import Measurement
from ..metrics import dice, iou, psnr, ssim
from ..inference import InferenceError
from ..measure import dice_table, label_measurements, write_measurements_csv
from ._layers import (MEASUREMENT_KEY, LayerPicker, apply_unit, from_unit, image_data, inherited_metadata,
                      labels_data, known_spacing, now, provenance, put_layer, unit_stack)
from ._logic import MEASUREMENT_COLUMNS, computed_slices, dice_cells, measurement_cells
from ._layout import scrolled_layout
from ._messages import (USER_ERRORS, error_text, fill_table, form_group, report_error, set_status, spin_box,
                        status_label)
from ._models import avoid_llvm_clash

WIDGET = "degrade"


def _not_ours_stage(layer) -> bool:
    return provenance(layer).get("widget") != "stages"


class DegradeWidget(QWidget):
    """Dock widget: make a degraded copy of a clean image and compare results with references."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.last_message = ""
        self.last_metrics: dict = {}
        self.last_compare: dict = {}
        self.last_measurements: list[dict] = []
        self.last_layer = None
        lay, _, self.scroll = scrolled_layout(self)  # stacked with other docks: scroll, never cut off
        lay.addWidget(self._degrade_box())
        lay.addWidget(self._compare_box())
        lay.addStretch(1)

        self.kind.currentIndexChanged.connect(lambda *_: self.center.setEnabled(self.kind.currentText() == "cartesian"))
        self.degrade_button.clicked.connect(self.run_degrade)
        self.compare_button.clicked.connect(self.run_compare)
        self.export_button.clicked.connect(self._export_clicked)
        self.result_picker.currentIndexChanged.connect(self._follow_result)
        self.pred_labels_picker.currentIndexChanged.connect(self._follow_labels)
        self._follow_result()

    def _degrade_box(self) -> QGroupBox:
        self.clean_picker = LayerPicker(self.viewer, (Image,), predicate=_not_ours_stage)
        self.kind = QComboBox()
        self.kind.addItems(["cartesian", "radial"])
        self.kind.setToolTip("cartesian: phase-encode lines (accelerated MRI); radial: spokes (sparse-view CT)")
        self.accel = spin_box(1.0, 64.0, 4.0, step=0.5)
        self.center = spin_box(0.0, 0.5, 0.08, step=0.01, decimals=3,
                               tip="fraction of central k-space lines always kept (Cartesian)")
        self.seed = spin_box(0, 2**31 - 1)
        self.noise = spin_box(0.0, 1.0, step=0.005, decimals=3,
                              tip="std of additive Gaussian noise, in [0, 1] intensity units (0: none)")
        self.blur = spin_box(0.0, 20.0, step=0.5,
                             tip="Gaussian blur sigma in pixels, applied before undersampling (0: none)")
        self.degrade_button = QPushButton("Degrade")
        self.degrade_result = status_label()
        return form_group("Degrade", [
            ("clean image", self.clean_picker), ("mask", self.kind), ("acceleration", self.accel),
            ("center fraction", self.center), ("seed", self.seed), ("noise sigma", self.noise),
            ("blur sigma (px)", self.blur), self.degrade_button, self.degrade_result])

    def _compare_box(self) -> QGroupBox:
        self.ref_picker = LayerPicker(self.viewer, (Image,), predicate=_not_ours_stage)
        self.result_picker = LayerPicker(self.viewer, (Image,), predicate=_not_ours_stage)
        self.ref_labels_picker = LayerPicker(self.viewer, (Labels,), none_text="(none)")
        self.pred_labels_picker = LayerPicker(self.viewer, (Labels,), none_text="(none)")
        self.compare_button = QPushButton("Compare")
        self.compare_result = status_label()
        self.dice_table = QTableWidget(0, 0)
        self.dice_table.setToolTip("Dice per class: over all computed slices, then slice by slice")
        self.measure_table = QTableWidget(0, 0)
        self.measure_table.setToolTip("per label of the result and reference labels, over the same slices")
        for t in (self.dice_table, self.measure_table):
            t.setMinimumHeight(90)
        self.export_button = QPushButton("Export CSV ...")
        self.export_button.setToolTip("the measurements with the area of every label on every slice (mm^2)")
        self.export_button.setEnabled(False)
        return form_group("Compare", [
            ("clean reference", self.ref_picker), ("result image", self.result_picker),
            ("reference labels", self.ref_labels_picker), ("result labels", self.pred_labels_picker),
            self.compare_button, self.compare_result, ("Dice", self.dice_table),
            ("measurements", self.measure_table), self.export_button])

    # ------------------------------------------------------------------ degrade
    def run_degrade(self):
        """Degrade the clean layer; returns the new layer (None on error)."""
        layer = self.clean_picker.current_layer()
        kind, accel, seed = self.kind.currentText(), float(self.accel.value()), int(self.seed.value())
        noise, blur = float(self.noise.value()), float(self.blur.value())
        try:
            data = image_data(layer, "clean")
            clean, params = unit_stack(layer, data)
            x = gaussian_blur(clean, blur) if blur > 0 else clean
            kw = {"center_fraction": float(self.center.value())} if kind == "cartesian" else {}
            y, meas = Measurement.simulate(np.ascontiguousarray(x, np.float32), kind, accel, seed=seed, **kw)
            if noise > 0:
                y = np.asarray(gaussian_noise(y, noise, seed=seed + 1), np.float32)
            shown = np.clip(y, 0.0, 1.0)
            metrics = {"psnr": float(psnr(shown, clean)), "ssim": float(ssim(shown, clean)),
                       "fraction": meas.fraction, "slices": int(clean.shape[0])}
        except USER_ERRORS as exc:
            report_error(self, error_text(exc), self.degrade_result)
            return None
        label = f"{kind} {accel:g}x"
        extras = [f"noise {noise:g}" if noise > 0 else "", f"blur {blur:g}" if blur > 0 else ""]
        extras = [e for e in extras if e]
        if extras:
            label += ", " + ", ".join(extras)
        prov = {"mask": kind, "accel": accel, "seed": seed, "noise_sigma": noise, "blur_sigma": blur,
                "fraction": metrics["fraction"], "center_fraction": kw.get("center_fraction"),
                "normalisation": {k: v for k, v in params.items() if k != "mask"},
                "psnr": metrics["psnr"], "ssim": metrics["ssim"], "time": now()}
        out = from_unit(y, params).reshape(data.shape)
        meta = inherited_metadata(layer)
        if noise == 0:  # noise is added in image space: then there is no k-space measurement to keep
            meta[MEASUREMENT_KEY] = {"kspace": meas.kspace, "mask": meas.mask,
                                     "normalisation": {k: v for k, v in params.items() if k != "mask"}}
        new = put_layer(self.viewer, "image", f"{layer.name} degraded ({label})", out, widget=WIDGET,
                          source_layer=layer, prov=prov, metadata=meta, colormap="gray",
                          contrast_limits=tuple(layer.contrast_limits))
        self.last_metrics = metrics
        self.last_layer = new
        per = f" (mean over {metrics['slices']} slices)" if metrics["slices"] > 1 else ""
        set_status(self.degrade_result,
                     f"'{new.name}': sampled {metrics['fraction']:.1%} of k-space; vs clean: "
                     f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}{per}")
        self.ref_picker.set_layer(layer)
        return new

    # ------------------------------------------------------------------ compare
    def _partner(self, layer, key: str):
        """The layer named in ``layer``'s provenance under ``key`` (a result's labels / image), or None."""
        name = provenance(layer).get(key) if layer is not None else None
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _follow_result(self, *_) -> None:
        """Pick the labels that came with the result image; drop labels of another result."""
        layer = self.result_picker.current_layer()
        if layer is None:
            return
        labels = self._partner(layer, "labels_layer")
        current = self.pred_labels_picker.current_layer()
        if labels is not None:
            self.pred_labels_picker.set_layer(labels)
        elif current is not None and self._partner(current, "restored_layer") not in (None, layer):
            self.pred_labels_picker.set_layer(None)

    def _follow_labels(self, *_) -> None:
        """Picking a result's labels picks its image."""
        image = self._partner(self.pred_labels_picker.current_layer(), "restored_layer")
        if image is not None:
            self.result_picker.set_layer(image)

    def run_compare(self) -> dict | None:
        """PSNR / SSIM (and Dice / IoU when labels are picked) of the result; returns the metrics."""
        ref, res = self.ref_picker.current_layer(), self.result_picker.current_layer()
        ref_lab, pred_lab = self.ref_labels_picker.current_layer(), self.pred_labels_picker.current_layer()
        try:
            clean = image_data(ref, "clean reference")
            n_z = clean.shape[0] if clean.ndim == 3 else 1
            idx = computed_slices(provenance(res), n_z) if res is not None else []
            result = image_data(res, "result", idx)
            if result.shape != clean.shape:
                raise InferenceError(f"result '{res.name}' has shape {result.shape}, the reference "
                                     f"'{ref.name}' {clean.shape}; they must match")
            if not idx:
                raise InferenceError(f"result '{res.name}' holds no computed slice")
            clean_u, params = unit_stack(ref, clean)
            vol_shape = clean_u.shape
            result_u = apply_unit(result.reshape(vol_shape), params)
            m: dict = {"slices": len(idx), "of": n_z}
            rows: list[dict] = []

            def measure(source: str, labels: np.ndarray, image: np.ndarray, names: list, slices: list[int]):
                rows.extend({"source": source, **r} for r in label_measurements(
                    labels, image, known_spacing(ref), names, slices=slices))
            if res is not ref:
                m["psnr"] = float(psnr(result_u[idx], clean_u[idx]))
                m["ssim"] = float(ssim(result_u[idx], clean_u[idx]))
            if ref_lab is not None and pred_lab is not None:
                t = labels_data(ref_lab, clean.shape, "reference labels").reshape(vol_shape)
                p = labels_data(pred_lab, clean.shape, "result labels").reshape(vol_shape)
                names = provenance(pred_lab).get("label_names") or []
                lidx = computed_slices(provenance(pred_lab), n_z)
                if not lidx:
                    raise InferenceError(f"result labels '{pred_lab.name}' hold no computed slice")
                n = max(len(names), int(t.max()) + 1, int(p.max()) + 1, 2)
                m["dice"] = float(dice(p[lidx], t[lidx], n))
                m["iou"] = float(iou(p[lidx], t[lidx], n))
                m["classes"] = n
                m["label_slices"] = len(lidx)
                m["dice_table"] = dice_table(p, t, n, names, lidx)
                measure("result", p, result, names, lidx)
                measure("reference", t, clean, names, lidx)  # over the same slices
            elif (ref_lab is None) != (pred_lab is None):
                m["note"] = "pick both reference and result labels for Dice"
                if pred_lab is not None:
                    measure("result", labels_data(pred_lab, clean.shape, "result labels"), result,
                            provenance(pred_lab).get("label_names") or [], computed_slices(provenance(pred_lab), n_z))
                else:
                    measure("reference", labels_data(ref_lab, clean.shape, "reference labels"), clean, [],
                            list(range(n_z)))
        except USER_ERRORS as exc:
            report_error(self, error_text(exc), self.compare_result)
            self._show_tables({}, [])
            return None
        self.last_compare = m
        self._show_tables(m, rows)
        parts = []
        if "psnr" in m:
            parts.append(f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f} over {m['slices']} of {n_z} slice(s)")
        if "dice" in m:
            d = "n/a (no foreground in the reference)" if np.isnan(m["dice"]) else f"{m['dice']:.3f}"
            parts.append(f"Dice {d}, IoU {m['iou']:.3f} ({m['classes']} classes) over {m['label_slices']} of "
                         f"{n_z} slice(s) ('{pred_lab.name}')")
        if m.get("note"):
            parts.append(m["note"])
        if rows and known_spacing(ref) is None:
            parts.append(f"'{ref.name}' has no known voxel spacing: volumes and areas are n/a (set the layer's "
                         "scale in mm to get them)")
        set_status(self.compare_result, f"'{res.name}' vs '{ref.name}': " + "; ".join(parts or ["nothing to compare"]))
        return m

    # ------------------------------------------------------------------ measurements CSV
    def _show_tables(self, m: dict, rows: list[dict]) -> None:
        """The Dice and measurements tables of a Compare (empty after an error)."""
        self.last_measurements = rows
        fill_table(self.measure_table, MEASUREMENT_COLUMNS, measurement_cells(rows))
        fill_table(self.dice_table, *(dice_cells(m["dice_table"]) if "dice_table" in m else ([], [])))
        self.export_button.setEnabled(bool(rows))

    def export_measurements(self, path: str | Path, overwrite: bool = False) -> Path | None:
        """Write the last Compare's measurements as CSV (:func:`napari_vldun.measure.write_measurements_csv`,
        atomic); an existing file only with ``overwrite``. Returns the path, None when refused."""
        try:
            if not self.last_measurements:
                raise InferenceError("no measurements yet: pick labels and press Compare")
            out = write_measurements_csv(path, self.last_measurements, overwrite)
        except USER_ERRORS as exc:
            report_error(self, error_text(exc), self.compare_result)
            return None
        set_status(self.compare_result, f"{self.compare_result.text()}\nmeasurements written to {out}")
        return out

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export measurements", "measurements.csv", "CSV (*.csv)")
        if path:  # the dialog has asked before replacing a file
            self.export_measurements(path, overwrite=True)
