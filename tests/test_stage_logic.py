"""Qt-free helpers of the Stage explorer (``_widgets._stage_logic``): passes of the stages, titles, thumbnail
ranges and the PSNR per stage. No display is needed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vldun._widgets._stage_logic import (band_range, pass_blocks, pass_starts, psnr_text, stage_passes,
                                                stage_psnrs, stage_titles)
from napari_vldun.metrics import PSNR_CAP


def test_stage_passes_falls_back_to_one_pass():
    assert stage_passes([0, 0, 1, 1], 4) == [0, 0, 1, 1]
    assert stage_passes(None, 3) == [0, 0, 0]
    assert stage_passes([0, 1], 3) == [0, 0, 0]  # not one per stage: not trusted


def test_pass_blocks_and_boundaries():
    passes = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pass_blocks(passes) == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6, 7, 8])]
    assert pass_starts(passes) == [3, 6]
    assert pass_blocks([0, 0]) == [(0, [0, 1])] and pass_starts([0, 0]) == []
    assert pass_blocks([]) == [] and pass_starts([]) == []


def test_stage_titles_number_within_a_pass():
    levels = [0, 1, 2, 1, 0, 0]
    assert stage_titles(levels, [0] * 6) == [f"stage {k + 1} (level {lv})" for k, lv in enumerate(levels)]
    two = stage_titles(levels * 2, [0] * 6 + [1] * 6)
    assert two[0] == "pass 1, stage 1 (level 0)"
    assert two[2] == "pass 1, stage 3 (level 2)"
    assert two[6] == "pass 2, stage 1 (level 0)"
    assert two[-1] == "pass 2, stage 6 (level 0)"
    assert stage_titles([0], [0, 0])[1] == "stage 2 (level ?)"  # a level missing


def test_band_range():
    maps = np.array([[-0.2, 0.1], [0.3, np.nan]], np.float32)
    assert band_range(maps, "full") == (0.0, 1.0)
    lo, hi = band_range(maps, "high")
    assert lo == pytest.approx(-0.2) and hi == pytest.approx(0.3)
    assert band_range(np.zeros((2, 2)), "low") == (0.0, 1.0)
    assert band_range(np.full((2, 2), np.nan), "low") == (0.0, 1.0)


def test_stage_psnrs_on_a_real_slice(acdc_slice):
    """The PSNR of every estimate, by the textbook formula: the exact copy is capped, noise and an
    undersampled version score lower, in order of their error."""
    from napari_vldun.degradation import acquire

    clean = np.ascontiguousarray(acdc_slice[:64, :64], np.float32)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    zero_filled = np.clip(np.asarray(acquire(clean[None], "cartesian", 4.0, seed=0)[0])[0], 0, 1)
    full = np.stack([clean, noisy, zero_filled])
    values = stage_psnrs(full, clean)
    assert len(values) == 3
    assert values[0] == PSNR_CAP
    for est, v in zip(full[1:], values[1:]):
        mse = float(np.mean((est.astype(np.float64) - clean) ** 2))
        assert v == pytest.approx(10 * np.log10(1.0 / mse), abs=1e-6)
        assert 10 < v < 60
    assert stage_psnrs(full[:0], clean) == []
    with pytest.raises(ValueError, match="do not match"):
        stage_psnrs(full[:, :32], clean)


def test_psnr_text():
    assert psnr_text(31.4159) == "31.42 dB"
    assert psnr_text(None) == ""


def test_prediction_says_the_pass_of_every_stage(acdc_slice):
    """``Prediction.stage_passes``: one entry per stage, the pass it came from (a 'tiny' model reports every
    pass of the cascade; the first release's architecture only the last pass's, numbered 0)."""
    from napari_vldun.degradation import acquire
    from napari_vldun.degradation.measurement import Measurement
    from napari_vldun.inference import LoadedModel, predict
    from napari_vldun.model import build_model

    clean = np.ascontiguousarray(acdc_slice[:32, :32], np.float32)[None]
    y, k, m = acquire(clean, "cartesian", 4.0, seed=0)
    meas = {"measurement": Measurement.of(np.asarray(k), m.mask.numpy())}
    for config, expected in (("tiny", [0] * 6 + [1] * 6), ("tiny_v1", [0] * 6)):
        model = build_model(config).eval()
        loaded = LoadedModel(model, next(model.parameters()).device, "random", True)
        pred = predict(loaded, np.asarray(y, np.float32), return_stages=True, cascades=2, **meas)
        assert model.cfg.num_stages == 6
        assert pred.stages.shape[1] == len(pred.stage_levels) == len(pred.stage_passes)
        assert pred.stage_passes == expected, config
        assert stage_titles(pred.stage_levels, pred.stage_passes)[-1].startswith(
            "pass 2, stage 6" if config == "tiny" else "stage 6")
