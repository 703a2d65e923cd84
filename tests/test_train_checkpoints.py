"""Checkpoint sets: a save killed at any point leaves a complete set that ``resume`` continues from
exactly, saying so; a set whose files come from two saves is refused. Real data, the tiny model, 3 steps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from napari_vldun.model.checkpoint import load_checkpoint
from napari_vldun.train import iter_train
from napari_vldun.train.state import SETS_DIR, check_set
from test_train import small


class _Killed(BaseException):
    """Stands for SIGKILL in the middle of a save (no cleanup code runs for it)."""


@pytest.fixture(autouse=True)
def _need_data(shared_data):
    """Every test here trains on the real data (skipped when shared/data is absent)."""


def _losses(events) -> list[float]:
    return [e.metrics["loss"] for e in events if e.kind == "step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data) -> list[float]:
    """The losses of the uninterrupted 3-step run."""
    return _losses(iter_train(small(tmp_path_factory.mktemp("ref") / "run")))


def _stop_at_2(out) -> None:
    stop = threading.Event()
    for e in iter_train(small(out), stop=stop):
        if e.kind == "step" and e.step == 2:
            stop.set()


def _resume_and_check(out, reference, step: int) -> list:
    resumed = list(iter_train(small(out), resume=True))
    assert resumed[0].metrics["resumed_from_step"] == step
    assert _losses(resumed) == reference[step:]  # bit-exact continuation
    assert resumed[-1].kind == "done"
    doc, problem = check_set(out / "last")
    assert problem is None and doc["global_step"] == 3
    assert load_checkpoint(out / "last")[1]["global_step"] == 3 and load_checkpoint(out / "best")[0] is not None
    assert not (out / SETS_DIR).exists()
    return resumed


def test_kill_between_state_and_model_files(tmp_path, reference, monkeypatch):
    """Killed after writing ``last.state.*`` of step 3, before ``last.*``: resume continues at step 2."""
    import napari_vldun.model.checkpoint as ck

    out = tmp_path / "run"
    _stop_at_2(out)

    real = ck.save_checkpoint

    def killed(model, path, *args, **kwargs):
        if Path(path).name == "last":  # `best` (saved first) completes
            raise _Killed
        return real(model, path, *args, **kwargs)

    monkeypatch.setattr(ck, "save_checkpoint", killed)
    with pytest.raises(_Killed):
        list(iter_train(small(out), resume=True))  # dies saving `last` at the end of the epoch (step 3)
    monkeypatch.setattr(ck, "save_checkpoint", real)
    resumed = _resume_and_check(out, reference, 2)
    assert any("interrupted" in n for n in resumed[0].metrics["notes"]), resumed[0].metrics["notes"]


def test_kill_while_publishing_falls_back_to_the_complete_set(tmp_path, reference, monkeypatch):
    """Killed after the set of step 2 is complete, while its files replace ``last.*``: ``last.*`` is a
    mix, resume takes the complete set and says so."""
    import napari_vldun.train.state as st

    out = tmp_path / "run"
    real, published = st._link_or_copy, []

    def dies_second(src, dst):
        if len(published) == 1:
            raise _Killed
        real(src, dst)
        published.append(dst.name)

    monkeypatch.setattr(st, "_link_or_copy", dies_second)
    with pytest.raises(_Killed):
        _stop_at_2(out)
    monkeypatch.setattr(st, "_link_or_copy", real)
    assert len(published) == 1 and not (out / "last.json").exists()
    resumed = _resume_and_check(out, reference, 2)
    notes = " ".join(resumed[0].metrics["notes"])
    assert "resumed from the complete set of step 2" in notes and SETS_DIR in notes


def test_files_of_two_saves_are_refused(tmp_path):
    """``last.state.safetensors`` of step 2 beside the rest of step 3: refused, naming the file."""
    out = tmp_path / "run"
    _stop_at_2(out)
    old = (out / "last.state.safetensors").read_bytes()
    list(iter_train(small(out), resume=True))  # to step 3
    (out / "last.state.safetensors").unlink()
    (out / "last.state.safetensors").write_bytes(old)
    with pytest.raises(ValueError, match=r"last\.state\.safetensors does not match its checksum"):
        next(iter(iter_train(small(out), resume=True)))


def test_training_state_json_is_strict(tmp_path):
    """A NaN metric (e.g. Dice of a validation set without foreground) is written as null, never a bare NaN
    that strict JSON readers refuse; -inf (no best yet) likewise."""
    import json
    import math

    import torch

    from napari_vldun.train.state import load_state, save_state

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    _, jpath = save_state(tmp_path / "last", {"w": torch.zeros(2)},
                          {"best_score": -math.inf, "last_val": {"val_dice": math.nan, "val_psnr": 25.0}})
    doc = strict(jpath.read_text())
    assert doc["best_score"] is None and doc["last_val"] == {"val_dice": None, "val_psnr": 25.0}
    assert load_state(tmp_path / "last")[1]["last_val"]["val_psnr"] == 25.0
