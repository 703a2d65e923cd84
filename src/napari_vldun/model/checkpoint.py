"""Checkpoints: weights as safetensors + a JSON file with the config and metadata. No pickle.

A checkpoint ``NAME`` is the pair ``NAME.safetensors`` and ``NAME.json``; both are written to a
temporary file first and moved into place with :func:`os.replace`, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import VLDUNConfig
from .vldun import VLDUN

FORMAT_VERSION = 1

_UMASK = os.umask(0)  # read the process umask once (os.umask can only be read by setting it)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match its config."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Accept ``NAME``, ``NAME.safetensors`` or ``NAME.json`` -> (weights path, config path)."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path`` (a crash
    never leaves a half-written file). The file gets the usual umask-based permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: VLDUN, path: str | Path, meta: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``model`` to ``path`` (.safetensors + .json). ``meta`` holds anything JSON-able
    (label colours, training metrics, data provenance). Returns the weights path."""
    from safetensors.torch import save_file

    wpath, cpath = checkpoint_paths(path)
    if not overwrite and (wpath.exists() or cpath.exists()):
        raise FileExistsError(f"checkpoint {wpath} already exists; choose another name or allow overwriting")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {"format_version": FORMAT_VERSION, "config": model.cfg.to_dict(), "meta": meta or {}}
    atomic_write(wpath, lambda tmp: save_file(state, tmp))
    atomic_write(cpath, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))
    return wpath


def read_checkpoint_config(path: str | Path) -> tuple[VLDUNConfig, dict]:
    """Read only the JSON half: (config, meta)."""
    _, cpath = checkpoint_paths(path)
    if not cpath.is_file():
        raise CheckpointError(f"checkpoint config {cpath} not found (a checkpoint is NAME.safetensors + NAME.json)")
    try:
        doc = json.loads(cpath.read_text())
        cfg = VLDUNConfig.from_dict(doc["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config {cpath} is not a VL-DUN config: {exc}") from exc
    return cfg, doc.get("meta", {})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[VLDUN, dict]:
    """Load a checkpoint -> (model in eval mode on ``device``, meta). Raises :class:`CheckpointError`
    naming the file when it is missing, corrupt or does not fit its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath, _ = checkpoint_paths(path)
    cfg, meta = read_checkpoint_config(path)
    if not wpath.is_file():
        raise CheckpointError(f"checkpoint weights {wpath} not found")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {wpath} are unreadable or corrupt: {exc}") from exc
    text = state.get("priors.text_embeddings")
    model = VLDUN(cfg, text_embeddings=text)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights {wpath} do not match its config: {str(exc)[:500]}") from exc
    return model.to(device).eval(), meta
