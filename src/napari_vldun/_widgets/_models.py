"""The model side of the VL-DUN docks: a small model cache (one model in memory, reloaded when its
checkpoint file changes), the shipped-checkpoint check, the checkpoint / device chooser, and the
guard that keeps triton from loading next to Mesa's LLVM.

Nothing here runs a model itself: that is :mod:`napari_vldun.inference`, called from the generators
in :mod:`._workers`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from qtpy.QtWidgets import QComboBox, QLabel

from ..inference import SHIPPED_WEIGHTS, InferenceError, compile_loaded, load_model, resolve_device
from ..model import CONFIGS, get_config
from ..model.checkpoint import checkpoint_paths, read_checkpoint_config
from ..model.config import LABEL_COLORS, LABEL_SETS


# ------------------------------------------------------------------------- model cache
def avoid_llvm_clash() -> bool:
    """Keep ``triton`` from loading next to an LLVM already in the process.

    Importing the model imports open_clip -> torchvision -> torch._dynamo, which imports ``triton``
    if installed. triton carries its own LLVM; loading it after Mesa's software OpenGL (llvmpipe,
    which maps ``libLLVM``) has drawn napari's canvas kills the process with a segmentation fault.
    Without CUDA triton is useless, so in that case it is marked unavailable (torch then reports
    "no triton"). Returns True when it did so.
    """
    import sys

    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as fh:
            maps = fh.read()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    try:
        import torch

        if torch.cuda.is_available():
            return False
    except Exception:  # noqa: BLE001
        pass
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()


def shipped_checkpoint_exists() -> bool:
    return SHIPPED_WEIGHTS.with_suffix(".json").exists()


def _weights_key(weights: str | Path | None) -> tuple:
    if weights is None:
        return ("shipped",)
    w, c = checkpoint_paths(weights)
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else -1 for p in (w, c))
    return (str(Path(weights).expanduser().resolve()), stamp)


def get_model(weights: str | Path | None, device: str, compile: bool = False):
    """:func:`napari_vldun.inference.load_model`, cached per (checkpoint file + mtime, device); ``compile``:
    its compiled copy (:func:`~napari_vldun.inference.compile_loaded`, cached beside it, so that each size
    compiles once per session). Runs in worker threads; returns ``LoadedModel``."""
    import warnings

    avoid_llvm_clash()
    dev = str(resolve_device(device))
    key = (_weights_key(weights), dev)
    with _MODEL_LOCK:
        loaded = _MODEL_CACHE.get(key)
        if loaded is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no shipped checkpoint": shown in the widget
                loaded = load_model(weights, dev)
            _MODEL_CACHE.clear()  # keep one model (and its compiled copy) in memory
            _MODEL_CACHE[key] = loaded
        if not compile:
            return loaded
        fast = _MODEL_CACHE.get((*key, "compiled"))
        if fast is None:
            fast = compile_loaded(loaded)
            _MODEL_CACHE[(*key, "compiled")] = fast
        return fast


def free_memory(device: Any = None) -> None:
    """gc + CUDA cache: after a run (the training generator releases its model itself), or once the
    cached models are dropped."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def clear_model_cache() -> None:
    """Drop cached models (and CUDA cache)."""
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()
    free_memory()


def checkpoint_label_sets(weights: str | Path | None) -> tuple[dict, dict]:
    """(label sets, label colours) of a checkpoint (only its JSON is read), or of the default config."""
    if weights is None and shipped_checkpoint_exists():
        weights = SHIPPED_WEIGHTS
    if weights is not None:
        cfg, _ = read_checkpoint_config(weights)
        return dict(cfg.label_sets), dict(cfg.label_colors)
    return ({k: list(v) for k, v in LABEL_SETS.items()}, {k: list(v) for k, v in LABEL_COLORS.items()})


def model_modalities(model: str | Path) -> list[str]:
    """Modality classes of the model training starts from: a named config (``"tiny"``) or a checkpoint
    (only its JSON is read); raises ValueError (``CheckpointError``) for an unreadable checkpoint."""
    if str(model) in CONFIGS:
        return list(get_config(str(model)).modalities)
    return list(read_checkpoint_config(model)[0].modalities)


RANDOM_WEIGHTS_TEXT = ("No trained checkpoint is shipped yet: a randomly initialised tiny model is used, "
                       "so restorations, labels and priors are meaningless. Pick a trained checkpoint file.")


# ------------------------------------------------------------------------- model chooser
class ModelChooser:
    """Checkpoint (shipped default or a local file) and device controls, shared by the docks.

    Not a widget itself: it creates the Qt controls and adds them to a form layout, so each dock
    keeps a flat form. ``changed`` callbacks run when the checkpoint changes.
    """

    def __init__(self, parent, form, *, with_device: bool = True) -> None:
        from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

        self._dialog = QFileDialog
        self.parent = parent
        self.callbacks: list[Callable[[], None]] = []
        self.mode = QComboBox()
        self.mode.addItems(["shipped default", "local file ..."])
        self.mode.setToolTip("the checkpoint shipped with napari-vldun, or a NAME.safetensors + NAME.json pair")
        self.path = QLineEdit()
        self.path.setPlaceholderText("NAME.safetensors (+ NAME.json)")
        self.browse = QPushButton("Browse ...")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path)
        row.addWidget(self.browse)
        self.path_box = QWidget()
        self.path_box.setLayout(row)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.warning = QLabel(RANDOM_WEIGHTS_TEXT)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb347;")
        form.addRow("checkpoint", self.mode)
        form.addRow("", self.path_box)
        if with_device:
            form.addRow("device", self.device)
        self.mode.currentIndexChanged.connect(self._changed)
        self.path.editingFinished.connect(self._changed)
        self.browse.clicked.connect(self._browse)
        self._changed()

    def _changed(self, *_) -> None:
        local = self.mode.currentIndex() == 1
        self.path_box.setVisible(local)
        self.warning.setVisible(not local and not shipped_checkpoint_exists())
        for cb in self.callbacks:
            cb()

    def _browse(self) -> None:
        path, _ = self._dialog.getOpenFileName(self.parent, "VL-DUN checkpoint", "",
                                               "VL-DUN checkpoint (*.safetensors *.json)")
        if path:
            self.set_weights(path)

    def set_weights(self, path: str | Path | None) -> None:
        """``None``: the shipped default; else a local checkpoint path."""
        if path is not None:
            self.path.setText(str(path))
        self.mode.blockSignals(True)
        self.mode.setCurrentIndex(0 if path is None else 1)
        self.mode.blockSignals(False)
        self._changed()

    def weights(self) -> str | None:
        if self.mode.currentIndex() == 0:
            return None
        text = self.path.text().strip()
        if not text:
            raise InferenceError("choose a checkpoint file (or the shipped default)")
        return text

    def device_name(self) -> str:
        return self.device.currentText()

    def choice(self) -> tuple[str | None, str]:
        """(checkpoint, device) of the form; raises ValueError for a missing checkpoint path, or for
        CUDA asked for without CUDA."""
        weights = self.weights()
        device = self.device_name()
        resolve_device(device)
        return weights, device

    def show_random(self, random_weights: bool) -> None:
        self.warning.setVisible(bool(random_weights))
