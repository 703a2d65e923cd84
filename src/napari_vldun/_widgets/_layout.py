"""Dock layout: tall forms scroll inside their dock, so that docks stacked in one napari column are never cut
off and the parts that must stay in view (buttons, plots, status lines) can be kept outside the scroll."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget


def scrolling(inner: QWidget) -> QScrollArea:
    """``inner`` in a frameless, vertically scrolling area that resizes it to its width."""
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    return scroll


def scrolled_layout(dock: QWidget) -> tuple[QVBoxLayout, QVBoxLayout, QScrollArea]:
    """Give ``dock`` a scroll area on top and a fixed panel below it. Returns the layout inside the scroll
    (the tall form), the layout of the panel below (what must stay in view: buttons, progress, status,
    plots; left empty, it takes no room) and the scroll area."""
    inner = QWidget()
    lay = QVBoxLayout(inner)
    scroll = scrolling(inner)
    panel = QWidget()
    below = QVBoxLayout(panel)
    below.setContentsMargins(9, 0, 9, 9)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll, 1)
    outer.addWidget(panel)
    return lay, below, scroll
