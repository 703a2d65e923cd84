"""Matplotlib canvases embedded in the docks (FigureCanvasQTAgg): prior bar charts, training
curves, a stage-map view, a PSNR-per-stage plot; and a grid of clickable grey-level thumbnails (plain Qt).
They only draw what they are given."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

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

    def __init__(self, viewer=None, parent=None, height: float = 3.0) -> None:
        super().__init__(1, 1, height=height, viewer=viewer, parent=parent)
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


class StagePsnrPlot(MplCanvas):
    """PSNR (dB) of every stage estimate against the stage index, pass boundaries as dotted vertical lines and
    the input's PSNR as a dashed horizontal line."""

    def __init__(self, viewer=None, parent=None) -> None:
        super().__init__(1, 1, height=1.7, viewer=viewer, parent=parent)
        self.line = self.input_line = None
        self.boundaries: list = []
        self.clear()

    def clear(self, message: str = "") -> None:
        ax = self.axes[0]
        ax.clear()
        self.style(ax)
        self.line = self.input_line = None
        self.boundaries = []
        ax.set_xticks([])
        ax.set_yticks([])
        if message:
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
                    color=self.colours["fg"], fontsize=8)
        self.draw()

    def show(self, psnrs: Sequence[float], starts: Sequence[int] = (), input_psnr: float | None = None,
             input_label: str = "input", selected: int | None = None) -> None:
        """``psnrs``: one value per stage (x = 1..S); ``starts``: indices of the stages that begin a pass."""
        ax = self.axes[0]
        ax.clear()
        self.style(ax)
        c = self.colours
        x = np.arange(1, len(psnrs) + 1)
        (self.line,) = ax.plot(x, psnrs, "o-", color=c["accent"], lw=1.2, ms=3, label="stage estimate")
        if selected is not None and 0 <= selected < len(psnrs):
            ax.plot([x[selected]], [psnrs[selected]], "o", ms=7, mfc="none", mec="#ffb347", mew=1.5)
        self.input_line = None
        if input_psnr is not None:
            self.input_line = ax.axhline(input_psnr, color=c["fg"], ls="--", lw=0.9, label=input_label)
        self.boundaries = [ax.axvline(s + 0.5, color=c["grid"], ls=":", lw=1.0) for s in starts]
        ax.set_xticks(x if len(x) <= 12 else x[::max(1, len(x) // 12)])
        ax.set_xlabel("stage (all passes)" if starts else "stage", fontsize=7)
        ax.set_ylabel("PSNR dB", fontsize=7)
        ax.grid(True, color=c["grid"], lw=0.4, alpha=0.5)
        ax.legend(fontsize=6, loc="lower right", facecolor=c["bg"], labelcolor=c["fg"])
        self.draw()

    def values(self) -> list[float]:
        """The PSNRs drawn (one point per stage)."""
        return [] if self.line is None else [float(v) for v in self.line.get_ydata()]

    def input_value(self) -> float | None:
        return None if self.input_line is None else float(self.input_line.get_ydata()[0])

    def boundary_positions(self) -> list[float]:
        return [float(b.get_xdata()[0]) for b in self.boundaries]


def grey_pixmap(array: np.ndarray, vrange: tuple[float, float], size: int) -> QPixmap:
    """``array`` (H, W) as a grey pixmap, ``vrange`` mapped to black..white, fitted into ``size`` px."""
    lo, hi = vrange
    a = np.nan_to_num(np.asarray(array, np.float32), nan=lo)
    a = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    u8 = np.ascontiguousarray((a * 255.0 + 0.5).astype(np.uint8))
    h, w = u8.shape
    image = QImage(u8.data, w, h, w, QImage.Format_Grayscale8).copy()  # copy: own the pixels
    return QPixmap.fromImage(image).scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation)


class Thumbnail(QLabel):
    """A clickable image tile of a :class:`ThumbnailGrid`."""

    clicked = Signal(int, int)

    def __init__(self, column: int, row: int, parent=None) -> None:
        super().__init__(parent)
        self.column, self.row = column, row
        self.setAlignment(Qt.AlignCenter)
        self.setCursor(Qt.PointingHandCursor)
        self.select(False)

    def select(self, on: bool) -> None:
        self.setStyleSheet("border: 2px solid #ffb347;" if on else "border: 2px solid transparent;")

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt name
        if event.button() == Qt.LeftButton:
            self.clicked.emit(self.column, self.row)
        super().mousePressEvent(event)


_BLANK = "\u00a0"  # a caption line with no text


class ThumbnailGrid(QScrollArea):
    """Small grey-level images in a scroll area: ``blocks`` of columns one under the other (a header line
    each), ``rows`` within a block (a name at the left), a title above every column and an optional caption
    under every tile of row 0. Clicking a tile emits ``clicked(column, row)``."""

    clicked = Signal(int, int)

    def __init__(self, size: int = 46, parent=None) -> None:
        super().__init__(parent)
        self.size = size
        self.setWidgetResizable(True)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)
        self._blocks = 0
        self.tiles: dict[tuple[int, int], Thumbnail] = {}
        self.captions: dict[int, QLabel] = {}
        self.headers: list[QLabel] = []
        self._selected: tuple[int, int] | None = None
        self.clear("compute the stages of the current slice")

    def clear(self, message: str = "") -> None:
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.addWidget(QLabel(message))
        lay.addStretch(1)
        self.setWidget(inner)
        self.tiles, self.captions, self.headers, self._selected = {}, {}, [], None

    def set_maps(self, maps: np.ndarray, ranges: Sequence[tuple[float, float]], blocks: Sequence[tuple[str, list[int]]],
                 column_titles: Sequence[str], row_names: Sequence[str]) -> None:
        """``maps`` (N, R, H, W): column ``i``, row ``r``; ``ranges``: the grey range of each row;
        ``blocks``: ``(header, [columns])`` (an empty header: no header line)."""
        inner = QWidget()
        grid = QGridLayout(inner)
        grid.setContentsMargins(2, 2, 2, 2)
        grid.setHorizontalSpacing(2)
        grid.setVerticalSpacing(1)
        self.tiles, self.captions, self.headers = {}, {}, []
        small = "font-size: 8pt;"
        line = 0
        for header, columns in blocks:
            if header:
                head = QLabel(header)
                head.setStyleSheet("font-weight: bold;")
                grid.addWidget(head, line, 0, 1, len(columns) + 1)
                self.headers.append(head)
                line += 1
            for j, i in enumerate(columns):
                title = QLabel(column_titles[i])
                title.setStyleSheet(small)
                title.setAlignment(Qt.AlignCenter)
                title.setWordWrap(True)
                title.setMaximumWidth(self.size + 4)
                grid.addWidget(title, line, j + 1)
            line += 1
            for r, name in enumerate(row_names):
                label = QLabel(name)
                label.setStyleSheet(small)
                label.setMinimumWidth(label.fontMetrics().horizontalAdvance("high") + 4)
                grid.addWidget(label, line, 0)
                for j, i in enumerate(columns):
                    tile = Thumbnail(i, r)
                    tile.setPixmap(grey_pixmap(maps[i, r], ranges[r], self.size))
                    tile.setToolTip(f"{column_titles[i]}, {name}: click to select")
                    tile.clicked.connect(self._on_click)
                    grid.addWidget(tile, line, j + 1)
                    self.tiles[(i, r)] = tile
                line += 1
                if r == 0:
                    for j, i in enumerate(columns):
                        cap = QLabel(_BLANK)  # the line is kept: choosing a reference moves nothing
                        cap.setStyleSheet(small)
                        cap.setAlignment(Qt.AlignCenter)
                        grid.addWidget(cap, line, j + 1)
                        self.captions[i] = cap
                    line += 1
        grid.setRowStretch(line, 1)
        grid.setColumnStretch(max((len(c) for _, c in blocks), default=0) + 1, 1)
        self.setWidget(inner)
        self._selected = None
        self._blocks = len(blocks)
        self.updateGeometry()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """One whole block in view (more blocks: scroll), as wide as a block when that fits a dock."""
        base = super().minimumSizeHint()
        if not self.tiles:
            return QSize(base.width(), 3 * self.size + 60)
        self.widget().ensurePolished()  # the tiles' style sheets (borders, small font) set their size
        hint, frame = self.widget().sizeHint(), 2 * self.frameWidth() + 2
        bar = self.verticalScrollBar().sizeHint().width()
        n = max(self._blocks, 1)
        return QSize(min(hint.width() + frame + bar, 420), hint.height() // n + frame + (bar if n > 1 else 0))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """Every block when they fit in two blocks' height, else two blocks (scroll for the rest)."""
        low = self.minimumSizeHint()
        if not self.tiles:
            return low
        full = self.widget().sizeHint().height() + 2 * self.frameWidth() + 2
        return QSize(low.width(), min(full, 2 * low.height()))

    def set_captions(self, texts: Sequence[str] | None) -> None:
        """Captions under the row-0 tiles (one per column); None blanks them."""
        for i, cap in self.captions.items():
            cap.setText((None if texts is None else texts[i]) or _BLANK)

    def caption_texts(self) -> list[str]:
        """The captions shown ("" where blank), by column."""
        return [self.captions[i].text().replace(_BLANK, "") for i in sorted(self.captions)]

    def select(self, column: int, row: int) -> None:
        """Highlight tile (column, row) and make it visible."""
        if self._selected in self.tiles:
            self.tiles[self._selected].select(False)
        self._selected = (column, row)
        tile = self.tiles.get(self._selected)
        if tile is not None:
            tile.select(True)
            self.ensureWidgetVisible(tile, 4, 4)

    def selected(self) -> tuple[int, int] | None:
        return self._selected

    def _on_click(self, column: int, row: int) -> None:
        self.clicked.emit(column, row)
