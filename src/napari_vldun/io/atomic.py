"""Safe file output: the one way napari-vldun writes files.

Every file is written to a temporary file in its destination folder and moved into place with
:func:`os.replace` (or :func:`os.link` when it must not replace anything), so a crash, a full disk
or Ctrl-C never leaves a half-written file. The rules, the same for every writer:

* a symbolic link at a target path is refused (dangling or not, with or without ``overwrite``):
  output is never written through a link into another folder;
* an existing target is refused unless ``overwrite``; a folder at a target path is refused;
* files get ``0o666 & ~umask`` permissions (``mkstemp``'s 0600 is not kept);
* :func:`atomic_outputs` stages a *set* of files (e.g. ``predict``'s four outputs) and moves them
  into place only once all were written: on any error nothing of the set is left behind;
* JSON is strict (:func:`dumps_json`): NaN and infinities are written as ``null``.

Folders above a target may be links (``--out`` itself may be a link to a folder).
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["OutputPathError", "atomic_outputs", "atomic_path", "check_outputs", "dumps_json", "file_mode",
           "json_safe", "write_json", "write_text"]

#: Prefix of the temporary files (hidden, next to the target; the target's name ends them, so
#: writers that look at the suffix, like ``.nii.gz``, still see it).
TMP_PREFIX = ".~vldun-"


class OutputPathError(ValueError):
    """An output path that cannot be written safely (a link, a folder, under a file)."""


def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of every written file: ``0o666 & ~umask`` (what ``open(path, "w")`` gives)."""
    return 0o666 & ~_umask()


def _check_one(path: Path, overwrite: bool, what: str) -> None:
    label = f"{what}: {path}" if what else str(path)
    if path.is_symlink():
        raise OutputPathError(
            f"{label} is a symbolic link (to {os.readlink(path)}); outputs are never written through links: "
            "remove the link or choose another output path")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputPathError(f"{label}: {parent} is not a folder; choose another output path")
            break
    if path.is_dir():
        raise OutputPathError(f"{label} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{label} exists; pass --overwrite (overwrite=True) or choose another output path")


def check_outputs(paths: Iterable[str | Path], overwrite: bool, what: str = "") -> list[Path]:
    """Refuse unsafe or taken output paths before any work (see the module rules); returns them as
    :class:`Path`. Raises :class:`OutputPathError` or :class:`FileExistsError` naming the first
    bad path (``what``, e.g. ``"--out"``, is put in front of it)."""
    out = [Path(p).expanduser() for p in paths]
    links = [f"{p} (-> {os.readlink(p)})" for p in out if p.is_symlink()]
    if links:
        raise OutputPathError(
            f"{what + ': ' if what else ''}{', '.join(links)}: symbolic link(s); outputs are never written through "
            "links: remove them or choose another output path")
    taken = []
    for p in out:
        try:
            _check_one(p, overwrite, what)
        except FileExistsError:
            taken.append(str(p))
    if taken:
        raise FileExistsError(f"would overwrite {', '.join(taken)}; pass --overwrite (overwrite=True) "
                              "or choose another output path")
    return out


def _make_temp(path: Path) -> Path:
    """An empty temporary file next to ``path`` (same folder, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f"~{path.name}", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def _place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` onto ``path`` without following a link there; without ``overwrite`` never
    replace a file that appeared meanwhile (``os.link`` fails on an existing name)."""
    _check_one(path, overwrite, "")
    os.chmod(tmp, file_mode())  # writers that recreate the file (e.g. by name) keep the rule
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while writing; pass --overwrite or choose another output path")
    except OSError as exc:  # no hard links here (some network / FAT file systems)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        os.replace(tmp, path)
        return
    tmp.unlink()


def _mkdirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns those created (deepest last)."""
    made = []
    for p in [*reversed(folder.parents), folder]:
        if not p.exists() and not p.is_symlink():
            p.mkdir()
            made.append(p)
    return made


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            break


@contextmanager
def atomic_outputs(paths: Iterable[str | Path], overwrite: bool = False, what: str = ""
                   ) -> Iterator[dict[Path, Path]]:
    """Stage a set of output files: yields ``{target: temporary path}`` (each an empty file in the
    target's folder, its name ending with the target's name); write each temporary path, and on
    leaving the block all are moved into place. On any error or interrupt every temporary file, any
    target this call already placed and the folders it created are removed: nothing partial stays.

    The targets are checked first (:func:`check_outputs`) and again just before each move."""
    targets = list(dict.fromkeys(check_outputs(paths, overwrite, what)))  # a path named twice: one file
    made: list[Path] = []
    temps: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for t in targets:
            made += _mkdirs(t.parent)
            temps[t] = _make_temp(t)
        yield temps
        for t in targets:
            _place(temps[t], t, overwrite)
            placed.append(t)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if not overwrite:  # files this call created (an overwritten file cannot come back)
            for t in placed:
                t.unlink(missing_ok=True)
        _remove_empty(made)
        raise


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """One output file: yields a temporary path to write; moved onto ``path`` on success, removed
    on error (see :func:`atomic_outputs`)."""
    target = Path(path).expanduser()
    with atomic_outputs([target], overwrite) as temps:
        yield temps[target]


def write_with(path: str | Path, write: Callable[[Path], Any], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file and move it onto ``path`` (:func:`atomic_path`)."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path).expanduser()


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)


def json_safe(obj: Any) -> Any:
    """``obj`` with NumPy scalars/arrays, tuples and paths made JSON types and every NaN or infinity
    replaced by ``None`` (written as ``null``)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``obj`` (:func:`json_safe`; ``allow_nan=False``, so never a bare ``NaN``)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=default)


def write_json(path: str | Path, obj: Any, overwrite: bool = False, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (:func:`dumps_json`) to ``path`` atomically."""
    return write_text(path, dumps_json(obj, indent) + "\n", overwrite)


def check_out_dir(out: str | Path, what: str = "--out") -> Path:
    """An output folder: absent (it will be made) or a folder, not a file nor a dangling link."""
    out = Path(out).expanduser()
    if out.is_symlink() and not out.exists():
        raise OutputPathError(f"{what} {out} is a dangling symbolic link; remove it or choose another folder")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{what} {out} is a file; give a folder for the outputs")
    return out
