"""Resumable training state next to a checkpoint, without pickle.

``NAME.state.safetensors`` holds the tensors (optimizer moments, torch/CUDA RNG states) and
``NAME.state.json`` everything else (position in the run, optimizer hyper-parameters, Python and
NumPy RNG states, best score so far, wall time). Both are written atomically (temporary file +
:func:`os.replace`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import atomic_write

__all__ = ["state_paths", "save_state", "load_state", "optimizer_state", "load_optimizer_state",
           "rng_state", "set_rng_state", "STATE_VERSION"]

STATE_VERSION = 1


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
    atomic_write(jpath, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
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
