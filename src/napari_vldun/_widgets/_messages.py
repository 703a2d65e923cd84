"""User-facing messages of the VL-DUN docks: napari notifications, one-line error texts, status
labels, and the results hub (a process-wide signal a dock emits when it publishes new output layers).
"""

from __future__ import annotations

from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel

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
