"""Direct tests of the paper's modules: AMGDM's gradient step, Phi^T, MDPMM's band split, GDFN, prior
cross-attention, and the stage estimates of a pass."""

from __future__ import annotations

import pytest
import torch

from napari_vldun.degradation import cartesian_mask
from napari_vldun.degradation.consistency import measure
from napari_vldun.model import build_model
from napari_vldun.model.blocks import GDFN, PriorCrossAttention, band_split
from napari_vldun.model.ssm import BiMamba2d
from napari_vldun.model.unfolding import AMGDM, MDPMM, ScaledAdjoint, StageSettings

SETTINGS = StageSettings(prior_dim=8, heads=2, d_state=8, headdim=8, gdfn_expansion=2.0, scaled_phi_t=True)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_phi_t_of_zero_residual_is_zero_and_scales_with_the_residual() -> None:
    torch.manual_seed(0)
    phi_t = ScaledAdjoint(16, d_state=8, expand=1.0, headdim=8)
    r = _rand(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.count_nonzero(phi_t(torch.zeros_like(r))) == 0
        base, big, small = phi_t(r), phi_t(10 * r), phi_t(0.01 * r)
    assert base.abs().mean() > 1e-3
    torch.testing.assert_close(big, 10 * base, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small, 0.01 * base, rtol=1e-3, atol=1e-5)


def test_first_release_phi_t_ignores_the_residual_scale() -> None:
    """What the scale-equivariant Phi^T fixes: LayerNorm -> Bi-Mamba maps r and 10 r to the same output, and
    a zero residual to a non-zero one once the norm's bias has moved (as in training)."""
    torch.manual_seed(0)
    old = BiMamba2d(16, d_state=8, expand=1.0, headdim=8)
    r = _rand(1, 16, 8, 8)
    with torch.no_grad():
        old.norm.bias.fill_(0.1)
        torch.testing.assert_close(old(10 * r), old(r), rtol=1e-3, atol=1e-4)
        assert old(torch.zeros_like(r)).abs().max() > 0


def test_amgdm_step_vanishes_when_the_data_term_is_satisfied() -> None:
    torch.manual_seed(0)
    m = AMGDM(16, expand=1.0, s=SETTINGS).eval()
    z, tokens = _rand(1, 16, 8, 8, seed=1), _rand(1, 3, 8, seed=2)
    with torch.no_grad():
        n = m.norm(z)
        y_exact = m.phi(n) + m.attn(n, tokens)  # Phi z == y: zero residual
        torch.testing.assert_close(m(z, y_exact, tokens), z)
        step = m(z, y_exact + 0.1 * _rand(1, 16, 8, 8, seed=3), tokens) - z
        m.rho.data += 1.0  # a larger learned step moves further along the same direction
        step2 = m(z, y_exact + 0.1 * _rand(1, 16, 8, 8, seed=3), tokens) - z
    assert step.abs().mean() > 0
    ratio = float(torch.nn.functional.softplus(m.rho) / torch.nn.functional.softplus(m.rho - 1.0))
    torch.testing.assert_close(step2, ratio * step, rtol=1e-4, atol=1e-6)


def test_band_split_high_band_has_zero_mean_per_block_and_reconstructs() -> None:
    x = _rand(2, 4, 16, 12)
    low, high = band_split(x)
    assert low.shape == (2, 4, 8, 6) and high.shape == x.shape
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(high, 2), torch.zeros_like(low), atol=1e-6, rtol=0)
    up = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(up + high, x)


def test_mdpmm_low_branch_sees_only_the_low_band() -> None:
    """With frequency decoupling a map with zero 2x2 means after the norm has no low band: the GDFN branch
    contributes nothing, so zeroing the GDFN's weights leaves the output unchanged."""
    torch.manual_seed(0)
    m = MDPMM(8, expand=1.0, s=SETTINGS).eval()
    with torch.no_grad():
        m.norm.bias.zero_()
        checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)  # zero mean on every 2x2 block
        x = checker[None, None] * torch.linspace(0.5, 2.0, 8)[None, :, None, None]
        out, bands = m(x)
        assert bands.low.abs().max() < 1e-6
        m.low.project_out.weight.zero_()
        torch.testing.assert_close(m(x)[0], out)


def test_gdfn_keeps_shape_and_is_gated() -> None:
    torch.manual_seed(0)
    g = GDFN(8, 2.0)
    x = _rand(2, 8, 6, 6)
    assert g(x).shape == x.shape
    with torch.no_grad():
        assert torch.count_nonzero(g(torch.zeros_like(x))) == 0  # no biases: GDFN(0) = 0


def test_prior_cross_attention_is_a_set_operation_over_tokens() -> None:
    torch.manual_seed(0)
    att = PriorCrossAttention(16, 8, heads=2)
    x, tokens = _rand(1, 16, 5, 7), _rand(1, 6, 8, seed=1)
    with torch.no_grad():
        a = att(x, tokens)
        b = att(x, tokens[:, torch.randperm(6)])
        c = att(x, tokens + 0.5 * _rand(1, 6, 8, seed=2))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("passes", [1, 2])
def test_stage_estimates_are_images_and_data_consistent(passes: int) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", seed=1).eval()
    with torch.no_grad():  # move the zero-initialised stage heads so the stages differ
        for head in model.stage_heads:
            head.proj.weight.normal_(0, 0.05)
    y = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(3))
    mask = cartesian_mask((40, 56), 4, seed=0).mask
    k = measure(y, mask)
    with torch.no_grad():
        out = model(y, return_stages=True, kspace=k, mask=mask, cascades=passes)
    assert len(out.stages) == 6 * passes
    assert [s.pass_index for s in out.stages] == sorted(list(range(passes)) * 6)
    for s in out.stages:
        assert s.full.shape == s.low.shape == s.high.shape == y.shape
        # every stage estimate agrees with the measurement where k-space was sampled
        torch.testing.assert_close(measure(s.full, mask), k, atol=2e-4, rtol=0)
    torch.testing.assert_close(out.restored, out.stages[-1].full)
    assert not torch.allclose(out.stages[0].full, out.stages[-1].full)


def test_stage_feedback_starts_as_the_model_without_it_and_carries_the_consistent_estimate() -> None:
    """``stage_feedback``: zero-initialised, so a checkpoint without it loads and runs unchanged; once its
    convs move, the later stages see the data-consistent estimate (the k-space changes the features)."""
    plain = build_model("tiny", seed=1, stage_feedback=False).eval()
    fed = build_model("tiny", seed=1).eval()
    assert fed.cfg.stage_feedback and len(fed.feedback) == len(fed.stage_levels)
    missing, unexpected = fed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("feedback.") for k in missing)
    with torch.no_grad():
        for head in list(fed.stage_heads) + list(plain.stage_heads):
            head.proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    y = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(3))
    mask = cartesian_mask((40, 56), 4, seed=0).mask
    k = measure(y, mask)
    with torch.no_grad():
        a, b = plain(y, kspace=k, mask=mask), fed(y, kspace=k, mask=mask)
        torch.testing.assert_close(a.restored, b.restored)
        for conv in fed.feedback:
            conv.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
        c = fed(y, kspace=k, mask=mask)
        # feedback: the same observation with a different measurement changes the segmentation features
        d = fed(y, kspace=k * 0, mask=mask)
    assert not torch.allclose(c.restored, b.restored)
    seg_c, seg_d = c.seg_logits["acdc"], d.seg_logits["acdc"]
    assert (seg_c - seg_d).abs().max() > 1e-4
    seg_a0, seg_a1 = (plain(y, kspace=kk, mask=mask).seg_logits["acdc"] for kk in (k, k * 0))
    # without feedback the k-space reaches the features only through the image the seg head sees
    assert (seg_c - seg_d).abs().max() > (seg_a0 - seg_a1).abs().max()


def _pair_with_new_param(base: dict, extra: dict, name: str):
    """Two ``tiny`` models: ``base`` overrides, and the same plus ``extra`` loaded from the first's weights, so
    that the only tensor it lacks is the new parameter ``name``; both get the same non-zero stage image heads
    (zero-initialised otherwise, which would hide any effect of a step)."""
    plain = build_model("tiny", seed=1, **base).eval()
    new = build_model("tiny", seed=1, **base, **extra).eval()
    missing, unexpected = new.load_state_dict(plain.state_dict(), strict=False)
    assert missing == [name] and not unexpected
    with torch.no_grad():
        for m in (plain, new):
            for head in m.stage_heads:
                head.proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    return plain, new


def test_pass_step_sizes_start_as_the_model_without_them_and_scale_one_pass_stage() -> None:
    """``pass_step_sizes``: ones at first, so a checkpoint without them loads and computes the same; a step
    scales only its (pass, stage) residual, and passes beyond the last row use the last row."""
    plain, stepped = _pair_with_new_param({}, {"pass_step_sizes": 2}, "pass_steps")
    n = len(stepped.stage_heads)
    assert stepped.pass_steps.shape == (2 * n,) and stepped.pass_steps.ndim == 1  # no weight decay on it
    y = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(3))
    mask = cartesian_mask((40, 56), 4, seed=0).mask
    k = measure(y, mask)
    with torch.no_grad():
        a = plain(y, kspace=k, mask=mask, cascades=3, return_stages=True)
        b = stepped(y, kspace=k, mask=mask, cascades=3, return_stages=True)
        torch.testing.assert_close(a.restored, b.restored)
        stepped.pass_steps[n + 2] = 0.0  # pass 2 (and 3, which reuses its row), stage 2: no step
        c = stepped(y, kspace=k, mask=mask, cascades=3, return_stages=True)
    # pass 1 is untouched; in pass 2 stage 2 repeats stage 1's estimate
    for s_a, s_c in zip(a.stages[:n + 2], c.stages[:n + 2]):
        torch.testing.assert_close(s_a.full, s_c.full)
    torch.testing.assert_close(c.stages[n + 2].full, c.stages[n + 1].full)
    torch.testing.assert_close(c.stages[2 * n + 2].full, c.stages[2 * n + 1].full)
    assert not torch.allclose(a.stages[n + 2].full, c.stages[n + 2].full)
    with pytest.raises(ValueError, match="pass_step_sizes"):
        build_model("tiny", pass_step_sizes=-1)


def test_mask_step_sizes_start_as_one_and_act_only_on_their_mask_kind() -> None:
    """``mask_step_sizes``: factors of ones at first (a checkpoint without them computes the same); in a batch
    of a Cartesian and a radial acquisition a radial factor changes only the radial sample, and never the
    magnitude-only pass (no mask, no kind)."""
    from napari_vldun.degradation import radial_mask
    from napari_vldun.degradation.masks import mask_kinds

    plain, kinded = _pair_with_new_param({"pass_step_sizes": 2}, {"mask_step_sizes": True}, "mask_steps")
    n = len(kinded.stage_heads)
    assert kinded.mask_steps.shape == (2 * 2 * n,)
    y = torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(3))
    mask = torch.stack([torch.as_tensor(cartesian_mask((40, 56), 4, seed=0).mask),
                        torch.as_tensor(radial_mask((40, 56), accel=4).mask)]).float()[:, None]
    assert mask_kinds(mask).tolist() == [0, 1]  # MASK_KINDS order: cartesian, radial
    k = measure(y, mask)
    with torch.no_grad():
        a = plain(y, kspace=k, mask=mask, cascades=2)
        b = kinded(y, kspace=k, mask=mask, cascades=2)
        torch.testing.assert_close(a.restored, b.restored)
        kinded.mask_steps.view(2, 2, n)[1, 1, 0] = 0.0  # radial, pass 2, stage 1: no step
        c = kinded(y, kspace=k, mask=mask, cascades=2)
        free_a, free_c = plain(y), kinded(y)
    torch.testing.assert_close(c.restored[0], a.restored[0])
    assert not torch.allclose(c.restored[1], a.restored[1])
    torch.testing.assert_close(free_c.restored, free_a.restored)
    with pytest.raises(ValueError, match="mask_step_sizes"):
        build_model("tiny", mask_step_sizes=True)
