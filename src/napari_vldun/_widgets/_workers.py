"""Generators run in napari ``thread_worker`` threads by the docks, and :class:`JobDock`, the base
of the docks that run them.

The generators hold no Qt state: each one yields progress objects (``Status``, inference ``Progress``,
training ``TrainEvent``) and *returns* its result, or a :class:`Failure` for problems the user
can fix (bad input, bad checkpoint, no CUDA, out of memory), so that the dock shows one clear
message and never receives a half-finished result. Stopping a worker between two yields
(``worker.quit()``) drops everything computed so far.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from ..degradation.measurement import Measurement
from ..inference import (InferenceError, Prediction, Progress, check_label_set, iter_predict, label_set_warning,
                         passes)
from ..io import ImageReadError
from ..model.checkpoint import CheckpointError
from ..train import iter_train
from ..train.loop import EventKind
from ._messages import USER_ERRORS, error_text, report_error
from ._models import avoid_llvm_clash, free_memory, get_model



class Outcome(str, Enum):
    """How a dock's job ended (``JobDock.job_finished``). A ``str`` enum: ``Outcome.DONE == "done"``."""

    DONE = "done"
    STOPPED = "stopped"  # training stopped on request; "last" saved
    CANCELLED = "cancelled"
    QUESTION = "question"  # nothing ran: the label set may not fit, the user chooses
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

@dataclass
class Status:
    """A line of text for the dock's status label; ``device``: set once the model is on it and the
    slices start."""

    text: str
    device: str | None = None


@dataclass
class Failure:
    """A user-facing error message (the job stopped, nothing was produced)."""

    message: str


@dataclass
class PredictResult:
    prediction: Prediction
    slices: list[int]
    source: str
    device: str
    random_weights: bool
    label_sets: dict
    label_colors: dict
    modalities: list[str]
    degradations: list[str]
    seconds: float
    #: passes of the network that ran (1 without k-space).
    cascades: int = 1
    #: :func:`~napari_vldun.inference.label_set_warning`: the label set may not fit the anatomy.
    label_set_warning: str | None = None


class JobCancelled(Exception):
    """Raised between stages (or tiles) of a slice when the dock asked to cancel."""


def interrupt_on(cancel: threading.Event | None):
    """The ``interrupt`` callable of :func:`~napari_vldun.inference.iter_predict` for a cancel event
    (``None``: nothing to check)."""
    if cancel is None:
        return None

    def check() -> None:
        if cancel.is_set():
            raise JobCancelled

    return check


def _expected_errors() -> tuple[type[BaseException], ...]:
    return (InferenceError, ImageReadError, CheckpointError, *USER_ERRORS)


def predict_job(weights: str | Path | None, device: str, image: np.ndarray, *, label_set: str | None = None,
                slices: list[int] | None = None, return_stages: bool = False,
                measurement: Measurement | None = None, cascades: int | None = None,
                precision: str = "fp32", return_uncertainty: bool = False,
                cancel: threading.Event | None = None, ask_label_set: bool = False,
                compile: bool = False, tta: bool = False) -> Iterator[Status | Progress]:
    """Load (or reuse) the model, then :func:`napari_vldun.inference.iter_predict` slice by slice.

    ``image`` is ``(Z, H, W)`` in [0, 1]; ``measurement``: its known acquisition (data consistency), over
    ``cascades`` passes (``None``: the checkpoint's); ``precision`` "fp32" | "bf16"; ``return_uncertainty``:
    the per-pixel normalised entropy too (``Prediction.uncertainty``); ``cancel``: once set, the job stops
    at the next stage (or tile) of the slice in progress, not only between slices; ``ask_label_set`` (with
    ``label_set=None``): first check the automatic label set against the modality prior and return a
    :class:`LabelSetQuestion` instead of running when it may not fit; ``compile``: a ``torch.compile``d copy
    of the model (:func:`napari_vldun.inference.compile_loaded`, eager where it cannot compile); ``tta``:
    segment with test-time flips (4x slower; the checkpoint's postprocessing rule applies either way). Yields
    ``Status`` (the last one, as the slices start, with the device) then one ``Progress`` per slice; returns a
    :class:`PredictResult` or a :class:`Failure`.
    """
    t0 = time.perf_counter()
    try:
        yield Status("loading the model ...")
        loaded = get_model(weights, device, compile)
        idx = list(range(image.shape[0])) if slices is None else [int(z) for z in slices]
        if ask_label_set and label_set is None:
            yield Status("checking the label set against the modality prior ...")
            check = check_label_set(loaded, image, idx)
            if check.warning:
                return LabelSetQuestion(check.warning, check.label_set, check.modality)
        yield Status(f"restoring and segmenting {len(idx)} slice(s) on {loaded.device} ...", str(loaded.device))
        pred = None
        for item in iter_predict(loaded, image, label_set=label_set, slices=idx, return_stages=return_stages,
                                 measurement=measurement, cascades=cascades, precision=precision,
                                 return_uncertainty=return_uncertainty, interrupt=interrupt_on(cancel),
                                 tta=tta):
            if isinstance(item, Prediction):
                pred = item
            else:
                yield item
    except JobCancelled:
        yield Status("cancelled")  # the worker, asked to quit, stops at this yield
        return Failure("cancelled")
    except _expected_errors() as exc:
        return Failure(error_text(exc))
    if pred is None:
        return Failure("the model produced no result")
    cfg = loaded.model.cfg
    return PredictResult(
        prediction=pred, slices=idx, source=str(loaded.source), device=str(loaded.device),
        random_weights=bool(loaded.random_weights),
        label_sets={k: list(v) for k, v in loaded.label_sets.items()},
        label_colors={k: list(v) for k, v in loaded.label_colors.items()},
        modalities=list(cfg.modalities), degradations=list(cfg.degradations),
        seconds=time.perf_counter() - t0,
        cascades=passes(loaded, measurement is not None, cascades, None if measurement is None else measurement.mask),
        label_set_warning=label_set_warning(loaded.model, pred.modality_probs, pred.label_set, label_set is not None),
    )


@dataclass
class LabelSetQuestion:
    """:func:`predict_job` stopped before the slices: the label set it would use may not fit the anatomy
    (``warning``, from :func:`~napari_vldun.inference.check_label_set`); the user should choose."""

    warning: str
    label_set: str | None
    modality: str | None


@dataclass
class SavedResults:
    """Files a :func:`save_job` wrote: ``{part: path}``."""

    paths: dict


def save_job(steps: Iterator, first: tuple[int, int, Any]) -> Iterator[Progress]:
    """Run a started :func:`napari_vldun.measure.iter_save_results` (``first``: what it yielded first) to
    the end in a worker: yields ``Progress`` (files written, of all) and returns :class:`SavedResults` or
    a :class:`Failure`. Stopping the worker (cancel) between two files closes ``steps``: nothing is written."""
    try:
        item = first
        while True:
            yield Progress(item[0], item[1])
            try:
                item = next(steps)
            except StopIteration as stop:
                return SavedResults(dict(stop.value))
    except _expected_errors() as exc:
        return Failure(error_text(exc))
    finally:
        steps.close()  # cancelled: the staged files are removed now


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """How a training job ended: ``outcome`` done / stopped; checkpoints written."""

    outcome: Outcome
    out_dir: str
    best: str | None = None
    last: str | None = None
    events: int = 0
    metrics: dict = field(default_factory=dict)


def train_job(cfg: Any, *, resume: bool = False, stop: threading.Event | None = None,
              run_builder: Any = None) -> Iterator[Any]:
    """Run :func:`napari_vldun.train.iter_train` and pass its ``TrainEvent``s on.

    ``run_builder`` (optional, e.g. :func:`napari_vldun.train.make_run_builder` of the datasets
    built from layers or folders) is handed to ``iter_train``. Returns :class:`TrainResult` or
    :class:`Failure`.
    """
    result = TrainResult(outcome=Outcome.DONE, out_dir=str(getattr(cfg, "out_dir", "")))
    gen = None
    try:
        yield Status("preparing the training run ...")
        gen = iter_train(cfg, resume=resume, stop=stop, run_builder=run_builder)
        for ev in gen:
            result.events += 1
            if getattr(ev, "metrics", None):
                result.metrics.update({k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))})
            if ev.kind == EventKind.CHECKPOINT and ev.checkpoint is not None:
                name = Path(ev.checkpoint).name
                if name.startswith("best"):
                    result.best = str(ev.checkpoint)
                else:
                    result.last = str(ev.checkpoint)
            if ev.kind == EventKind.STOPPED:
                result.outcome = Outcome.STOPPED
            yield ev
    except _expected_errors() as exc:
        return Failure(error_text(exc))
    finally:
        if gen is not None:
            gen.close()
        del gen
        free_memory()
    return result


# ----------------------------------------------------------------------------- docks
def toggle_run_cancel(run_button, cancel_button, running: bool) -> None:
    """Run enabled while idle, Cancel while a job runs."""
    run_button.setEnabled(not running)
    cancel_button.setEnabled(running)


class JobDock(QWidget):
    """Base of the docks that run one job at a time in a napari thread worker.

    A subclass provides ``status`` (a label), ``_update_buttons()`` (enables its controls from
    ``self.worker``), ``_on_yielded(item)``, ``_on_result(result)`` (a job's result that is not a
    :class:`Failure`) and, where the job can be cancelled, ``_on_aborted()``.
    """

    #: emitted when a run ends: "done", "stopped", "cancelled" or "error"
    job_finished = Signal(str)

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.worker = None
        self.last_message = ""
        self._outcome: Outcome | None = None
        self.cancel_event = threading.Event()

    def _error(self, message: str) -> None:
        report_error(self, message)

    def new_cancel_event(self) -> threading.Event:
        """A fresh event for the job about to start (``cancel=`` of :func:`predict_job`)."""
        self.cancel_event = threading.Event()
        return self.cancel_event

    def request_cancel(self) -> None:
        """Stop the running job: the worker at its next yield, an inference job also at its next stage."""
        if self.worker is not None:
            self.cancel_event.set()
            self.worker.quit()

    def _fail(self, message: str) -> None:
        """The run ended in an error: show it; ``job_finished`` says "error"."""
        self._outcome = Outcome.ERROR
        self._error(message)

    def _launch(self, job, *args, **kwargs):
        """Run the generator ``job(*args, **kwargs)`` in a worker wired to this dock; returns it.

        An exception the job raises goes to :meth:`_on_errored`, never into Qt. ``self.worker`` is set
        before the worker starts, so that :meth:`_on_finished` always finds it.
        """
        from napari.qt.threading import create_worker

        handlers = {"errored": self._on_errored, "yielded": self._on_yielded, "returned": self._on_returned}
        if hasattr(self, "_on_aborted"):
            handlers["aborted"] = self._on_aborted
        handlers["finished"] = self._on_finished
        worker = create_worker(job, *args, _connect=handlers, _ignore_errors=True, _start_thread=False, **kwargs)
        self.worker = worker
        self._update_buttons()
        worker.start()
        return worker

    def _on_errored(self, exc: BaseException) -> None:
        self._fail(error_text(exc))

    def _on_returned(self, result) -> None:
        if isinstance(result, Failure):
            self._fail(result.message)
        else:
            self._on_result(result)

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()
        self.job_finished.emit((self._outcome or Outcome.DONE).value)
