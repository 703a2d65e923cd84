"""Checkpoints: weights as safetensors + a JSON file with the config and metadata. No pickle.

A checkpoint ``NAME`` is the pair ``NAME.safetensors`` and ``NAME.json``, written together through
:func:`napari_vldun.io.atomic.atomic_outputs` (temporary files, moved into place only once both
are complete; never through a symbolic link; ``0o666 & ~umask``). The JSON is strict (NaN ->
``null``) and records ``weights_sha256``, the SHA-256 of the weights file; loading verifies it when
present (checkpoints saved before it was recorded still load) and refuses non-finite weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from ..io.atomic import atomic_outputs, dumps_json, write_with
from .config import VLDUNConfig
from .vldun import VLDUN

FORMAT_VERSION = 1

#: Suffixes of pickled PyTorch / Python files, which are never loaded (unpickling can run code).
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match its config."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Accept ``NAME``, ``NAME.safetensors`` or ``NAME.json`` -> (weights path, config path)."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _refuse_pickle(path: str | Path) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: PyTorch pickles are not loaded (unpickling can run code): convert to safetensors, e.g. "
            "load it in a trusted session and call napari_vldun.model.checkpoint.save_checkpoint(model, NAME), "
            "which writes NAME.safetensors + NAME.json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path`` (replacing
    it; never through a symbolic link), with ``0o666 & ~umask`` permissions
    (:func:`napari_vldun.io.atomic.write_with`)."""
    write_with(path, lambda tmp: write(str(tmp)), overwrite=True)


def save_checkpoint(model: VLDUN, path: str | Path, meta: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``model`` to ``path`` (.safetensors + .json, with the weights' SHA-256). ``meta`` holds
    anything JSON-able (label colours, training metrics, data provenance; NaN is written as
    ``null``). Returns the weights path."""
    from safetensors.torch import save_file

    wpath, cpath = checkpoint_paths(path)
    if not overwrite and (wpath.exists() or cpath.exists()):
        raise FileExistsError(f"checkpoint {wpath} already exists; choose another name or allow overwriting")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_outputs([wpath, cpath], overwrite) as tmp:
        save_file(state, str(tmp[wpath]))
        doc = {"format_version": FORMAT_VERSION, "weights_sha256": sha256_file(tmp[wpath]),
               "config": model.cfg.to_dict(), "meta": meta or {}}
        tmp[cpath].write_text(dumps_json(doc) + "\n")
    return wpath


def read_checkpoint_config(path: str | Path) -> tuple[VLDUNConfig, dict]:
    """Read only the JSON half: (config, meta)."""
    cfg, doc = _read_doc(path)
    return cfg, doc.get("meta", {})


def _read_doc(path: str | Path) -> tuple[VLDUNConfig, dict]:
    _refuse_pickle(path)
    _, cpath = checkpoint_paths(path)
    if not cpath.is_file():
        raise CheckpointError(f"checkpoint config {cpath} not found (a checkpoint is NAME.safetensors + NAME.json)")
    try:
        doc = json.loads(cpath.read_text())
        cfg = VLDUNConfig.from_dict(doc["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint config {cpath} is not a VL-DUN config: {exc}") from exc
    return cfg, doc


def _verify_checksum(wpath: Path, cpath: Path, doc: dict) -> None:
    """The weights file against the SHA-256 its JSON records (nothing to check when it has none)."""
    expected = doc.get("weights_sha256")
    if expected is not None and sha256_file(wpath) != str(expected).lower():
        raise CheckpointError(
            f"checkpoint weights {wpath} do not match the SHA-256 recorded in {cpath}: the file is corrupt "
            "or was replaced; restore both files of the checkpoint from the same save")


def _check_finite(wpath: Path, state: dict[str, torch.Tensor]) -> None:
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"checkpoint weights {wpath}: tensor {name!r} holds {n} NaN or infinite value(s); the file is "
                "corrupt or training diverged: use another checkpoint (e.g. best instead of last) or retrain")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[VLDUN, dict]:
    """Load a checkpoint -> (model in eval mode on ``device``, meta). Raises :class:`CheckpointError`
    naming the file when it is missing, a pickle (``.pt``...), corrupt (checksum mismatch, NaN or
    infinite weights) or does not fit its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath, cpath = checkpoint_paths(path)
    cfg, doc = _read_doc(path)
    meta = doc.get("meta", {})
    if not wpath.is_file():
        raise CheckpointError(f"checkpoint weights {wpath} not found")
    _verify_checksum(wpath, cpath, doc)
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {wpath} are unreadable or corrupt: {exc}") from exc
    _check_finite(wpath, state)
    text = state.get("priors.text_embeddings")
    model = VLDUN(cfg, text_embeddings=text)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights {wpath} do not match its config: {str(exc)[:500]}") from exc
    return model.to(device).eval(), meta
