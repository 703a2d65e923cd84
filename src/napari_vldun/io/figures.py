"""Overview figures (matplotlib, no GUI backend): input, restored, error map, labels overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path


def label_cmap(colors: list[str]):
    """A ListedColormap with background transparent, one colour per class."""
    from matplotlib.colors import ListedColormap, to_rgba

    rgba = [to_rgba(c) for c in colors]
    rgba[0] = (0, 0, 0, 0)
    return ListedColormap(rgba)


def overview_figure(path: str | Path, degraded: np.ndarray, restored: np.ndarray | None,
                    labels: np.ndarray | None, colors: list[str] | None = None,
                    clean: np.ndarray | None = None, true_labels: np.ndarray | None = None,
                    title: str = "", *, overwrite: bool = False) -> Path:
    """Save one row per case: input | restored | |error| (needs ``clean``) | labels over restored
    (| reference labels). 2-D arrays (H, W) in [0, 1]; ``labels`` integer (H, W). Written as PNG
    through :func:`napari_vldun.io.atomic_path` (an existing file is refused unless ``overwrite``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels: list[tuple[str, np.ndarray, dict]] = [("input (degraded)", degraded, {"cmap": "gray", "vmin": 0, "vmax": 1})]
    if clean is not None:
        panels.insert(0, ("clean reference", clean, {"cmap": "gray", "vmin": 0, "vmax": 1}))
    if restored is not None:
        panels.append(("restored", restored, {"cmap": "gray", "vmin": 0, "vmax": 1}))
        if clean is not None:
            panels.append(("|restored - clean|", np.abs(restored - clean), {"cmap": "magma", "vmin": 0, "vmax": 0.2}))
    base = restored if restored is not None else degraded
    cmap = label_cmap(colors) if colors else "tab10"
    n_cls = len(colors) if colors else 10
    fig, axes = plt.subplots(1, len(panels) + (labels is not None) + (true_labels is not None),
                             figsize=(3 * (len(panels) + 2), 3.3), squeeze=False)
    axes = list(axes[0])
    for ax, (name, img, kw) in zip(axes, panels):
        ax.imshow(img, **kw)
        ax.set_title(name, fontsize=9)
    k = len(panels)
    for name, lab in (("predicted labels", labels), ("reference labels", true_labels)):
        if lab is None:
            continue
        axes[k].imshow(base, cmap="gray", vmin=0, vmax=1)
        axes[k].imshow(np.asarray(lab), cmap=cmap, vmin=0, vmax=n_cls - 1, alpha=0.55, interpolation="nearest")
        axes[k].set_title(name, fontsize=9)
        k += 1
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, overwrite) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
