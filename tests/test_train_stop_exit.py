"""``vldun train`` stopped by Ctrl-C exits 130 (not 0 like a finished run) and says how to continue."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_sigint_stopped_training_exits_130(tmp_path, monkeypatch, capsys, shared_data):
    from napari_vldun.cli import main
    from napari_vldun.train import runner

    real = runner.iter_train

    def ctrl_c_after_first_step(*args, **kwargs):
        for ev in real(*args, **kwargs):
            yield ev
            if ev.kind == "step" and ev.step == 1:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C once

    monkeypatch.setattr(runner, "iter_train", ctrl_c_after_first_step)
    overrides = {"crop": 48, "batch_size": 2, "epochs": 1, "steps_per_epoch": 3, "prior_epochs": 0,
                 "max_slices_per_source": 4, "val_max_slices": 1, "device": "cpu",
                 "model_overrides": {"use_priors": False}}
    argv = ["train", str(REPO / "configs" / "tiny_acdc.json"), "--out", str(tmp_path / "r"),
            "--set", json.dumps(overrides)]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "stopped; resume with --resume" in captured.err
    summary = captured.out[re.search(r"^\{", captured.out, re.M).start():]
    assert json.loads(summary)["stopped"] is True
    assert (tmp_path / "r" / "last.state.json").is_file()
    monkeypatch.setattr(runner, "iter_train", real)
    assert main(argv + ["--resume"]) == 0  # the finished run exits 0
    assert json.loads((tmp_path / "r" / "last.state.json").read_text())["position"]["epoch"] == 1  # the epoch completed


@pytest.fixture(autouse=True)
def _default_sigint():
    """The SIGINT handler is Python's default around each test (pytest's own may differ)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
