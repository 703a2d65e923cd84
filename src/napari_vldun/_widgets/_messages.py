"""User-facing messages of the VL-DUN docks: napari notifications, one-line error texts, status
labels, the small form builders the docks share (group boxes of form rows, spin boxes), and the
results hub (a process-wide signal a dock emits when it publishes new output layers).
"""

from __future__ import annotations

from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QSpinBox

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


def status_label(text: str = "") -> QLabel:
    """A word-wrapping label for status lines and results."""
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def report_error(dock, message: str, label: QLabel | None = None) -> None:
    """Keep ``message`` as ``dock.last_message``, show it in red in ``label`` (default: the dock's
    ``status`` label) and as a napari error notification."""
    dock.last_message = message
    set_status(dock.status if label is None else label, message, "error")
    show_error(message)


# ------------------------------------------------------------------------- form builders
def form_group(title: str, rows: list) -> QGroupBox:
    """A group box holding a form; a row is ``(label, widget or layout)`` or a lone widget spanning
    both columns."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for row in rows:
        if isinstance(row, tuple):
            form.addRow(*row)
        else:
            form.addRow(row)
    return box


def spin_box(low, high, value=None, *, step=None, decimals: int | None = None, tip: str | None = None):
    """A QDoubleSpinBox when ``low`` is a float, else a QSpinBox, with range ``[low, high]`` and
    optionally a value, single step, decimals (set before the range, which they round) and tool tip."""
    box = QDoubleSpinBox() if isinstance(low, float) else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(low, high)
    if step is not None:
        box.setSingleStep(step)
    if value is not None:
        box.setValue(value)
    if tip is not None:
        box.setToolTip(tip)
    return box


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


def fill_table(table, columns, rows) -> None:
    """Put ``rows`` (lists of strings under ``columns``) into a ``QTableWidget`` (read-only cells)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTableWidgetItem

    table.clear()
    table.setColumnCount(len(columns))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels([str(c) for c in columns])
    for i, row in enumerate(rows):
        for j, text in enumerate(row):
            item = QTableWidgetItem(str(text))
            item.setFlags(item.flags() & ~Qt.ItemIsEditable)
            table.setItem(i, j, item)
    table.resizeColumnsToContents()


def read_table(table) -> list[list[str]]:
    """The cell texts of a ``QTableWidget``, row by row (for tests and copying)."""
    return [[table.item(i, j).text() if table.item(i, j) else "" for j in range(table.columnCount())]
            for i in range(table.rowCount())]
