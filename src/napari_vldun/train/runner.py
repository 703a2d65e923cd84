"""Console front end of :func:`~napari_vldun.train.loop.iter_train` (used by ``vldun train CONFIG``).

A tqdm bar per epoch (loss and samples/s in the postfix), one line per epoch with the validation
metrics, Ctrl-C = stop after the current step and keep ``last`` (a second Ctrl-C aborts at once).
Only rank 0 prints under ``torchrun``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..inference import resolve_device
from .config import TrainConfig
from .loop import EventKind, TrainEvent, iter_train

__all__ = ["train_from_file", "run_training", "format_metrics"]

_SHOWN = ("val_psnr", "val_ssim", "val_dice", "val_iou", "zero_filled_psnr", "zero_filled_ssim",
          "val_modality_acc", "val_degradation_acc", "score")


def format_metrics(metrics: dict, keys=_SHOWN) -> str:
    parts = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
    return " ".join(parts)


def train_from_file(path: str | Path, *, resume: bool = False, out_dir: str | Path | None = None,
                    overrides: dict | None = None, progress: bool = True) -> dict:
    """Train from a JSON/TOML config file; ``out_dir`` and ``overrides`` (TrainConfig fields)
    replace the file's values. Returns :func:`run_training`'s summary."""
    cfg = TrainConfig.from_file(path)
    changes = dict(overrides or {})
    if out_dir is not None:
        changes["out_dir"] = str(out_dir)
    if changes:
        cfg = cfg.replace(**changes)
    return run_training(cfg, resume=resume, progress=progress)


class _SigintToStop:
    """First SIGINT sets ``stop``; the second one raises KeyboardInterrupt (main thread only)."""

    def __init__(self, stop: threading.Event, say) -> None:
        self.stop, self.say, self.old = stop, say, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop.is_set():
            signal.signal(signal.SIGINT, self.old or signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop.set()
        self.say("\nstopping after the current step (Ctrl-C again to abort without saving)...")

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def run_training(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, verbose: bool = True,
                 stop: threading.Event | None = None) -> dict:
    """Consume :func:`iter_train` with console output. Returns ``{best, last, epochs, metrics,
    wall_s, steps, stopped, history}``: checkpoint paths (``best`` None if never validated in the
    joint phase), epochs completed in this call, the last validation metrics, wall time (s)."""
    from tqdm.auto import tqdm

    resolve_device(cfg.device)  # CUDA asked for but absent: a clear error before any work
    stop = stop or threading.Event()
    main = int(os.environ.get("RANK", "0") or 0) == 0
    show_bar, talk = progress and main, verbose and main
    bar = None

    def say(msg: str) -> None:
        if talk:
            (tqdm.write(msg, file=sys.stdout) if bar is not None else print(msg, flush=True))

    summary = {"best": None, "last": None, "epochs": 0, "metrics": {}, "wall_s": 0.0, "steps": 0,
               "stopped": False, "history": []}
    t0 = time.time()
    ev: TrainEvent | None = None
    try:
        with _SigintToStop(stop, say):
            for ev in iter_train(cfg, resume=resume, stop=stop):
                summary["steps"] = ev.step
                if ev.kind == EventKind.START:
                    m = ev.metrics
                    phases = ", ".join(f"{k} {v['epochs']}x{v['steps_per_epoch']} steps"
                                       for k, v in m.get("phases", {}).items())
                    say(f"training {m.get('params', 0) / 1e6:.2f} M params on {m.get('device')} "
                        f"(x{m.get('world_size', 1)}): {phases}; out_dir {m.get('out_dir')}"
                        + (f"; resumed at step {m.get('resumed_from_step')}" if m.get("resumed") else ""))
                    for note in m.get("notes", []):
                        say(f"note: {note}")
                elif ev.kind == EventKind.STEP:
                    if show_bar and bar is None:
                        bar = tqdm(total=ev.epoch_steps, initial=ev.epoch_step - 1, leave=False, dynamic_ncols=True,
                                   desc=f"{ev.phase} {ev.epoch}/{ev.epochs}")
                    if bar is not None:
                        bar.update(ev.epoch_step - bar.n)
                        bar.set_postfix(loss=f"{ev.metrics.get('loss', float('nan')):.4f}",
                                        sps=f"{ev.metrics.get('samples_per_s', 0.0):.1f}")
                elif ev.kind == EventKind.EPOCH:
                    if bar is not None:
                        bar.close()
                        bar = None
                    summary["epochs"] += 1
                    summary["metrics"] = {k: v for k, v in ev.metrics.items() if k.startswith(("val_", "zero_", "score"))}
                    summary["history"].append({"phase": ev.phase, "epoch": ev.epoch, **ev.metrics})
                    say(f"{ev.phase} epoch {ev.epoch}/{ev.epochs} step {ev.step}/{ev.total_steps}: "
                        f"loss {ev.metrics.get('train_loss', float('nan')):.4f} "
                        f"{format_metrics(ev.metrics)} ({ev.metrics.get('epoch_time_s', 0):.0f} s)")
                elif ev.kind == EventKind.CHECKPOINT:
                    summary[ev.metrics.get("name", "last")] = str(ev.checkpoint)
                elif ev.kind == EventKind.STOPPED:
                    summary["stopped"] = True
                    summary["last"] = str(ev.checkpoint)
                    say(f"stopped at step {ev.step}/{ev.total_steps}; last checkpoint {ev.checkpoint} "
                        "(continue with resume / --resume)")
                elif ev.kind == EventKind.DONE:
                    summary["best"] = ev.metrics.get("best")
                    summary["last"] = ev.metrics.get("last")
                    say(f"done: best {summary['best']} ({cfg.best_metric} {ev.metrics.get('best_score', float('nan')):.4g}), "
                        f"last {summary['last']}")
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        last = Path(cfg.out_dir) / "last"
        say(f"aborted; the last saved checkpoint is {last} ({'present' if last.with_suffix('.json').exists() else 'none'})")
        raise
    finally:
        if bar is not None:
            bar.close()
    summary["wall_s"] = time.time() - t0
    return summary
