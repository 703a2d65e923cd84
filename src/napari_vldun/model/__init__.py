"""VL-DUN model: configs, priors, unfolding stages, Bi-Mamba scan. Imports no Qt.

The names below load on first use (PEP 562), so that ``napari_vldun.model.config`` (label sets, modality
names: what the data layer needs) imports without building the network's modules."""

from __future__ import annotations

import importlib

_HOMES = {
    "CONFIGS": "config", "DEGRADATIONS": "config", "PAPER_MODALITIES": "config", "ClipConfig": "config",
    "VLDUNConfig": "config", "get_config": "config",
    "VLDUN": "vldun", "StageMaps": "vldun", "VLDUNOutput": "vldun", "build_model": "vldun",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
