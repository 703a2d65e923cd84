"""Evaluation: TV baseline and the evaluate runner on real validation slices (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vldun.cli import main
from napari_vldun.degradation import cartesian_mask, undersample
from napari_vldun.evaluate.baselines import tv_from_image
from napari_vldun.metrics import psnr
from napari_vldun.evaluate.runner import markdown_table

torch.set_num_threads(1)


def test_tv_beats_zero_filled(acdc_slice: np.ndarray) -> None:
    x = acdc_slice[:128, :128]
    m = cartesian_mask(x.shape, 4, seed=0).mask
    zf = np.asarray(undersample(x, m))
    tv = tv_from_image(x, m, lam=0.01, iters=80)
    assert psnr(tv, x) > psnr(zf, x) + 1.0


@pytest.mark.slow
def test_evaluate_cli_on_acdc(tmp_path) -> None:
    # 2 passes instead of the checkpoint's 5 keep it short; the pass count is checked in the file it writes
    rc = main(["evaluate", "--dataset", "acdc", "--accel", "4", "--max-slices", "2", "--tv-iters", "20", "--cascades",
               "2", "--out", str(tmp_path / "ev"), "--json", str(tmp_path / "rows.json"), "--device", "cpu"])
    assert rc == 0
    written = json.loads((tmp_path / "rows.json").read_text())
    rows = written["rows"]
    assert written["cascades"] == 2 and written["data_consistency"] is True
    by = {(r["method"], r["dataset"]): r for r in rows}
    zf, vl = by[("zero-filled", "acdc")], by[("vldun", "acdc")]
    assert vl["psnr"] is not None and vl["dice"] is not None and zf["psnr"] is not None
    assert 0 <= vl["dice"] <= 1 and 0 <= vl["ssim"] <= 1 and zf["n_slices"] == 2
    assert by[("tv", "acdc")]["psnr"] > zf["psnr"]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| vldun |" in md and "acdc PSNR" in md and "data consistency with the measured k-space: on" in md
    assert list((tmp_path / "ev").glob("examples_acdc_R4.png"))
    # without the k-space the same network on the same slices scores lower: data consistency is a projection
    assert main(["evaluate", "--dataset", "acdc", "--accel", "4", "--max-slices", "2", "--no-tv", "--no-dc",
                 "--json", str(tmp_path / "free.json"), "--device", "cpu"]) == 0
    free = json.loads((tmp_path / "free.json").read_text())
    assert free["data_consistency"] is False
    by_free = {(r["method"], r["dataset"]): r for r in free["rows"]}
    assert by_free[("zero-filled", "acdc")]["psnr"] == zf["psnr"]
    assert vl["psnr"] > by_free[("vldun", "acdc")]["psnr"] + 0.3


def test_markdown_table_layout() -> None:
    rows = [{"method": "a", "dataset": "d1", "psnr": 30.0, "ssim": 0.9, "dice": None, "iou": None},
            {"method": "a", "dataset": "d2", "psnr": 20.0, "ssim": 0.5, "dice": 0.7, "iou": 0.6}]
    md = markdown_table(rows).splitlines()
    assert md[0].startswith("| Method | d1 PSNR") and md[2] == "| a | 30.00 | 0.9000 | - | - | 20.00 | 0.5000 | 0.7000 | 0.6000 |"


def test_volume_dice_counts_all_slices_of_a_volume_at_once() -> None:
    from napari_vldun.evaluate.runner import Case, Evaluator, Scores

    ev = Evaluator(None, {}, False, 0, 0.0, None)
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1  # class 1: 4 px on slice 0 of volume "a"
    pred = ref.copy()
    pred[1, 2:, 2:] = 1  # 4 false-positive px on slice 1, which has no foreground
    for z in range(2):
        ev._score("m", Case("d", f"a:{z}", np.zeros((4, 4)), ref[z], "cartesian", None), None, pred[z], 2)
    ev._score("m", Case("d", "b:0", np.zeros((4, 4)), ref[0], "cartesian", None), None, ref[0], 2)
    s: Scores = ev.scores[("m", "d")]
    summary = s.summary()
    assert summary["dice"] == 1.0  # per slice: only slices with foreground count, both perfect
    assert summary["n_volumes"] == 2
    assert summary["dice_volume"] == pytest.approx((2 * 4 / (8 + 4) + 1.0) / 2, abs=1e-4)  # volume a 0.667, b 1
