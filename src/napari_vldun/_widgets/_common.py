"""Shared helpers of the VL-DUN dock widgets: layer pickers, input checks, normalisation,
output layers with provenance, label colour maps, notifications and a small model cache.

Nothing here runs a model or a training loop itself: that is :mod:`napari_vldun.inference` /
:mod:`napari_vldun.train`, called from the generators in :mod:`._workers`.

Provenance convention: every layer a VL-DUN widget creates carries
``layer.metadata["vldun"]`` = ``{"widget": <tag>, "source": <input layer name>, ...}``. A widget
only ever updates a layer whose provenance has its own tag and the same source; any other layer of
the wanted name is left alone and the output goes to ``<name> [2]`` (``[3]`` ...) instead.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QLabel

from ..inference import InferenceError, validate_image

#: ``layer.metadata`` key of VL-DUN provenance.
VLDUN_KEY = "vldun"
#: ``layer.metadata`` key where :mod:`napari_vldun._reader` keeps the file geometry.
VOLUME_KEY = "vldun_volume"

#: Errors a user can fix; shown as a notification, never raised into Qt.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 MemoryError, OSError)


# ------------------------------------------------------------------------- notifications
def show_error(message: str) -> None:
    """napari error notification (looked up at call time so tests can intercept it)."""
    notifications.show_error(str(message))


def show_warning(message: str) -> None:
    notifications.show_warning(str(message))


def show_info(message: str) -> None:
    notifications.show_info(str(message))


def error_text(exc: BaseException) -> str:
    """A one-line user-facing text for an exception (no traceback)."""
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"out of memory: {msg}; try the current slice only, a smaller crop or the CPU"
    return msg


def set_status(label: QLabel | None, text: str, kind: str = "info") -> None:
    """Put ``text`` into a status label, coloured by ``kind`` (info / warning / error)."""
    if label is None:
        return
    colour = {"error": "#ff6b6b", "warning": "#ffb347"}.get(kind, "")
    label.setStyleSheet(f"color: {colour};" if colour else "")
    label.setText(text)


# ------------------------------------------------------------------------- results hub
class _ResultsHub(QObject):
    """Process-wide signal: a widget published new results in ``layer`` (Priors listens)."""

    published = Signal(object)


_HUB: _ResultsHub | None = None


def results_hub() -> _ResultsHub:
    global _HUB
    if _HUB is None:
        _HUB = _ResultsHub()
    return _HUB


# ------------------------------------------------------------------------- layer picker
class LayerPicker(QComboBox):
    """Combo box of the viewer's layers of some types, kept in sync with the layer list.

    ``predicate(layer) -> bool`` narrows the choice further; ``none_text`` adds an empty entry.
    """

    def __init__(self, viewer, layer_types: tuple[type, ...], *, predicate: Callable[[Any], bool] | None = None,
                 none_text: str | None = None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_types = layer_types
        self.predicate = predicate
        self.none_text = none_text
        self._layers: list[Any] = []
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        ev = viewer.layers.events
        links = [(ev.inserted, self._on_inserted), (ev.removed, self._on_removed), (ev.reordered, self.refresh)]
        for sig, cb in links:
            sig.connect(cb)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

        def unlink(*_, links=links, viewer=viewer, cb=self.refresh):
            for sig, fn in links:
                try:
                    sig.disconnect(fn)
                except (TypeError, ValueError, RuntimeError):
                    pass
            for layer in list(viewer.layers):
                try:
                    layer.events.name.disconnect(cb)
                except (TypeError, ValueError, RuntimeError):
                    pass

        self.destroyed.connect(unlink)
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_removed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            try:
                layer.events.name.disconnect(self.refresh)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.refresh()

    def accepts(self, layer) -> bool:
        if not isinstance(layer, self.layer_types):
            return False
        return self.predicate is None or bool(self.predicate(layer))

    def refresh(self, event=None) -> None:
        try:
            self._refresh()
        except RuntimeError:  # the combo box was deleted (dock closed)
            pass

    def _refresh(self) -> None:
        current = self.current_layer()
        self.blockSignals(True)
        self.clear()
        self._layers = ([None] if self.none_text is not None else []) + [
            layer for layer in self.viewer.layers if self.accepts(layer)]
        for layer in self._layers:
            self.addItem(self.none_text if layer is None else layer.name)
        if current is not None and current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
        elif self._layers and self.none_text is None:
            # default: the newest matching layer
            self.setCurrentIndex(len(self._layers) - 1)
        self.blockSignals(False)
        if self.current_layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self):
        i = self.currentIndex()
        layers = getattr(self, "_layers", [])
        return layers[i] if 0 <= i < len(layers) else None

    def set_layer(self, layer) -> None:
        """Select ``layer`` (or the empty entry for ``None``)."""
        if layer not in self._layers:
            self.refresh()
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))


# ------------------------------------------------------------------------- input checks
def image_data(layer, what: str = "input") -> np.ndarray:
    """The data of an Image layer as float32 ``(H, W)`` or ``(Z, H, W)``; raises ValueError
    (an :class:`~napari_vldun.inference.InferenceError`) with a user-facing message."""
    from napari.layers import Image

    if layer is None:
        raise InferenceError(f"no {what} layer: open an image (File > Open) and pick it")
    if not isinstance(layer, Image):
        raise InferenceError(f"layer '{layer.name}' is a {type(layer).__name__} layer; pick a grey-level "
                             "Image layer")
    if getattr(layer, "rgb", False):
        raise InferenceError(f"layer '{layer.name}' is an RGB(A) picture; convert it to grey levels first "
                             "(VL-DUN works on single-channel MRI/CT)")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    data = np.asarray(data)
    if data.ndim > 3:
        raise InferenceError(f"layer '{layer.name}' is {data.ndim}-D {data.shape}; VL-DUN needs a 2-D image or a "
                             "3-D stack (slices first). Split time points or channels into separate layers first")
    validate_image(data, f"layer '{layer.name}'")  # empty, dtype, size, NaN / inf
    return np.asarray(data, dtype=np.float32)


def labels_data(layer, shape: tuple[int, ...], what: str = "labels") -> np.ndarray:
    """Integer data of a Labels layer whose shape must equal ``shape``."""
    from napari.layers import Labels

    if layer is None:
        raise InferenceError(f"no {what} layer picked")
    if not isinstance(layer, Labels):
        raise InferenceError(f"layer '{layer.name}' is a {type(layer).__name__} layer; pick a Labels layer")
    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    if tuple(data.shape) != tuple(shape):
        raise InferenceError(f"labels layer '{layer.name}' has shape {data.shape} but the image has shape "
                             f"{tuple(shape)}; they must match voxel for voxel")
    if data.size and int(data.min()) < 0:
        raise InferenceError(f"labels layer '{layer.name}' has negative labels")
    return data


def layer_modality(layer) -> str | None:
    """Modality recorded by our reader (``"CT"`` / ``"MR"``) or None."""
    vol = (layer.metadata or {}).get(VOLUME_KEY) or {}
    return vol.get("modality")


def to_unit(data: np.ndarray, modality: str | None = None) -> tuple[np.ndarray, dict]:
    """:func:`napari_vldun.pipeline.to_unit_range` on an array: data already in [0, 1] is kept,
    anything else goes through :func:`napari_vldun.io.normalize` (CT window / MRI percentiles).
    The params always carry ``lo``/``hi`` so that :func:`from_unit` can map back."""
    from ..io import Volume
    from ..pipeline import to_unit_range

    arr = np.asarray(data, dtype=np.float32)
    vol = Volume(data=arr, spacing=(1.0,) * arr.ndim, modality=modality)
    unit, params = to_unit_range(vol)
    params = dict(params)
    lo, hi = unit_bounds(params)
    params["lo"], params["hi"] = lo, hi
    return np.asarray(unit, dtype=np.float32), params


def unit_bounds(params: dict) -> tuple[float, float]:
    """(lo, hi) of the linear map behind a normalisation: CT windows keep theirs in ``window``,
    a constant image has none (identity)."""
    if params.get("lo") is not None and params.get("hi") is not None:
        return float(params["lo"]), float(params["hi"])
    if params.get("window") is not None:
        lo, hi = params["window"]
        return float(lo), float(hi)
    return 0.0, 1.0


def from_unit(x: np.ndarray, params: dict) -> np.ndarray:
    """Map [0, 1] values back to the input's units (inverse of :func:`to_unit`)."""
    from ..pipeline import from_unit_range

    lo, hi = unit_bounds(params)
    return from_unit_range(np.asarray(x, dtype=np.float32), {"lo": lo, "hi": hi})


def apply_unit(x: np.ndarray, params: dict) -> np.ndarray:
    """Apply the linear part of a normalisation (``(x - lo) / (hi - lo)``, clipped to [0, 1])."""
    lo, hi = unit_bounds(params)
    if not hi > lo:
        return np.zeros(np.shape(x), np.float32)
    return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def current_index(viewer, layer, axis: int = 0) -> int:
    """Data index of ``layer`` along ``axis`` at the viewer's current position (clipped)."""
    n = int(np.shape(layer.data)[axis])
    try:
        point = np.asarray(viewer.dims.point, dtype=float)
        coords = np.asarray(layer.world_to_data(point), dtype=float)
        idx = int(round(float(coords[axis])))
    except Exception:  # noqa: BLE001 - geometry oddities: fall back to the slider step
        step = viewer.dims.current_step
        idx = int(step[len(step) - layer.ndim + axis])
    return int(min(max(idx, 0), n - 1))


# ------------------------------------------------------------------------- geometry / metadata
def geometry(layer, lead: int = 0, offset: Iterable[float] | None = None) -> dict:
    """scale / translate / rotate / shear / affine (and units, axis labels) of ``layer`` as layer
    kwargs. ``lead`` extra leading axes (e.g. a stage axis) get unit scale and no shift;
    ``offset`` (data coordinates) moves the origin, e.g. to put one slice at its place."""
    from napari.utils.transforms import Affine

    scale = np.asarray(layer.scale, float)
    translate = np.asarray(layer.translate, float)
    rotate = np.asarray(layer.rotate, float)
    shear = np.asarray(layer.shear, float)
    if offset is not None:
        phys = Affine(scale=scale, translate=translate, rotate=rotate, shear=shear, ndim=layer.ndim)
        translate = np.asarray(phys(np.asarray(list(offset), float)), float)
    out: dict[str, Any] = {}
    outer = np.asarray(layer.affine.affine_matrix, float)
    if lead:
        n = layer.ndim + lead
        linear = Affine(rotate=rotate, shear=shear, ndim=layer.ndim).affine_matrix[:-1, :-1]
        # rotate and shear are folded into the affine: A(L (s x) + t) = (A L)(s x + L^-1 t)
        t_inner = np.linalg.solve(linear, translate)
        inner = np.eye(layer.ndim + 1)
        inner[:-1, :-1] = linear
        big = np.eye(n + 1)
        big[lead:, lead:] = outer @ inner
        out["scale"] = np.concatenate([np.ones(lead), scale])
        out["translate"] = np.concatenate([np.zeros(lead), t_inner])
        out["affine"] = big
    else:
        out.update(scale=scale, translate=translate, rotate=rotate, shear=shear, affine=outer)
    for attr in ("units", "axis_labels"):
        val = getattr(layer, attr, None)
        if val is not None:
            vals = [str(v) for v in val]
            if lead:
                vals = (["pixel"] * lead + vals) if attr == "units" else ((["stage"] if lead == 1 else [f"stage {i}" for i in range(lead)]) + vals)
            out[attr] = tuple(vals)
    return out


def apply_geometry(layer, geom: dict) -> None:
    """Set geometry kwargs from :func:`geometry` on an existing layer."""
    for key in ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels"):
        if key in geom:
            try:
                setattr(layer, key, geom[key])
            except Exception:  # noqa: BLE001 - e.g. units on an older napari
                pass


def inherited_metadata(layer) -> dict:
    """The input layer's metadata without our provenance (file geometry and the like stay)."""
    meta = dict(layer.metadata or {})
    meta.pop(VLDUN_KEY, None)
    return meta


def provenance(layer) -> dict:
    return dict((layer.metadata or {}).get(VLDUN_KEY) or {})


def is_own(layer, widget: str, source: str, kind: type) -> bool:
    """True when ``layer`` was made by ``widget`` from the layer named ``source``."""
    prov = provenance(layer)
    return isinstance(layer, kind) and prov.get("widget") == widget and prov.get("source") == source


def output_slot(viewer, name: str, widget: str, source: str, kind: type):
    """(name, layer to update or None): ``name`` if free or ours, else ``name [2]``, ``[3]``..."""
    n = 1
    candidate = name
    while True:
        if candidate not in viewer.layers:
            return candidate, None
        layer = viewer.layers[candidate]
        if is_own(layer, widget, source, kind):
            return candidate, layer
        n += 1
        candidate = f"{name} [{n}]"


def put_layer(viewer, kind: str, name: str, data: np.ndarray, *, widget: str, source_layer,
              prov: dict, geom: dict | None = None, metadata: dict | None = None, **kwargs):
    """Add an output layer, or update the one this widget made before from the same source.

    ``kind`` is ``"image"`` or ``"labels"``. The provenance dict is stored under
    ``metadata["vldun"]`` with ``widget`` and ``source`` filled in. Returns the layer.
    """
    from napari.layers import Image, Labels

    cls = Image if kind == "image" else Labels
    source = source_layer.name if source_layer is not None else ""
    slot, existing = output_slot(viewer, name, widget, source, cls)
    meta = dict(metadata if metadata is not None else (inherited_metadata(source_layer) if source_layer else {}))
    meta[VLDUN_KEY] = {**prov, "widget": widget, "source": source}
    geom = dict(geom if geom is not None else (geometry(source_layer) if source_layer is not None else {}))
    if existing is not None and existing.ndim == np.ndim(data):
        existing.data = data
        apply_geometry(existing, geom)
        existing.metadata = meta
        for key, val in kwargs.items():
            if key in ("colormap", "features", "visible", "opacity", "contrast_limits", "blending"):
                setattr(existing, key, val)
        existing.refresh()
        return existing
    if existing is not None:  # ours but of another dimensionality: replace it
        viewer.layers.remove(existing)
    add = viewer.add_image if kind == "image" else viewer.add_labels
    return add(data, name=slot, metadata=meta, **geom, **kwargs)


def vldun_layers(viewer, widget: str | None = None, key: str | None = None) -> list:
    """Layers with VL-DUN provenance (made by ``widget``; holding ``key``), oldest first."""
    out = []
    for layer in viewer.layers:
        prov = provenance(layer)
        if not prov or (widget is not None and prov.get("widget") != widget):
            continue
        if key is not None and prov.get(key) is None:
            continue
        out.append(layer)
    return out


# ------------------------------------------------------------------------- labels
from ._labels import label_colormap, label_features  # noqa: E402,F401  (Qt-free, shared with _sample_data)


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
    from ..inference import SHIPPED_WEIGHTS

    return SHIPPED_WEIGHTS.with_suffix(".json").exists()


def _weights_key(weights: str | Path | None) -> tuple:
    if weights is None:
        return ("shipped",)
    from ..model.checkpoint import checkpoint_paths

    w, c = checkpoint_paths(weights)
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else -1 for p in (w, c))
    return (str(Path(weights).expanduser().resolve()), stamp)


def get_model(weights: str | Path | None, device: str):
    """:func:`napari_vldun.inference.load_model`, cached per (checkpoint file + mtime, device).
    Runs in worker threads; returns ``LoadedModel``."""
    import warnings

    from ..inference import load_model, resolve_device

    avoid_llvm_clash()
    dev = str(resolve_device(device))
    key = (_weights_key(weights), dev)
    with _MODEL_LOCK:
        loaded = _MODEL_CACHE.get(key)
        if loaded is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no shipped checkpoint": shown in the widget
                loaded = load_model(weights, dev)
            _MODEL_CACHE.clear()  # keep one model in memory
            _MODEL_CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Drop cached models (and CUDA cache)."""
    import gc

    with _MODEL_LOCK:
        _MODEL_CACHE.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def checkpoint_label_sets(weights: str | Path | None) -> tuple[dict, dict]:
    """(label sets, label colours) of a checkpoint (only its JSON is read), or of the default config."""
    from ..model.config import LABEL_COLORS, LABEL_SETS

    if weights is None and shipped_checkpoint_exists():
        from ..inference import SHIPPED_WEIGHTS

        weights = SHIPPED_WEIGHTS
    if weights is not None:
        from ..model.checkpoint import read_checkpoint_config

        cfg, _ = read_checkpoint_config(weights)
        return dict(cfg.label_sets), dict(cfg.label_colors)
    return ({k: list(v) for k, v in LABEL_SETS.items()}, {k: list(v) for k, v in LABEL_COLORS.items()})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


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

    def show_random(self, random_weights: bool) -> None:
        self.warning.setVisible(bool(random_weights))
