"""One run per output folder: training, ``predict`` and ``evaluate`` refuse a folder another run holds,
naming its pid; a lock left by a dead process is taken over with a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_vldun.io.lock import LOCK_NAME, OutputLockedError, output_lock, read_lock

REPO = Path(__file__).resolve().parents[1]
_HOLD = """
import sys
from napari_vldun.io.lock import output_lock
with output_lock(sys.argv[1], "training"):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held(tmp_path):
    """A folder locked by another process (yields (folder, pid)); released at the end."""
    folder = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc.pid
    finally:
        proc.communicate("", timeout=30)
    assert not (folder / LOCK_NAME).exists()  # removed by its owner


def test_lock_file_and_release(tmp_path):
    folder = tmp_path / "new"
    with output_lock(folder, "predict") as path:
        doc = read_lock(folder)
        assert path == folder / LOCK_NAME and doc["pid"] == os.getpid() and doc["what"] == "predict"
        assert doc["host"] and doc["started"]
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with output_lock(folder, "training"):
                pass
    assert not folder.exists()  # created for the run, still empty: removed
    (tmp_path / "kept").mkdir()
    with output_lock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                "started": "2020-01-01T00:00:00"}))
    with pytest.warns(UserWarning, match=f"stale lock.*pid {dead.pid}.*no longer runs"):
        with output_lock(folder):
            assert read_lock(folder)["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()
    # another host's lock cannot be checked: refused, naming it
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(OutputLockedError, match="pid 1 on elsewhere"):
        with output_lock(folder):
            pass
    # a half-written lock: refused while fresh, taken over once old
    (folder / LOCK_NAME).write_text("")
    with pytest.raises(OutputLockedError, match="being written"):
        with output_lock(folder):
            pass
    old = time.time() - 3600
    os.utime(folder / LOCK_NAME, (old, old))
    with pytest.warns(UserWarning, match="unreadable lock"):
        with output_lock(folder):
            pass


def test_second_training_into_one_out_dir_is_refused(tmp_path, shared_data):
    from napari_vldun.train import iter_train
    from test_train import small

    cfg = small(tmp_path / "run", steps_per_epoch=1, model_overrides={"use_priors": False})
    first = iter_train(cfg)
    assert next(first).kind == "start"
    with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}.*another output folder"):
        next(iter_train(cfg.replace(overwrite=True)))
    assert [e.kind for e in first][-1] == "done"
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released at the end of the run
    assert (tmp_path / "run" / "last.json").is_file()


def test_training_predict_and_evaluate_refuse_a_held_folder(held, capsys):
    from napari_vldun.cli import main
    from napari_vldun.pipeline import predict_file, sample_dir
    from napari_vldun.train import TrainConfig, iter_train

    folder, pid = held
    with pytest.raises(OutputLockedError, match=f"pid {pid} on .*: .*-c"):
        next(iter_train(TrainConfig(sources=["acdc"], out_dir=str(folder), device="cpu")))
    with pytest.raises(OutputLockedError, match=f"in use by another vldun training \\(pid {pid}"):
        predict_file(sample_dir() / "acdc" / "degraded.nii.gz", folder, overwrite=True, device="cpu")
    assert main(["evaluate", "--images", str(sample_dir() / "acdc"), "--out", str(folder), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"vldun evaluate: error: {folder} is in use" in err and f"pid {pid}" in err
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing was written
