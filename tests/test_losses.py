"""Losses of napari_vldun.train.losses on hand-made cases (and the ablation switches of the model)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_vldun.model import StageMaps, VLDUNOutput
from napari_vldun.metrics import ssim
from napari_vldun.train.losses import (DiceCELoss, FocalLoss, JointLoss, PriorLoss, charbonnier,
                                       degradation_contrastive_loss, ssim_l1)

torch.set_num_threads(1)


def _onehot_logits(target: torch.Tensor, n: int, scale: float = 30.0) -> torch.Tensor:
    """(B, H, W) labels -> (B, n, H, W) logits that are confidently right."""
    return F.one_hot(target, n).permute(0, 3, 1, 2).float() * scale


# ----------------------------------------------------------------------------- focal / contrastive
def test_focal_gamma0_is_alpha_times_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g)
    target = torch.randint(0, 5, (16,), generator=g)
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(alpha=0.25, gamma=0.0)(logits, target), 0.25 * ce, atol=1e-6)
    assert torch.allclose(FocalLoss(alpha=None, gamma=0.0)(logits, target), ce, atol=1e-6)


def test_focal_matches_eq3_and_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    target = torch.tensor([0, 1])
    p_t = logits.softmax(1)[torch.arange(2), target]
    expected = (-0.25 * (1 - p_t) ** 2 * p_t.log()).mean()
    assert torch.allclose(FocalLoss(0.25, 2.0)(logits, target), expected, atol=1e-6)
    # the easy (confident, correct) sample is down-weighted much more than the hard one
    per = -((1 - p_t) ** 2) * p_t.log()
    ce = -p_t.log()
    assert per[0] / ce[0] < 0.01 < per[1] / ce[1]


def test_focal_per_class_alpha_and_bad_gamma():
    logits = torch.zeros(2, 2)
    target = torch.tensor([0, 1])
    loss = FocalLoss(alpha=[1.0, 3.0], gamma=0.0)(logits, target)
    assert torch.allclose(loss, torch.tensor(math.log(2) * (1 + 3) / 2), atol=1e-6)
    with pytest.raises(ValueError):
        FocalLoss(gamma=-1.0)


def test_degradation_contrastive_is_ce_over_similarities():
    sims = torch.tensor([[10.0, 1.0, -2.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 2])
    assert torch.allclose(degradation_contrastive_loss(sims, target), F.cross_entropy(sims, target))
    assert degradation_contrastive_loss(sims * 10, target) < 1e-3


# ----------------------------------------------------------------------------- Dice + CE
def test_dicece_perfect_prediction_is_near_zero_and_wrong_is_large():
    target = torch.zeros(2, 8, 8, dtype=torch.int64)
    target[:, 2:5, 2:6] = 1
    target[1, 6:, :3] = 3  # class 2 absent everywhere
    loss = DiceCELoss()
    assert float(loss(_onehot_logits(target, 4), target)) < 1e-3
    wrong = _onehot_logits(torch.zeros_like(target), 4)  # predicts background everywhere
    assert float(loss(wrong, target)) > 1.0
    assert float(loss.dice(wrong, target)) > 0.6


def test_dicece_shape_check_and_gradient():
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6))
    DiceCELoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        DiceCELoss()(logits, target[:, :5])


def test_charbonnier_close_to_l1():
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    assert abs(float(charbonnier(a, b)) - float(F.l1_loss(a, b))) < 2e-3


def test_ssim_l1_is_the_metric_ssim_plus_l1_and_trains_towards_the_target():
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 1, 32, 32, generator=g)
    noisy = (clean + 0.2 * torch.randn(2, 1, 32, 32, generator=g)).clamp(0, 1)
    want = 0.84 * (1 - ssim(noisy, clean)) + 0.16 * float(F.l1_loss(noisy, clean))
    assert abs(float(ssim_l1(noisy, clean)) - want) < 1e-5  # the metric's SSIM (float64) in fp32
    assert float(ssim_l1(clean, clean)) < 1e-6
    x = noisy.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    first = float(ssim_l1(x, clean).detach())
    for _ in range(50):
        opt.zero_grad()
        ssim_l1(x, clean).backward()
        opt.step()
    assert float(ssim_l1(x, clean)) < 0.5 * first
    small = torch.rand(1, 1, 8, 8, generator=g)  # below the 11 px window: the L1 alone
    assert float(ssim_l1(small, small * 0.5)) == pytest.approx(float(F.l1_loss(small, small * 0.5)))
    loss = JointLoss(["acdc"], rec_loss="ssim_l1", lambda_seg=0.0, stage_weight=0.0)
    out = VLDUNOutput(noisy, {})
    assert float(loss(out, {"clean": clean})["rec"]) == pytest.approx(float(ssim_l1(noisy, clean)), rel=1e-5)
    with pytest.raises(ValueError, match="rec_loss"):
        JointLoss(["acdc"], rec_loss="ssim")


# ----------------------------------------------------------------------------- JointLoss
def _batch(labelled=(True, False), sets=(0, -1), size=8):
    b = len(labelled)
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (b, size, size), generator=g)
    return {
        "clean": torch.rand(b, 1, size, size, generator=g),
        "label": label,
        "has_label": torch.tensor(labelled),
        "label_set_index": torch.tensor(sets),
        "modality": torch.tensor([0] * b),
        "degradation": torch.tensor([4] * b),
    }


def _output(batch, restored=True, seg=True, priors=False, stages=2):
    b, _, h, w = batch["clean"].shape
    g = torch.Generator().manual_seed(2)
    rest = torch.rand(b, 1, h, w, generator=g) if restored else None
    seg_logits = {"acdc": torch.randn(b, 4, h, w, generator=g), "covid_ct": torch.randn(b, 2, h, w, generator=g)}
    st = [StageMaps(0, torch.rand(b, 1, h, w, generator=g), torch.zeros(b, 1, h, w), torch.zeros(b, 1, h, w))
          for _ in range(stages)]
    return VLDUNOutput(rest, seg_logits if seg else {},
                       torch.randn(b, 3, generator=g) if priors else None,
                       torch.randn(b, 6, generator=g) if priors else None, st)


def test_joint_terms_and_total():
    batch = _batch()
    out = _output(batch)
    loss = JointLoss(["acdc", "covid_ct"], lambda_seg=0.5, stage_weight=0.1)
    t = loss(out, batch)
    assert set(t) == {"rec", "stage", "seg", "total"}
    assert torch.allclose(t["rec"], F.l1_loss(out.restored, batch["clean"]))
    stage = torch.stack([F.l1_loss(s.full, batch["clean"]) for s in out.stages]).mean()
    assert torch.allclose(t["stage"], 0.1 * stage)
    # seg only on the labelled sample 0 (label set "acdc")
    seg = DiceCELoss()(out.seg_logits["acdc"][:1], batch["label"][:1])
    assert torch.allclose(t["seg"], 0.5 * seg)
    assert torch.allclose(t["total"], t["rec"] + t["stage"] + t["seg"])


def test_rec_weight_scales_rec_and_stage_terms_only():
    batch = _batch()
    out = _output(batch)
    base = JointLoss(["acdc", "covid_ct"], lambda_seg=0.5, stage_weight=0.1)(out, batch)
    heavy = JointLoss(["acdc", "covid_ct"], lambda_seg=0.5, stage_weight=0.1, rec_weight=20.0)(out, batch)
    assert torch.allclose(heavy["rec"], 20.0 * base["rec"])
    assert torch.allclose(heavy["stage"], 20.0 * base["stage"])
    assert torch.allclose(heavy["seg"], base["seg"])


def test_free_weight_scores_the_estimate_before_data_consistency():
    batch = _batch()
    out = _output(batch)
    names = ["acdc", "covid_ct"]
    assert "rec_free" not in JointLoss(names, rec_weight=3.0, free_weight=1.0)(out, batch)  # no k-space given
    out.restored_free = torch.rand_like(out.restored)
    t = JointLoss(names, rec_weight=3.0, free_weight=0.5)(out, batch)
    assert torch.allclose(t["rec_free"], 1.5 * F.l1_loss(out.restored_free, batch["clean"]))
    assert torch.allclose(t["total"], t["rec"] + t["rec_free"] + t["stage"] + t["seg"])
    assert "rec_free" not in JointLoss(names, rec_weight=3.0)(out, batch)  # weight 0 by default


def test_joint_seg_skipped_without_labels_and_weighted_over_label_sets():
    loss = JointLoss(["acdc", "covid_ct"])
    batch = _batch(labelled=(False, False), sets=(-1, -1))
    t = loss(_output(batch), batch)
    assert "seg" not in t and torch.allclose(t["total"], t["rec"] + t["stage"])
    batch = _batch(labelled=(True, True, True), sets=(0, 1, 0))
    batch["label"][1] = batch["label"][1].clamp(max=1)
    out = _output(batch)
    t = loss(out, batch)
    d = DiceCELoss()
    sel = torch.tensor([0, 2])
    expected = (2 / 3) * d(out.seg_logits["acdc"][sel], batch["label"][sel]) + \
               (1 / 3) * d(out.seg_logits["covid_ct"][1:2], batch["label"][1:2])
    assert torch.allclose(t["seg"], 0.5 * expected, atol=1e-6)


def test_joint_ablations_and_prior_terms():
    batch = _batch()
    loss = JointLoss(["acdc", "covid_ct"], w_mod=0.3, w_deg=0.2)
    # no rec head: no rec / stage terms
    t = loss(_output(batch, restored=False), batch)
    assert set(t) == {"seg", "total"}
    # no seg head: no seg term
    t = loss(_output(batch, seg=False), batch)
    assert set(t) == {"rec", "stage", "total"}
    # priors: modality (focal) and degradation (contrastive) terms, weighted
    out = _output(batch, priors=True)
    t = loss(out, batch)
    assert torch.allclose(t["modality"], 0.3 * FocalLoss()(out.modality_logits, batch["modality"]))
    assert torch.allclose(t["degradation"], 0.2 * F.cross_entropy(out.degradation_logits, batch["degradation"]))
    # zero weights (the joint-phase default) leave them out
    assert "modality" not in JointLoss(["acdc", "covid_ct"])(out, batch)
    # charbonnier reconstruction
    t = JointLoss(["acdc", "covid_ct"], rec_loss="charbonnier")(out, batch)
    assert torch.allclose(t["rec"], charbonnier(out.restored, batch["clean"]))
    # nothing to optimise at all
    with pytest.raises(ValueError):
        loss(_output(_batch((False, False), (-1, -1)), restored=False), _batch((False, False), (-1, -1)))
    with pytest.raises(KeyError):
        JointLoss(["brats2015"])(_output(batch), batch)


def test_joint_loss_with_real_model_ablations():
    from napari_vldun.model import build_model

    batch = _batch(labelled=(True, False), sets=(0, -1), size=32)
    batch["degraded"] = batch["clean"]
    loss = JointLoss(["acdc"], w_mod=1.0, w_deg=1.0)
    for overrides, expected in [
        ({}, {"rec", "stage", "seg"}),
        ({"rec_head": False}, {"seg"}),
        ({"seg_head": False}, {"rec", "stage"}),
    ]:
        model = build_model("tiny", use_priors=False, label_sets={"acdc": ["bg", "a", "b", "c"]}, **overrides)
        out = model(batch["degraded"], return_stages=True)
        t = loss(out, batch)
        assert set(t) - {"total"} == expected, overrides  # no CLIP: no modality/degradation terms
        t["total"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_prior_loss():
    batch = _batch()
    out = _output(batch, priors=True)
    t = PriorLoss()(out, batch)
    assert set(t) == {"modality", "degradation", "total"}
    assert torch.allclose(t["total"], t["modality"] + t["degradation"])
    with pytest.raises(ValueError):
        PriorLoss()(_output(batch), batch)


def test_monotone_hinge_psnr_counts_the_psnr_fall_between_stages():
    from napari_vldun.train.losses import monotone_hinge

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 1, 16, 16, generator=g)
    noise = torch.randn(2, 1, 16, 16, generator=g)
    better, worse = clean + 0.05 * noise, clean + 0.1 * noise
    # refining stages cost nothing, in either metric
    assert monotone_hinge([worse, better], clean, "psnr").item() == 0.0
    assert monotone_hinge([worse, better], clean, "l1").item() == 0.0
    # doubling the error is ln 4 (6.02 dB) in log-MSE, whatever the error's scale
    assert monotone_hinge([better, worse], clean, "psnr").item() == pytest.approx(math.log(4.0), rel=1e-4)
    small = [clean + 0.005 * noise, clean + 0.01 * noise]
    assert monotone_hinge(small, clean, "psnr").item() == pytest.approx(math.log(4.0), rel=1e-4)
    assert monotone_hinge(small, clean, "l1").item() < 0.01  # the L1 hinge shrinks with the error
    # one sample of two falling: half the pair's fall
    mixed = torch.cat([worse[:1], better[1:]])
    assert monotone_hinge([torch.cat([better[:1], worse[1:]]), mixed], clean, "psnr").item() == \
        pytest.approx(math.log(4.0) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="metric"):
        monotone_hinge([better, worse], clean, "ssim")


def test_monotone_hinge_margin_demands_a_gain_per_stage():
    from napari_vldun.train.losses import monotone_hinge

    g = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 1, 16, 16, generator=g)
    noise = torch.randn(2, 1, 16, 16, generator=g)
    a = clean + 0.1 * noise
    b = clean + 0.1 / 10 ** (0.05 / 20) * noise  # 0.05 dB better than a
    assert monotone_hinge([a, b], clean, "psnr").item() == 0.0
    assert monotone_hinge([a, b], clean, "psnr", margin_db=0.05).item() == pytest.approx(0.0, abs=1e-5)
    # asking for 0.1 dB when the stage gains 0.05 dB leaves 0.05 dB (in log-MSE units) to pay
    assert monotone_hinge([a, b], clean, "psnr", margin_db=0.1).item() == \
        pytest.approx(0.05 * math.log(10) / 10, rel=1e-3)
    with pytest.raises(ValueError, match="margin_db"):
        monotone_hinge([a, b], clean, "l1", margin_db=0.1)
    with pytest.raises(ValueError, match="margin_db"):
        monotone_hinge([a, b], clean, "psnr", margin_db=-1.0)
