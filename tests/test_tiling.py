"""Tiled inference (napari_vldun.tiling): tile plans, blending, and tiled vs whole-slice results on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.degradation import acquire
from napari_vldun.degradation.measurement import Measurement
from napari_vldun.degradation.consistency import measure
from napari_vldun.metrics import psnr
from napari_vldun.inference import InferenceError, check_tiling, load_model, predict
from napari_vldun.tiling import AUTO_TILE_PIXELS, blend_window, choose_tile, plan_tiles, whole_slice_bytes


@pytest.mark.parametrize("shape,tile,overlap", [((100, 70), 32, 8), ((64, 64), 64, 16), ((300, 129), 128, 32)])
def test_plan_covers_every_pixel_and_blend_weights_are_positive(shape, tile, overlap) -> None:
    plan = plan_tiles(shape, tile, overlap)
    h, w = shape
    cover = torch.zeros(h, w)
    for i, j in plan.origins:
        th, tw = min(tile, h - i), min(tile, w - j)
        assert i + th <= h and j + tw <= w
        cover[i:i + th, j:j + tw] += blend_window(th, tw, overlap, (i == 0, i + th == h, j == 0, j + tw == w))
    assert float(cover.min()) > 0.05  # every pixel is covered with weight; blending divides by the sum
    # the last tile of each row and column is flush with the border (no thin strip left over)
    assert max(i for i, _ in plan.origins) == max(0, h - tile) and max(j for _, j in plan.origins) == max(0, w - tile)


def test_plan_and_choice_refuse_bad_sizes() -> None:
    with pytest.raises(ValueError, match="twice the overlap"):
        plan_tiles((100, 100), 32, 16)
    with pytest.raises(ValueError, match="at least 32"):
        choose_tile((100, 100), 8)
    assert choose_tile((256, 256), None) is None  # small slices run whole
    assert choose_tile((2048, 2048), None) == 512 and 2048 * 2048 > AUTO_TILE_PIXELS
    assert choose_tile((2048, 2048), 0) is None and choose_tile((200, 100), 128) == 128
    assert choose_tile((100, 100), 128) is None  # fits in one tile


def test_memory_estimate_grows_with_pixels_and_width() -> None:
    from napari_vldun.model import get_config

    cfg = get_config("tiny")
    small, big = whole_slice_bytes(cfg, (512, 512)), whole_slice_bytes(cfg, (4096, 4096))
    assert big == pytest.approx(64 * small)
    assert whole_slice_bytes(cfg.replace(widths=tuple(2 * w for w in cfg.widths)), (512, 512)) == pytest.approx(2 * small)


def test_stage_maps_of_a_tiled_slice_are_refused() -> None:
    loaded = load_model(None, "cpu")
    with pytest.raises(InferenceError, match="stage maps need whole-slice"):
        check_tiling(loaded.model, loaded.device, (300, 300), 128, return_stages=True)
    with pytest.raises(InferenceError, match="tile must be"):
        predict(loaded, np.zeros((40, 40), np.float32), tile=8)


@pytest.fixture(scope="module")
def acdc_160(acdc_slice: np.ndarray) -> np.ndarray:
    img = np.pad(acdc_slice, ((0, max(0, 160 - acdc_slice.shape[0])), (0, max(0, 160 - acdc_slice.shape[1]))))
    return np.ascontiguousarray(img[:160, :160])


def test_tiled_matches_whole_slice_and_stays_data_consistent(acdc_160: np.ndarray) -> None:
    loaded = load_model(None, "cpu")
    deg, k, acq = acquire(acdc_160, "cartesian", 4.0, seed=0)
    deg = np.asarray(deg, np.float32)
    whole = predict(loaded, deg, tile=0)
    tiled = predict(loaded, deg, tile=96)
    assert tiled.restored.shape == whole.restored.shape == deg[None].shape
    assert psnr(tiled.restored[0], whole.restored[0]) > 33.0  # seams are small next to the restoration's error
    assert (tiled.labels == whole.labels).mean() > 0.9
    assert tiled.label_set == whole.label_set and tiled.modality_probs.shape == whole.modality_probs.shape
    # with k-space, the stitched estimate is projected onto the measurement after every pass
    mask = np.asarray(acq.mask)
    dc = predict(loaded, deg, tile=96, measurement=Measurement.of(k, mask), cascades=2)
    kk = measure(torch.from_numpy(dc.restored[0]), torch.from_numpy(mask))
    sampled = torch.from_numpy(mask) > 0
    err = (kk - torch.from_numpy(k))[sampled].abs().max()
    # the clamp to [0, 1] of the restored output is the only departure from the measurement
    assert float(err) < 0.05 * float(torch.from_numpy(k)[sampled].abs().max())
    assert psnr(dc.restored[0], acdc_160) > psnr(tiled.restored[0], acdc_160)
