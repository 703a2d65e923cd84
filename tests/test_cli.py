"""The ``vldun`` command line, run in-process."""

from __future__ import annotations

import json

import pytest
import torch

from napari_vldun.cli import main
from napari_vldun.pipeline import list_samples

torch.set_num_threads(1)


def test_info_json(capsys) -> None:
    assert main(["info", "--config", "tiny", "--size", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"config", "params", "gmacs_256", "gflops_256", "scan_gflops_256"} <= set(info)
    assert info["config"] == "tiny" and info["gflops_256"] == pytest.approx(2 * info["gmacs_256"], abs=2e-3)
    assert info["params_total"] < 2_000_000


def test_degrade_cli(tmp_path, capsys) -> None:
    clean = f"{list_samples()['brain']['dir']}/clean.nii.gz"
    assert main(["degrade", clean, str(tmp_path / "b.nii.gz"), "--mask", "radial", "--accel", "6", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mask"] == "radial" and abs(out["fraction"] - 1 / 6) < 0.02
    # refusing to overwrite is a clean error, not a traceback
    assert main(["degrade", clean, str(tmp_path / "b.nii.gz"), "--mask", "radial", "--accel", "6"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_bad_input_file_is_a_clear_error(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    assert main(["degrade", str(bad), str(tmp_path / "o.nii.gz"), "--mask", "cartesian", "--accel", "4"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err


def test_predict_cli_refuses_zero_cascades(tmp_path, capsys) -> None:
    s = list_samples()["acdc"]
    rc = main(["predict", f"{s['dir']}/{s['files']['degraded']}", "--out", str(tmp_path / "o"), "--cascades", "0"])
    assert rc == 2
    assert "cascades must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_cli_refuses_zero_cascades_before_any_slice(tmp_path, capsys) -> None:
    rc = main(["evaluate", "--dataset", "acdc", "--accel", "4", "--max-slices", "1", "--no-tv", "--cascades", "0",
               "--json", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cascades must be >= 1" in err and "evaluate R=" not in err  # no progress bar: nothing ran
    assert not (tmp_path / "r.json").exists()
