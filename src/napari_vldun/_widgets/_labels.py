"""Label colour maps and feature tables for Labels layers (no Qt: the sample data uses them too)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["label_colormap", "label_features"]


def label_colormap(colors: list[str] | None):
    """A napari DirectLabelColormap: background transparent, class ``i`` -> ``colors[i]``."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping: dict[Any, Any] = {None: "transparent", 0: "transparent"}
    for i, c in enumerate(colors or []):
        if i:
            mapping[i] = c
    return DirectLabelColormap(color_dict=mapping)


def label_features(names: list[str], colors: list[str] | None = None):
    """Features table (one row per class, ``index`` = label value) for a Labels layer."""
    import pandas as pd

    colors = list(colors or ["#000000"] * len(names))
    colors += ["#000000"] * (len(names) - len(colors))
    return pd.DataFrame({"index": np.arange(len(names)), "name": list(names), "color": colors[: len(names)]})
