"""Priors dock: bar charts of the modality and degradation probabilities of the current slice.

It reads ``metadata["vldun"]["modality_probs"]`` / ``["degradation_probs"]`` (``(Z, M)`` / ``(Z, K)``,
NaN for slices not computed) of a restored layer made by Restore & Segment, follows the viewer's
current slice, and switches to the newest result whenever Restore & Segment publishes one.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from ._layers import LayerPicker, current_index, provenance
from ._messages import results_hub
from ._models import avoid_llvm_clash
from ._plots import BarChart


def _has_probs(layer) -> bool:
    prov = provenance(layer)
    return prov.get("widget") == "restore" and prov.get("modality_probs") is not None


class PriorsWidget(QWidget):
    """Dock widget: modality / degradation prior bars for the current slice of a result."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.result_picker = LayerPicker(napari_viewer, (Image,), predicate=_has_probs)
        self.info = QLabel("Run Restore & Segment: the priors of its result appear here.")
        self.info.setWordWrap(True)
        self.chart = BarChart(["modality prior", "degradation prior"], viewer=napari_viewer)
        self.slice_index: int | None = None
        form = QFormLayout()
        form.addRow("result", self.result_picker)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.info)
        lay.addWidget(self.chart, 1)

        self.result_picker.currentIndexChanged.connect(self.update_plot)
        napari_viewer.dims.events.current_step.connect(self.update_plot)
        results_hub().published.connect(self._on_published)
        self.destroyed.connect(self._disconnect)
        self.update_plot()

    def _disconnect(self, *_) -> None:
        try:
            results_hub().published.disconnect(self._on_published)
        except (TypeError, RuntimeError):
            pass
        try:
            self.viewer.dims.events.current_step.disconnect(self.update_plot)
        except (TypeError, ValueError, RuntimeError):
            pass

    def _on_published(self, layer) -> None:
        try:
            if layer in self.viewer.layers and _has_probs(layer):
                self.result_picker.set_layer(layer)
        except RuntimeError:  # this dock was closed
            return
        self.update_plot()

    def probabilities(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(modality probs, degradation probs) shown now, or None."""
        layer = self.result_picker.current_layer()
        if layer is None:
            return None
        prov = provenance(layer)
        mod, deg = np.asarray(prov["modality_probs"], float), np.asarray(prov.get("degradation_probs"), float)
        z = current_index(self.viewer, layer, 0) if layer.ndim == 3 else 0
        self.slice_index = z
        if z >= len(mod) or np.isnan(mod[z]).any():
            return None
        return mod[z], (deg[z] if deg.ndim == 2 and z < len(deg) else np.full(0, np.nan))

    def update_plot(self, *_) -> None:
        try:
            layer = self.result_picker.current_layer()
        except RuntimeError:  # closed
            return
        if layer is None:
            self.chart.clear("no result yet")
            self.info.setText("Run Restore & Segment: the priors of its result appear here.")
            return
        prov = provenance(layer)
        probs = self.probabilities()
        z = self.slice_index
        if probs is None:
            self.chart.clear(f"slice {z} not computed")
            self.info.setText(f"'{layer.name}': slice {z} was not restored; run Restore & Segment on it.")
            return
        mod, deg = probs
        mods, degs = prov.get("modalities", []), prov.get("degradations", [])
        self.chart.set_bars(0, mods, mod, f"modality prior (slice {z})")
        if deg.size:
            self.chart.set_bars(1, degs, deg, f"degradation prior (slice {z})")
        best_m = mods[int(np.argmax(mod))] if len(mods) else "?"
        best_d = degs[int(np.argmax(deg))] if deg.size and len(degs) else "?"
        text = f"slice {z}: most likely {best_m} ({mod.max():.2f}), {best_d}"
        if prov.get("random_weights"):
            text += "  [random weights: meaningless]"
        self.info.setText(text)
