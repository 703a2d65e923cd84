"""Resumable training state next to a checkpoint, without pickle.

``NAME.state.safetensors`` holds the tensors (optimizer moments, torch/CUDA RNG states) and
``NAME.state.json`` everything else (position in the run, optimizer hyper-parameters, Python and
NumPy RNG states, best score so far, wall time). Both are written atomically (temporary file +
:func:`os.replace`).

Checkpoint sets
---------------
The files of one checkpoint (``NAME.safetensors``, ``NAME.json`` and, for "last", the two state
files) are one unit, :func:`write_checkpoint_set`: they are written into a staging folder under
``out/.checkpoints/``, listed with their SHA-256 in ``NAME.manifest.json`` (written last), and the
folder is renamed into place (``.checkpoints/NAME-STEP-xxxx``), which makes the set complete. Only
then are the files linked (or copied) onto ``out/NAME.*``, each with an atomic rename, the manifest
last, and the folder removed. A kill at any point leaves one complete set: the previous
``out/NAME.*`` (its manifest matches its files) or the renamed folder. :func:`find_resume_set` picks
the newest complete one and says when it is not ``out/NAME.*``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..io.atomic import dumps_json
from ..model.checkpoint import atomic_write

__all__ = ["state_paths", "save_state", "load_state", "optimizer_state", "load_optimizer_state",
           "rng_state", "set_rng_state", "STATE_VERSION", "SETS_DIR", "manifest_path", "set_files",
           "write_checkpoint_set", "check_set", "find_resume_set", "CheckpointSetError"]

STATE_VERSION = 1
SET_VERSION = 1
#: Folder of ``out_dir`` holding checkpoint sets being written (empty or absent between saves).
SETS_DIR = ".checkpoints"


class CheckpointSetError(ValueError):
    """No complete checkpoint set to resume from (files missing or not matching their manifest)."""


def state_paths(prefix: str | Path) -> tuple[Path, Path]:
    """``out/last`` -> (``out/last.state.safetensors``, ``out/last.state.json``)."""
    prefix = Path(prefix)
    return (prefix.with_name(prefix.name + ".state.safetensors"),
            prefix.with_name(prefix.name + ".state.json"))


def save_state(prefix: str | Path, tensors: dict[str, torch.Tensor], doc: dict) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    tpath, jpath = state_paths(prefix)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    doc = {"state_version": STATE_VERSION, **doc}
    atomic_write(tpath, lambda tmp: save_file(tensors, tmp))
    atomic_write(jpath, lambda tmp: Path(tmp).write_text(dumps_json(doc, indent=1)))  # strict: NaN -> null
    return tpath, jpath


def load_state(prefix: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    tpath, jpath = state_paths(prefix)
    if not (tpath.is_file() and jpath.is_file()):
        raise FileNotFoundError(f"training state {tpath.name} / {jpath.name} not found in {tpath.parent}; "
                                "cannot resume (start a new run, or set overwrite)")
    doc = json.loads(jpath.read_text())
    if doc.get("state_version") != STATE_VERSION:
        raise ValueError(f"{jpath}: unsupported training state version {doc.get('state_version')}")
    return load_file(str(tpath)), doc


# ----------------------------------------------------------------------------- checkpoint sets
def manifest_path(prefix: str | Path) -> Path:
    """``out/last`` -> ``out/last.manifest.json`` (the file list and checksums of the set)."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".manifest.json")


def set_files(prefix: str | Path) -> list[Path]:
    """The files of set ``prefix`` that exist: NAME.safetensors, NAME.json, NAME.state.*."""
    prefix = Path(prefix)
    names = [prefix.name + s for s in (".safetensors", ".json", ".state.safetensors", ".state.json")]
    return [prefix.with_name(n) for n in names if prefix.with_name(n).is_file()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (best effort: some file systems refuse folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` atomically (hard link, or a copy where links are refused)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{time.time_ns()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _staging_dirs(sets: Path, name: str) -> list[Path]:
    return sorted(sets.glob(f".{name}-staging-*")) if sets.is_dir() else []


def _set_dirs(sets: Path, name: str) -> list[Path]:
    return sorted(d for d in sets.glob(f"{name}-*") if d.is_dir()) if sets.is_dir() else []


def write_checkpoint_set(prefix: str | Path, step: int, write: Callable[[Path], None]) -> Path:
    """Write checkpoint set ``prefix`` (``out/NAME``) as one unit; ``write(p)`` writes the files of
    ``p`` (``p.safetensors``, ``p.json``, ``p.state.*``) into a staging folder. See the module
    docstring for the order that keeps one complete set through a kill. Returns ``prefix``."""
    prefix = Path(prefix)
    out, name = prefix.parent, prefix.name
    sets = out / SETS_DIR
    sets.mkdir(parents=True, exist_ok=True)
    for d in _staging_dirs(sets, name):  # left by a save that was killed
        shutil.rmtree(d, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}-staging-", dir=sets))
    try:
        write(stage / name)
        files = set_files(stage / name)
        if not files:
            raise RuntimeError(f"checkpoint set {prefix}: the writer wrote no files")
        for f in files:
            _fsync(f)
        doc = {"set_version": SET_VERSION, "name": name, "global_step": int(step), "written_ns": time.time_ns(),
               "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in files}}
        manifest_path(stage / name).write_text(dumps_json(doc, indent=1))
        _fsync(manifest_path(stage / name))
        _fsync(stage)
        final = sets / f"{name}-{int(step):08d}-{stage.name.rsplit('-', 1)[-1]}"
        os.rename(stage, final)  # the set is complete from here on
    except Exception:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _fsync(sets)
    for f in files:
        _link_or_copy(final / f.name, out / f.name)
    _link_or_copy(manifest_path(final / name), manifest_path(prefix))
    _fsync(out)
    for d in _set_dirs(sets, name):  # published: this set and any older one are no longer needed
        shutil.rmtree(d, ignore_errors=True)
    try:
        sets.rmdir()
    except OSError:
        pass  # another set is being written, or a file was left there
    return prefix


def check_set(prefix: str | Path) -> tuple[dict | None, str | None]:
    """(manifest, None) when every file of set ``prefix`` matches its manifest, else (None, problem)."""
    prefix = Path(prefix)
    mpath = manifest_path(prefix)
    try:
        doc = json.loads(mpath.read_text())
        files = dict(doc["files"])
        int(doc["global_step"])
    except FileNotFoundError:
        return None, f"{mpath} not found"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{mpath} is unreadable ({type(exc).__name__}: {exc})"
    for fname, info in files.items():
        f = prefix.with_name(fname)
        if not f.is_file():
            return None, f"{f} is missing"
        if f.stat().st_size != info.get("bytes") or _sha256(f) != info.get("sha256"):
            return None, f"{f} does not match its checksum in {mpath.name} (written by another save)"
    return doc, None


def find_resume_set(out_dir: str | Path, name: str = "last") -> tuple[Path, str | None]:
    """The newest complete checkpoint set ``name`` of ``out_dir`` -> (prefix to load, note or None).

    Candidates: ``out/NAME.*`` when its manifest matches, and the complete sets left in
    ``out/.checkpoints`` by a save that was interrupted while publishing. The note says when the
    set is not ``out/NAME.*`` or a save was interrupted. A run saved before manifests existed
    (``out/NAME.*`` without a manifest and no sets) resumes from ``out/NAME`` as before. Raises
    :class:`CheckpointSetError` when no complete set exists (naming the files that do not match).
    """
    out = Path(out_dir)
    top = out / name
    sets = out / SETS_DIR
    found: list[tuple[int, int, Path]] = []
    problems: list[str] = []
    for d in _set_dirs(sets, name):
        doc, problem = check_set(d / name)
        if doc is None:
            problems.append(problem)
        else:
            found.append((int(doc["global_step"]), int(doc.get("written_ns", 0)), d / name))
    top_problem = None
    if manifest_path(top).exists():
        doc, top_problem = check_set(top)
        if doc is not None:
            found.append((int(doc["global_step"]), int(doc.get("written_ns", 0)) + 1, top))  # ties: out/NAME
    elif not found and set_files(top):
        return top, None  # saved before checkpoint sets existed
    if not found:
        detail = "; ".join(filter(None, [top_problem, *problems])) or f"no {name}.* files"
        raise CheckpointSetError(f"cannot resume {out}: no complete '{name}' checkpoint set ({detail}); "
                                 "start a new run (overwrite=true / a new --out)")
    step, _, chosen = max(found)
    notes = []
    if chosen != top:
        notes.append(f"{top}.* is {'incomplete: ' + top_problem if top_problem else 'older'} (a save was "
                     f"interrupted); resumed from the complete set of step {step} in {chosen.parent}")
    if _staging_dirs(sets, "*"):
        notes.append(f"a save was interrupted before it completed and is ignored; resumed from the last "
                     f"complete set (step {step})")
    return chosen, " ".join(notes) or None


# ----------------------------------------------------------------------------- optimizer
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (``opt/<param>/<key>``) and a JSON-able document."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"opt/{pid}/{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "type": type(opt).__name__}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: dict) -> None:
    if doc.get("type") != type(opt).__name__:
        raise ValueError(f"saved optimizer is {doc.get('type')}, this run uses {type(opt).__name__}")
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if not name.startswith("opt/"):
            continue
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = val
    for pid, st in doc.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in doc["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global torch (and CUDA), NumPy and Python RNG states."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    doc = {"numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
           "python": [py[0], list(py[1]), py[2]]}
    return tensors, doc


def set_rng_state(tensors: dict[str, torch.Tensor], doc: dict) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        for k in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(tensors[k], int(k.rsplit("/", 1)[1]))
    if "numpy" in doc:
        kind, keys, pos, has_gauss, cached = doc["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in doc:
        v, internal, gauss = doc["python"]
        random.setstate((v, tuple(internal), gauss))
