"""Tests for napari_vldun.metrics (PSNR, SSIM, Dice, IoU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_vldun.metrics import PSNR_CAP, dice, dice_per_class, iou, iou_per_class, psnr, ssim

torch.set_num_threads(1)


# ------------------------------------------------------------------ PSNR
def test_psnr_identical_is_capped() -> None:
    x = np.random.default_rng(0).random((32, 40))
    assert psnr(x, x) == PSNR_CAP == 100.0
    t = torch.from_numpy(x).float()[None, None]
    assert psnr(t, t.clone()) == 100.0


def test_psnr_known_mse() -> None:
    target = np.zeros((16, 16))
    pred = np.full((16, 16), 0.1)  # MSE = 0.01
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-9)
    assert psnr(pred, target, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)
    # tiny error: capped at 100 dB, never above
    assert psnr(target + 1e-9, target) == 100.0


def test_psnr_batch_mean_and_none() -> None:
    target = torch.zeros(2, 1, 8, 8)
    pred = torch.stack([torch.full((1, 8, 8), 0.1), torch.full((1, 8, 8), 0.01)])  # 20 dB, 40 dB
    assert psnr(pred, target) == pytest.approx(30.0, abs=1e-5)
    per = psnr(pred, target, reduction="none")
    np.testing.assert_allclose(per, [20.0, 40.0], atol=1e-5)
    # (B, H, W) is a batch of single-channel images
    assert psnr(pred[:, 0], target[:, 0]) == pytest.approx(30.0, abs=1e-5)


def test_psnr_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 4)), data_range=0)


# ------------------------------------------------------------------ SSIM
def test_ssim_identical_is_one(acdc_slice: np.ndarray) -> None:
    assert ssim(acdc_slice, acdc_slice) == pytest.approx(1.0, abs=1e-12)
    t = torch.from_numpy(acdc_slice)[None, None]
    assert ssim(t, t) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma_noise", [0.02, 0.1])
def test_ssim_matches_skimage_on_acdc(acdc_slice: np.ndarray, sigma_noise: float) -> None:
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    noisy = np.clip(acdc_slice + sigma_noise * rng.standard_normal(acdc_slice.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    ref = skm.structural_similarity(noisy, acdc_slice, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    ours = ssim(noisy, acdc_slice)
    assert abs(ours - ref) < 1e-3
    assert ours < 1.0
    # torch (B, 1, H, W) batch: mean of the per-image values
    b = torch.from_numpy(np.stack([noisy, acdc_slice]))[:, None]
    tgt = torch.from_numpy(np.stack([acdc_slice, acdc_slice]))[:, None]
    np.testing.assert_allclose(ssim(b, tgt, reduction="none"), [ours, 1.0], atol=1e-6)
    assert ssim(b, tgt) == pytest.approx((ours + 1.0) / 2, abs=1e-6)


def test_ssim_decreases_with_noise(acdc_slice: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    n = rng.standard_normal(acdc_slice.shape)
    vals = [ssim(np.clip(acdc_slice + s * n, 0, 1), acdc_slice) for s in (0.01, 0.05, 0.2)]
    assert vals[0] > vals[1] > vals[2]


def test_ssim_too_small() -> None:
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


# ------------------------------------------------------------------ Dice / IoU
TRUE = np.array([[0, 1, 1],
                 [0, 1, 2],
                 [0, 0, 2]])
PRED = np.array([[0, 1, 0],
                 [0, 1, 2],
                 [2, 0, 2]])
# class 1: |T| = 3, |P| = 2, |P&T| = 2 -> Dice 4/5, IoU 2/3
# class 2: |T| = 2, |P| = 3, |P&T| = 2 -> Dice 4/5, IoU 2/3
# class 3: absent from both -> None, excluded


def test_dice_iou_hand_computed() -> None:
    d = dice_per_class(PRED, TRUE, 4)
    assert d == {1: pytest.approx(0.8), 2: pytest.approx(0.8), 3: None}
    assert dice(PRED, TRUE, 4) == pytest.approx(0.8)
    j = iou_per_class(PRED, TRUE, 4)
    assert j == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: None}
    assert iou(PRED, TRUE, 4) == pytest.approx(2 / 3)
    # unequal classes: mean over the present ones
    pred = TRUE.copy()
    pred[0, 2] = 0  # class 1: |T| 3, |P| 2, inter 2 -> 0.8 ; class 2 perfect -> 1
    assert dice(pred, TRUE, 3) == pytest.approx(0.9)
    assert iou(pred, TRUE, 3) == pytest.approx((2 / 3 + 1) / 2)


def test_dice_absent_class_predicted_is_excluded_from_mean() -> None:
    pred = TRUE.copy()
    pred[2, 0] = 3  # false positive of class 3, absent from the ground truth
    per = dice_per_class(pred, TRUE, 4)
    assert per[3] == 0.0 and per[1] == 1.0 and per[2] == 1.0
    assert dice(pred, TRUE, 4) == 1.0
    assert iou(pred, TRUE, 4) == 1.0


def test_dice_perfect_volume_and_torch() -> None:
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 5, size=(4, 16, 16))
    assert dice(vol, vol, 5) == 1.0 and iou(vol, vol, 5) == 1.0
    t = torch.from_numpy(vol)
    assert dice(t, t.clone(), 5) == 1.0
    assert all(v == 1.0 for v in dice_per_class(t, t, 5).values())


def test_dice_volume_is_pooled_not_slice_mean() -> None:
    true = np.zeros((2, 2, 2), int)
    pred = np.zeros((2, 2, 2), int)
    true[0, 0, 0] = true[1] = 1  # 1 voxel in slice 0, 4 in slice 1
    pred[1] = 1  # misses the slice-0 voxel
    assert dice(pred, true, 2) == pytest.approx(2 * 4 / (4 + 5))


def test_dice_no_foreground_is_nan() -> None:
    z = np.zeros((4, 4), int)
    assert math.isnan(dice(z, z, 3)) and math.isnan(iou(z, z, 3))
    assert dice_per_class(z, z, 3) == {1: None, 2: None}


def test_dice_rejects_bad_labels() -> None:
    with pytest.raises(ValueError):
        dice(TRUE, TRUE, 2)  # value 2 out of range
    with pytest.raises(ValueError):
        dice(TRUE + 0.5, TRUE, 4)
    with pytest.raises(ValueError):
        dice(TRUE[:2], TRUE, 4)
