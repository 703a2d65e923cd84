"""Matplotlib canvases embedded in the docks (FigureCanvasQTAgg): prior bar charts, training
curves, a stage-map view. They only draw what they are given."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

_DARK = {"bg": "#262930", "fg": "#f0f1f2", "grid": "#5a626c", "accent": "#6ea8fe"}
_LIGHT = {"bg": "#efebe9", "fg": "#3b3a39", "grid": "#b0b0b0", "accent": "#1f77b4"}


def theme_colours(viewer=None) -> dict:
    """Colours matching the viewer's napari theme (dark by default)."""
    try:
        from napari.utils.theme import get_theme

        name = getattr(viewer, "theme", None) or "dark"
        theme = get_theme(name)
        bg = theme.background.as_hex() if hasattr(theme.background, "as_hex") else str(theme.background)
        fg = theme.text.as_hex() if hasattr(theme.text, "as_hex") else str(theme.text)
        base = _LIGHT if theme.id == "light" else _DARK
        return {**base, "bg": bg, "fg": fg}
    except Exception:  # noqa: BLE001 - any theme problem: dark
        return dict(_DARK)


class MplCanvas(QWidget):
    """A matplotlib figure in a QWidget, styled for the napari theme."""

    def __init__(self, nrows: int = 1, ncols: int = 1, height: float = 2.6, viewer=None, parent=None,
                 **subplot_kw) -> None:
        super().__init__(parent)
        self.colours = theme_colours(viewer)
        self.figure = Figure(figsize=(4.0, height), dpi=90, facecolor=self.colours["bg"], layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(int(height * 70))
        axes = self.figure.subplots(nrows, ncols, squeeze=False, **subplot_kw)
        self.axes = [ax for row in axes for ax in row]
        for ax in self.axes:
            self.style(ax)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def style(self, ax) -> None:
        c = self.colours
        ax.set_facecolor(c["bg"])
        for spine in ax.spines.values():
            spine.set_color(c["grid"])
        ax.tick_params(colors=c["fg"], labelsize=7)
        ax.xaxis.label.set_color(c["fg"])
        ax.yaxis.label.set_color(c["fg"])
        ax.title.set_color(c["fg"])

    def draw(self) -> None:
        self.canvas.draw_idle()


class BarChart(MplCanvas):
    """Horizontal bar charts of class probabilities (one axes per chart)."""

    def __init__(self, titles: Sequence[str], viewer=None, parent=None) -> None:
        super().__init__(len(titles), 1, height=1.4 * len(titles) + 0.6, viewer=viewer, parent=parent)
        self.titles = list(titles)
        self.bars: list = [None] * len(titles)
        self.clear()

    def clear(self, message: str = "no results yet") -> None:
        for i, ax in enumerate(self.axes):
            ax.clear()
            self.style(ax)
            ax.set_title(self.titles[i], fontsize=8)
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
                    color=self.colours["fg"], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            self.bars[i] = None
        self.draw()

    def set_bars(self, i: int, names: Sequence[str], values: Sequence[float], title: str | None = None) -> None:
        ax = self.axes[i]
        ax.clear()
        self.style(ax)
        vals = np.asarray(values, dtype=float)
        y = np.arange(len(names))
        best = int(np.argmax(vals)) if vals.size else -1
        colours = [self.colours["accent"] if j == best else self.colours["grid"] for j in range(len(names))]
        self.bars[i] = ax.barh(y, vals, color=colours)
        ax.set_yticks(y, [str(n).replace("_", " ") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(title or self.titles[i], fontsize=8)
        for j, v in enumerate(vals):
            ax.text(min(v + 0.01, 0.86), j, f"{v:.2f}", va="center", fontsize=6, color=self.colours["fg"])
        self.draw()

    def heights(self, i: int) -> list[float]:
        """Bar lengths of chart ``i`` (the probabilities drawn)."""
        bars = self.bars[i]
        return [] if bars is None else [float(r.get_width()) for r in bars]


class TrainPlot(MplCanvas):
    """Training loss (top) and validation PSNR / Dice (bottom, two y axes) against the step."""

    def __init__(self, viewer=None, parent=None) -> None:
        super().__init__(2, 1, height=3.4, viewer=viewer, parent=parent)
        c = self.colours
        top, bottom = self.axes
        self.ax_dice = bottom.twinx()
        self.style(self.ax_dice)
        (self.loss_line,) = top.plot([], [], color=c["accent"], lw=1.2, label="train loss")
        (self.psnr_line,) = bottom.plot([], [], "o-", color="#ffb347", lw=1.2, ms=3, label="val PSNR (dB)")
        (self.dice_line,) = self.ax_dice.plot([], [], "s-", color="#7bd389", lw=1.2, ms=3, label="val Dice")
        top.set_ylabel("loss", fontsize=7)
        bottom.set_ylabel("PSNR dB", fontsize=7)
        self.ax_dice.set_ylabel("Dice", fontsize=7)
        bottom.set_xlabel("step", fontsize=7)
        for ax in (top, bottom):
            ax.grid(True, color=c["grid"], lw=0.4, alpha=0.5)
        top.legend(fontsize=6, loc="upper right", facecolor=c["bg"], labelcolor=c["fg"])
        lines = [self.psnr_line, self.dice_line]
        bottom.legend(lines, [ln.get_label() for ln in lines], fontsize=6, loc="lower right",
                      facecolor=c["bg"], labelcolor=c["fg"])
        self.lines = {"loss": self.loss_line, "val_psnr": self.psnr_line, "val_dice": self.dice_line}
        self.draw()

    def reset(self) -> None:
        for line in self.lines.values():
            line.set_data([], [])
        self._rescale()

    def add_point(self, key: str, x: float, y: float) -> None:
        line = self.lines[key]
        xs, ys = list(line.get_xdata()), list(line.get_ydata())
        xs.append(float(x))
        ys.append(float(y))
        line.set_data(xs, ys)
        self._rescale()

    def points(self, key: str) -> int:
        return len(self.lines[key].get_xdata())

    def _rescale(self) -> None:
        for ax in (*self.axes, self.ax_dice):
            ax.relim()
            ax.autoscale_view()
        self.draw()


class ImageView(MplCanvas):
    """One grey-level image (a stage map) with a title."""

    def __init__(self, viewer=None, parent=None) -> None:
        super().__init__(1, 1, height=3.0, viewer=viewer, parent=parent)
        self.image = None
        self.show(None)

    def show(self, array: np.ndarray | None, title: str = "", vrange: tuple[float, float] | None = None) -> None:
        ax = self.axes[0]
        ax.clear()
        self.style(ax)
        ax.set_xticks([])
        ax.set_yticks([])
        if array is None:
            ax.text(0.5, 0.5, "compute the stages of the current slice", ha="center", va="center",
                    transform=ax.transAxes, color=self.colours["fg"], fontsize=8)
            self.image = None
        else:
            lo, hi = vrange if vrange is not None else (float(np.min(array)), float(np.max(array)))
            self.image = ax.imshow(array, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
            ax.set_title(title, fontsize=8)
        self.draw()
