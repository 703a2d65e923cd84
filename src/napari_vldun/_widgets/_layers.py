"""Layers in and out of the VL-DUN docks: layer pickers, input checks and normalisation, output layers
with provenance and geometry.

Provenance convention: every layer a VL-DUN widget creates carries
``layer.metadata["vldun"]`` = ``{"widget": <tag>, "source": <input layer name>, ...}``. A widget
only ever updates a layer whose provenance has its own tag and the same source; any other layer of
the wanted name is left alone and the output goes to ``<name> [2]`` (``[3]`` ...) instead.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np
from qtpy.QtWidgets import QComboBox

from .._reader import MEASUREMENT_KEY, VOLUME_KEY
from .._writer import layer_volume
from ..degradation.measurement import Measurement, MeasurementError
from ..inference import InferenceError, validate_image
from ..io import Volume
from ..io.dicom_seg import PRODUCT, SegExport, SegSource
from ..io.normalize import from_unit_range, to_unit_range, unit_bounds

#: ``layer.metadata`` key of VL-DUN provenance.
VLDUN_KEY = "vldun"


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
def image_data(layer, what: str = "input", slices: list[int] | None = None) -> np.ndarray:
    """The data of an Image layer as float32 ``(H, W)`` or ``(Z, H, W)``; raises ValueError
    (an :class:`~napari_vldun.inference.InferenceError`) with a user-facing message. ``slices``: of a stack,
    only these are checked (a partial result is NaN elsewhere)."""
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
    checked = data[slices] if slices is not None and data.ndim == 3 else data
    validate_image(checked, f"layer '{layer.name}'")  # empty, dtype, size, NaN / inf
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
    arr = np.asarray(data, dtype=np.float32)
    vol = Volume(data=arr, spacing=(1.0,) * arr.ndim, modality=modality)
    unit, params = to_unit_range(vol)
    params = dict(params)
    params["lo"], params["hi"] = unit_bounds(params)
    return np.asarray(unit, dtype=np.float32), params


def unit_stack(layer, data: np.ndarray) -> tuple[np.ndarray, dict]:
    """``data`` of ``layer`` (from :func:`image_data`) as a ``(Z, H, W)`` stack in [0, 1] (a 2-D image is
    one slice) and its normalisation params: :func:`to_unit` with the layer's modality."""
    stack = data[None] if data.ndim == 2 else data
    return to_unit(stack, layer_modality(layer))


def from_unit(x: np.ndarray, params: dict) -> np.ndarray:
    """Map [0, 1] values back to the input's units (inverse of :func:`to_unit`)."""
    return from_unit_range(np.asarray(x, dtype=np.float32), params)


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


def layer_spacing(layer) -> tuple[float, ...]:
    """Voxel size of ``layer`` per data axis: its scale (the reader sets it to the file's spacing in mm)."""
    return tuple(abs(float(v)) for v in layer.scale)


#: reader formats whose files record a voxel spacing in mm
SPACED_FORMATS = ("nifti", "nrrd", "dicom")


def known_spacing(layer) -> tuple[float, ...] | None:
    """:func:`layer_spacing` when it is a real voxel size: set by hand (a scale other than 1), read from a
    file that records one (:data:`SPACED_FORMATS`) or a bundled sample whose source has one
    (``metadata["vldun_sample"]["spacing_mm"]``); else ``None`` (pictures, arrays, HDF5 and the ACDC / CT
    samples, whose sources store none), so that no volume in mL is made up from 1 mm voxels."""
    spacing = layer_spacing(layer)
    if any(abs(v - 1.0) > 1e-6 for v in spacing):
        return spacing
    meta = layer.metadata or {}
    if "vldun_sample" in meta:
        return spacing if meta["vldun_sample"].get("spacing_mm") else None
    fmt = (((meta.get(VOLUME_KEY) or {}).get("meta")) or {}).get("format")
    return spacing if fmt in SPACED_FORMATS else None


def layer_like(layer):
    """The :class:`~napari_vldun.io.Volume` to write arrays of ``layer``'s shape with its geometry
    (``write_nifti(like=)``): the file's own affine and header when the reader's geometry is unchanged,
    else the layer transform (:func:`napari_vldun._writer.layer_volume`)."""
    state = {"scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
             "affine": layer.affine.affine_matrix, "metadata": layer.metadata}
    return layer_volume(np.asarray(layer.data), state)


def layer_seg_export(layer, label_names: Iterable[str], slices: Iterable[int] | None, weights: Any = None):
    """The :class:`~napari_vldun.io.dicom_seg.SegExport` for labels drawn on ``layer`` when it was read from a
    DICOM series and still has that series' shape (:meth:`~napari_vldun.io.dicom_seg.SegSource.from_meta`):
    the labels of ``slices`` (the computed ones) named ``label_names``, made with checkpoint ``weights``.
    None for any other layer (no DICOM SEG)."""
    from pathlib import Path

    info = (layer.metadata or {}).get(VOLUME_KEY) or {}
    shape = tuple(np.shape(layer.data))
    source = SegSource.from_meta(info.get("meta"), shape) if tuple(info.get("shape") or ()) == shape else None
    if source is None:
        return None
    return SegExport(source=source, classes=tuple(str(n) for n in label_names),
                     slices=None if slices is None else tuple(int(z) for z in slices),
                     series_description=f"{layer.name} labels ({PRODUCT})",
                     checkpoint=Path(str(weights)).name if weights else "")


def inherited_metadata(layer) -> dict:
    """The input layer's metadata without our provenance and acquisition (file geometry and the like stay)."""
    meta = dict(layer.metadata or {})
    meta.pop(VLDUN_KEY, None)
    meta.pop(MEASUREMENT_KEY, None)
    return meta


def layer_measurement(layer, data: np.ndarray, tol: float = 1e-3) -> dict | None:
    """The acquisition recorded with ``layer`` (:data:`MEASUREMENT_KEY`), if it still describes ``data``
    (the layer's array): ``{"unit": (Z, H, W) zero-filled magnitude in [0, 1] units, "params",
    "measurement": Measurement}``. None when there is none, or the layer was cropped or edited since (shape or
    values no longer match, relative RMS > ``tol``)."""
    meas = (layer.metadata or {}).get(MEASUREMENT_KEY)
    if not isinstance(meas, dict) or "kspace" not in meas or "mask" not in meas:
        return None
    k = np.asarray(meas["kspace"])
    stack = np.asarray(data, np.float32)
    stack = stack[None] if stack.ndim == 2 else stack
    if k.shape != stack.shape or np.asarray(meas["mask"]).shape[-2:] != stack.shape[-2:]:
        return None
    params = dict(meas.get("normalisation") or {"method": "none", "lo": 0.0, "hi": 1.0})
    # the layer holds the measurement's zero-filled magnitude in its own units: compare in [0, 1] units
    lo, hi = unit_bounds(params)
    try:
        m = Measurement.of(k, np.asarray(meas["mask"], np.float32), stack.shape)
    except MeasurementError:
        return None
    if not hi > lo or m.mismatch((stack - lo) / (hi - lo)) > tol:
        return None
    return {"unit": m.zero_filled(), "params": params, "measurement": m}


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


def now() -> str:
    """Local time stamp recorded in the provenance of output layers."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")
