"""One run at a time per output folder: a lock file with the owner's pid, host and start time.

:func:`output_lock` (a context manager) creates ``FOLDER/.vldun.lock`` with ``O_EXCL`` and removes it
on exit; a second run into the same folder gets :class:`OutputLockedError` naming the first one's
pid. A lock left by a process that no longer runs on this host (killed, crashed) is taken over with
a warning. :func:`locks_output` is the same as a decorator, for a function whose argument names the
folder. No Qt, no torch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterator

from .atomic import check_out_dir

__all__ = ["LOCK_NAME", "OutputLockedError", "output_lock", "locks_output", "read_lock"]

#: Name of the lock file inside the locked folder.
LOCK_NAME = ".vldun.lock"
#: A lock file that cannot be parsed and is older than this (s) was left half-written: stale.
_UNREADABLE_STALE_S = 30.0


class OutputLockedError(FileExistsError):
    """Another run holds the output folder (its lock file names the pid, host and start time)."""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` runs on this host (and is the process that started at ``start``, when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # runs, as another user
    except OSError:
        return True
    now = _proc_start(pid)
    return start is None or now is None or now == start


def read_lock(folder: str | Path) -> dict | None:
    """The lock document of ``folder`` (``pid``, ``host``, ``started``, ``what``, ...), ``{}`` when the
    file is unreadable, None when there is no lock."""
    path = Path(folder) / LOCK_NAME
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {}


def _describe(doc: dict) -> str:
    return (f"pid {doc.get('pid')} on {doc.get('host')}, started {doc.get('started')}"
            + (f": {doc['command']}" if doc.get("command") else ""))


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for this process while the block runs; yields the lock file.

    ``what`` names the run in the lock and in messages ("training", "predict", ...). Raises
    :class:`OutputLockedError` when another live process holds it. A folder this call created is
    removed again at exit when it is still empty."""
    folder = Path(folder).expanduser()
    created = not folder.exists()
    folder = check_out_dir(folder)  # a file or a dangling link: the same message as the job's own check
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "proc_start": _proc_start(os.getpid()), "what": what, "command": " ".join(sys.argv)[:500],
           "token": uuid.uuid4().hex}
    for _ in range(5):  # each round either takes the lock, refuses, or removes one stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path, folder, what)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        break
    else:
        raise OutputLockedError(f"{folder} is locked ({path}) and the lock could not be taken over; "
                                "retry, or delete the lock file if no other vldun process writes there")
    try:
        yield path
    finally:
        if (read_lock(folder) or {}).get("token") == doc["token"]:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def _take_over_if_stale(path: Path, folder: Path, what: str) -> None:
    """Remove ``path`` when its owner is gone (with a warning); raise :class:`OutputLockedError` otherwise."""
    doc = read_lock(folder)
    if doc is None:
        return  # released meanwhile: try again
    host = socket.gethostname()
    if not doc:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age < _UNREADABLE_STALE_S:
            raise OutputLockedError(f"{folder} is being locked by another vldun process ({path} is being written); "
                                    f"retry in a minute or choose another output folder")
        reason = f"unreadable lock file {age:.0f} s old"
    elif doc.get("host") != host:
        raise OutputLockedError(
            f"{folder} is in use by another vldun {doc.get('what', 'run')} ({_describe(doc)}); wait for it to "
            f"finish or choose another output folder for this {what}. If that process no longer runs, "
            f"delete {path}")
    elif _alive(int(doc.get("pid", -1)), doc.get("proc_start")):
        raise OutputLockedError(
            f"{folder} is in use by another vldun {doc.get('what', 'run')} ({_describe(doc)}); wait for it to "
            f"finish (or stop it) or choose another output folder for this {what}")
    else:
        reason = f"left by {_describe(doc)}, which no longer runs"
    stale = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, stale)  # only one of several racing processes gets it
    except FileNotFoundError:
        return
    stale.unlink(missing_ok=True)
    warnings.warn(f"{folder}: took over a stale lock ({reason})", stacklevel=4)


def locks_output(folder_arg: str, what: str = "run") -> Callable:
    """Decorator: run the function inside :func:`output_lock` of the folder its argument
    ``folder_arg`` names (``"out_dir"``, or ``"args.out"`` for an attribute of an argument); no lock
    when that value is None."""
    param, _, attr = folder_arg.partition(".")

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            value = bound.arguments.get(param)
            if attr and value is not None:
                value = getattr(value, attr, None)
            if value is None:
                return fn(*args, **kwargs)
            with output_lock(value, what):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
