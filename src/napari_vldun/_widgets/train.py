"""Train dock: fine-tune or train VL-DUN on image / labels pairs from layers or from two folders.

The run is :func:`napari_vldun.train.iter_train`'s loop in a napari ``thread_worker``, on
:class:`napari_vldun.data.PairsDataset` s (:func:`~napari_vldun.data.make_pair_datasets` for layers,
:func:`~napari_vldun.data.folder_pair_datasets` for folders) handed over with
:func:`~napari_vldun.train.make_run_builder`. Its ``TrainEvent`` s drive the epoch / step progress bars
and the live loss + validation PSNR / Dice plot. Stop asks the loop to stop after the current step (it saves
``last``); Resume continues ``<out>/last`` exactly. Checkpoints go to an output folder the user must
choose; a folder that already holds a checkpoint is only reused after an explicit confirmation.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QListWidget,
                            QMessageBox, QProgressBar, QPushButton, QStackedWidget, QVBoxLayout, QWidget)

from ..data import folder_pair_datasets, make_pair_datasets
from ..inference import SHIPPED_WEIGHTS, InferenceError, resolve_device
from ..train import TrainConfig, make_run_builder
from ..train.loop import EventKind
from ..train.setup import RUN_FILES
from ._layers import LayerPicker, image_data, labels_data, layer_modality, provenance, to_unit
from ._layout import scrolled_layout
from ._messages import USER_ERRORS, error_text, form_group, set_status, spin_box, status_label
from ._models import model_modalities, shipped_checkpoint_exists
from ._plots import TrainPlot
from ._workers import Failure, JobDock, Outcome, Status, TrainResult, _expected_errors, train_job



def _is_input(layer) -> bool:
    return provenance(layer).get("widget") not in ("stages",)


class TrainWidget(JobDock):
    """Dock widget: train on the user's pairs with live curves.

    ``job_finished`` says "done", "stopped" or "error" when a run ends."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.pairs: list[tuple] = []  # (image layer, labels layer)
        self.out_dir: Path | None = None
        self.result: TrainResult | None = None
        self.events: list = []
        self._stop = threading.Event()

        inner = QWidget()
        lay = QVBoxLayout(inner)
        for box in (self._data_box(), self._labels_box(), self._training_box()):
            lay.addWidget(box)
        lay.addStretch(1)
        # the form is tall: it scrolls, while the buttons, progress, plot and status stay in view
        form, below, self.scroll = scrolled_layout(self)
        form.addWidget(inner)
        self._add_controls(below)
        self.plot.canvas.setMinimumHeight(170)

        self.source.currentIndexChanged.connect(self.data_stack.setCurrentIndex)
        self.add_pair_button.clicked.connect(self.add_pair)
        self.remove_pair_button.clicked.connect(self.remove_pair)
        self.out_button.clicked.connect(self._choose_out)
        self.start_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.stop_button.clicked.connect(self.stop)
        self.start_from.currentIndexChanged.connect(self._refresh_modalities)
        napari_viewer.layers.events.removed.connect(self._drop_removed)
        self._refresh_modalities()
        self._update_buttons()

    # ------------------------------------------------------------------ form
    def _data_box(self) -> QGroupBox:
        self.source = QComboBox()
        self.source.addItems(["layers", "folders"])
        self.image_picker = LayerPicker(self.viewer, (Image,), predicate=_is_input)
        self.labels_picker = LayerPicker(self.viewer, (Labels,))
        self.data_stack = QStackedWidget()
        self.data_stack.addWidget(self._layers_panel())
        self.data_stack.addWidget(self._folders_panel())
        return form_group("Data", [("pairs from", self.source), self.data_stack])

    def _layers_panel(self) -> QWidget:
        self.add_pair_button = QPushButton("Add pair")
        self.remove_pair_button = QPushButton("Remove")
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(70)
        panel = QWidget()
        fl = QFormLayout(panel)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.addRow("image", self.image_picker)
        fl.addRow("labels", self.labels_picker)
        row = QHBoxLayout()
        row.addWidget(self.add_pair_button)
        row.addWidget(self.remove_pair_button)
        fl.addRow(row)
        fl.addRow(self.pair_list)
        return panel

    def _folders_panel(self) -> QWidget:
        self.images_dir = QLineEdit()
        self.labels_dir = QLineEdit()
        panel = QWidget()
        ff = QFormLayout(panel)
        ff.setContentsMargins(0, 0, 0, 0)
        for text, edit in (("images folder", self.images_dir), ("labels folder", self.labels_dir)):
            r = QHBoxLayout()
            r.addWidget(edit)
            b = QPushButton("...")
            b.setMaximumWidth(30)
            b.clicked.connect(lambda _=False, e=edit: self._choose_dir_into(e))
            r.addWidget(b)
            ff.addRow(text, r)
        return panel

    def _labels_box(self) -> QGroupBox:
        self.label_set = QLineEdit("custom")
        self.label_set.setToolTip("name of the label set (a known one -- acdc, brats2015, covid_ct -- reuses its "
                                  "class names and colours)")
        self.n_classes = spin_box(2, 255, 2, tip="number of classes including background (label 0)")
        self.modality = QComboBox()
        self.modality.setToolTip("modality class of the pairs: one the model starts from has (see 'start from')")
        self.mask_kind = QComboBox()
        self.mask_kind.addItems(["cartesian", "radial"])
        self.mask_kind.setToolTip("k-space degradation simulated for training: cartesian (MRI) or radial (CT)")
        return form_group("Labels and degradation", [
            ("label set", self.label_set), ("classes", self.n_classes), ("modality", self.modality),
            ("k-space mask", self.mask_kind)])

    def _training_box(self) -> QGroupBox:
        self.val_fraction = spin_box(0.01, 0.9, 0.2, step=0.05,
                                     tip="share of slices kept for validation (at least 1 slice)")
        self.epochs = spin_box(1, 100000, 10)
        self.steps = spin_box(0, 1000000, tip="optimiser steps per epoch (full pass: every training slice once)")
        self.steps.setSpecialValueText("full pass")
        self.batch = spin_box(1, 256, 4)
        self.lr = spin_box(1e-6, 1.0, 5e-4, step=1e-4, decimals=6)
        self.crop = spin_box(16, 1024, 128, step=16)
        self.start_from = QComboBox()
        self.start_from.addItems(["scratch (tiny)", "shipped checkpoint"])
        if not shipped_checkpoint_exists():
            self.start_from.model().item(1).setEnabled(False)
            self.start_from.setToolTip("no checkpoint is shipped yet: training starts from scratch")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        return form_group("Training", [
            ("validation fraction", self.val_fraction), ("epochs", self.epochs), ("steps / epoch", self.steps),
            ("batch size", self.batch), ("learning rate", self.lr), ("crop size", self.crop),
            ("start from", self.start_from), ("device", self.device)])

    def _add_controls(self, lay: QVBoxLayout) -> None:
        """Output folder, Start / Stop / Resume, progress bars, the live plot and the status line."""
        self.out_edit = QLineEdit()
        self.out_edit.setReadOnly(True)
        self.out_edit.setPlaceholderText("choose an output folder first")
        self.out_button = QPushButton("Choose ...")
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit)
        out_row.addWidget(self.out_button)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        controls = QHBoxLayout()
        for b in (self.start_button, self.stop_button, self.resume_button):
            controls.addWidget(b)
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("epoch %v / %m")
        self.step_bar = QProgressBar()
        self.step_bar.setFormat("step %v / %m")
        self.plot = TrainPlot(viewer=self.viewer)
        self.status = status_label()
        fo = QFormLayout()
        fo.addRow("output folder", out_row)
        lay.addLayout(fo)
        lay.addLayout(controls)
        lay.addWidget(self.epoch_bar)
        lay.addWidget(self.step_bar)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.status)

    # ------------------------------------------------------------------ helpers
    def _confirm(self, question: str) -> bool:
        """Ask the user (tests replace this)."""
        answer = QMessageBox.question(self, "VL-DUN training", question, QMessageBox.Yes | QMessageBox.No,
                                      QMessageBox.No)
        return answer == QMessageBox.Yes

    def _choose_dir_into(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text() or "")
        if path:
            edit.setText(path)

    def _choose_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder for checkpoints", "")
        if path:
            self.set_output_dir(path)

    def set_output_dir(self, path: str | Path | None) -> None:
        """The folder for ``best`` / ``last`` checkpoints (nothing is written until Start)."""
        self.out_dir = None if path in (None, "") else Path(path).expanduser()
        self.out_edit.setText("" if self.out_dir is None else str(self.out_dir))
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.worker is not None
        has_out = self.out_dir is not None
        self.start_button.setEnabled(has_out and not running)
        self.resume_button.setEnabled(has_out and not running and (self.out_dir / "last.state.json").is_file())
        self.stop_button.setEnabled(running)
        for w in (self.add_pair_button, self.remove_pair_button, self.out_button, self.source):
            w.setEnabled(not running)
        if not has_out and not running:
            self.start_button.setToolTip("choose an output folder first")

    def _drop_removed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and any(layer == a or layer == b for a, b in self.pairs):
            self.pairs = [(a, b) for a, b in self.pairs if not (layer == a or layer == b)]
            self._refresh_pairs()

    def _refresh_pairs(self) -> None:
        self.pair_list.clear()
        for img, lab in self.pairs:
            self.pair_list.addItem(f"{img.name}  +  {lab.name}  {tuple(np.shape(img.data))}")

    # ------------------------------------------------------------------ pairs
    def add_pair(self, image=None, labels=None) -> bool:
        """Add (image, labels) layers (default: the pickers' choice); checks shapes now."""
        image = image if image is not None else self.image_picker.current_layer()
        labels = labels if labels is not None else self.labels_picker.current_layer()
        try:
            data = image_data(image, "training image")
            lab = labels_data(labels, data.shape, "training labels")
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return False
        if any(image == a and labels == b for a, b in self.pairs):
            return True
        self.pairs.append((image, labels))
        self._refresh_pairs()
        prov = provenance(labels)
        sample = (labels.metadata or {}).get("vldun_sample") or {}
        known = prov.get("label_set") or sample.get("label_set")
        if known and self.label_set.text().strip() in ("", "custom"):
            self.label_set.setText(str(known))
        names = prov.get("label_names") or sample.get("label_names") or []
        self.n_classes.setValue(max(self.n_classes.value(), int(lab.max()) + 1 if lab.size else 2, len(names)))
        set_status(self.status, f"{len(self.pairs)} pair(s)")
        return True

    def remove_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self.pairs):
            del self.pairs[row]
            self._refresh_pairs()

    def _pairs_factory(self, cfg):
        """A callable (run in the worker) that returns the ``(train, val)`` datasets. Layer pairs are
        read and checked now, in the GUI thread; folders are read in the worker."""
        label_set = self.label_set.text().strip()
        if not label_set or not label_set.replace("_", "").replace("-", "").isalnum():
            raise InferenceError("give the label set a name (letters, digits, '_' or '-')")
        opts = dict(label_set=label_set, n_classes=int(self.n_classes.value()), modality=self.modality.currentText(),
                    val_fraction=float(self.val_fraction.value()), crop=cfg.crop, val_crop=cfg.val_crop,
                    mask_kind=self.mask_kind.currentText(), accel_range=tuple(cfg.accel_range),
                    center_fraction=cfg.center_fraction, noise_sigma_range=tuple(cfg.noise_sigma_range),
                    val_accel=cfg.val_accel, seed=cfg.seed, augment=cfg.augment)
        if self.source.currentText() == "layers":
            if not self.pairs:
                raise InferenceError("add at least one image + labels pair (pick them, then 'Add pair')")
            pairs, names = [], []
            for img_layer, lab_layer in self.pairs:
                data = image_data(img_layer, "training image")
                lab = labels_data(lab_layer, data.shape, "training labels")
                unit, _ = to_unit(data, layer_modality(img_layer))
                pairs.append((unit, np.asarray(lab)))
                names.append(f"{img_layer.name} + {lab_layer.name}")
            datasets = make_pair_datasets(pairs, pair_names=names, origin="napari layers", **opts)
            return lambda: datasets
        images, labels = self.images_dir.text().strip(), self.labels_dir.text().strip()
        if not images or not labels:
            raise InferenceError("choose both the images folder and the labels folder")
        return lambda: folder_pair_datasets(images, labels, **opts)

    def start_model(self) -> str:
        """What training starts from: ``"tiny"`` (scratch) or the shipped checkpoint's path."""
        if self.start_from.currentIndex() == 1:
            if not shipped_checkpoint_exists():
                raise InferenceError("no checkpoint is shipped yet: train from scratch")
            return str(SHIPPED_WEIGHTS)
        return "tiny"

    def _refresh_modalities(self, *_) -> None:
        """Offer the modality classes of the model training starts from (a checkpoint has its own)."""
        current = self.modality.currentText()
        try:
            names = model_modalities(self.start_model())
        except USER_ERRORS:  # unreadable: reported when started
            names = []
        self.modality.clear()
        self.modality.addItems(names)
        self.modality.setCurrentIndex(max(self.modality.findText(current), 0))

    # ------------------------------------------------------------------ run
    def config(self, resume: bool = False):
        """The :class:`~napari_vldun.train.TrainConfig` of the form (raises ValueError)."""
        if self.out_dir is None:
            raise InferenceError("choose an output folder for the checkpoints first")
        crop = int(self.crop.value())
        model = self.start_model()
        # no shared sources: the data are the pairs (make_run_builder); the checkpoints record them
        cfg = TrainConfig(model=model, sources=[], crop=crop, val_crop=crop,
                          batch_size=int(self.batch.value()), epochs=int(self.epochs.value()),
                          steps_per_epoch=int(self.steps.value()) or None, lr=float(self.lr.value()),
                          out_dir=str(self.out_dir), device=self.device.currentText(), prior_epochs=0,
                          val_max_slices=None, log_every=1, seed=0)
        cfg.validate("training form")
        return cfg

    def start(self, resume: bool = False):
        """Start (or resume) training; returns the worker (None when refused)."""
        if self.worker is not None:
            return None
        try:
            cfg = self.config(resume)
            resolve_device(cfg.device)
            factory = self._pairs_factory(cfg)
            present = [f for f in RUN_FILES if (self.out_dir / f).exists()]
            if resume:
                if not (self.out_dir / "last.state.json").is_file():
                    raise InferenceError(f"nothing to resume in {self.out_dir}: no 'last' checkpoint with its "
                                         "training state; press Start")
            elif present:
                if not self._confirm(f"{self.out_dir} already holds a checkpoint ({', '.join(present)}).\n"
                                     "Replace it with a new training run?"):
                    set_status(self.status, "not started: the existing checkpoint was kept", "warning")
                    return None
                cfg.overwrite = True
        except USER_ERRORS as exc:
            self._error(error_text(exc))
            return None
        self._stop.clear()
        self._outcome = None
        self.result = None
        self.events = []
        if not resume:
            self.plot.reset()
        self.epoch_bar.setRange(0, cfg.epochs)
        self.epoch_bar.setValue(0)
        self.step_bar.setValue(0)
        set_status(self.status, "starting ...")
        return self._launch(_train_with_factory, cfg, resume, self._stop, factory)

    def stop(self) -> None:
        """Ask the loop to stop after the current step (it saves ``last``)."""
        if self.worker is not None:
            self._stop.set()
            set_status(self.status, "stopping after the current step ...", "warning")

    def _on_yielded(self, ev) -> None:
        if isinstance(ev, Status):
            set_status(self.status, ev.text)
            return
        self.events.append(ev)
        m = ev.metrics or {}
        if ev.kind == EventKind.START:
            ph = (m.get("phases") or {}).get("joint", {})
            self.epoch_bar.setRange(0, int(ph.get("epochs", self.epochs.value())))
            self.step_bar.setRange(0, max(1, int(ph.get("steps_per_epoch", 1))))
            note = f"training on {m.get('device')}: {m.get('train_slices')} training / {m.get('val_slices')} " \
                   "validation slices"
            if m.get("resumed"):
                note += f", resumed at step {m.get('resumed_from_step')}"
            set_status(self.status, note)
        elif ev.kind == EventKind.STEP:
            if "loss" in m:
                self.plot.add_point("loss", ev.step, m["loss"])
            self.step_bar.setRange(0, max(1, ev.epoch_steps))
            self.step_bar.setValue(ev.epoch_step)
            self.epoch_bar.setRange(0, max(1, ev.epochs))
            self.epoch_bar.setValue(max(ev.epoch - 1, 0))
            set_status(self.status, f"epoch {ev.epoch}/{ev.epochs}, step {ev.step}/{ev.total_steps}: "
                         f"loss {m.get('loss', float('nan')):.4f}")
        elif ev.kind == EventKind.EPOCH:
            for key in ("val_psnr", "val_dice"):
                if key in m and m[key] == m[key]:
                    self.plot.add_point(key, ev.step, m[key])
            self.epoch_bar.setValue(ev.epoch)
            set_status(self.status, f"epoch {ev.epoch}: val PSNR {m.get('val_psnr', float('nan')):.2f} dB, "
                         f"val Dice {m.get('val_dice', float('nan')):.3f}")
        elif ev.kind == EventKind.CHECKPOINT:
            set_status(self.status, f"saved {ev.checkpoint}")
        elif ev.kind == EventKind.STOPPED:
            set_status(self.status, f"stopped at step {ev.step}; 'last' saved in {self.out_dir} (Resume continues)",
                         "warning")
        elif ev.kind == EventKind.DONE:
            best = m.get("best") or m.get("last")
            set_status(self.status, f"done: best checkpoint {best}")

    def _on_result(self, result: TrainResult) -> None:
        self.result = result
        self._outcome = result.outcome
        where = result.best or result.last
        if result.outcome == Outcome.DONE:
            set_status(self.status, f"done after {result.events} events: checkpoint {where} "
                         "(load it in Restore & Segment as a local file)")


def _train_with_factory(cfg, resume, stop, factory):
    """Worker generator: build the datasets (folders are read here, off the GUI thread), then train."""
    try:
        yield Status("reading the training data ...")
        train, val = factory()
    except _expected_errors() as exc:
        return Failure(error_text(exc))
    return (yield from train_job(cfg, resume=resume, stop=stop, run_builder=make_run_builder(train, val)))
