"""VL-DUN model: shapes on odd sizes, gradients everywhere, ablations, determinism, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vldun.model import VLDUN, build_model, get_config
from napari_vldun.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_vldun.model.complexity import model_info

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> VLDUN:
    return build_model("tiny", seed=0)


def test_forward_shapes_odd_size(tiny: VLDUN, acdc_slice: np.ndarray) -> None:
    y = torch.from_numpy(acdc_slice[:97, :131].copy())[None, None].repeat(2, 1, 1, 1)
    out = tiny(y, return_stages=True)
    assert out.restored.shape == (2, 1, 97, 131)
    assert set(out.seg_logits) == set(tiny.cfg.label_sets)
    for name, logits in out.seg_logits.items():
        assert logits.shape == (2, len(tiny.cfg.label_sets[name]), 97, 131)
    assert out.modality_probs.shape == (2, len(tiny.cfg.modalities))
    assert out.degradation_probs.shape == (2, len(tiny.cfg.degradations))
    torch.testing.assert_close(out.modality_probs.sum(-1), torch.ones(2))
    assert len(out.stages) == tiny.cfg.num_stages
    assert [s.level for s in out.stages] == [0, 1, 2, 1, 0, 0]
    for s in out.stages:
        for band in (s.full, s.low, s.high):
            assert band.shape == (2, 1, 97, 131)
            assert torch.isfinite(band).all()


def test_every_parameter_gets_a_gradient(tiny: VLDUN) -> None:
    torch.manual_seed(0)
    y = torch.rand(2, 1, 40, 36)
    out = tiny(y, return_stages=True)
    loss = out.restored.mean() + out.modality_logits.sum() + out.degradation_logits.sum()
    loss = loss + sum(v.mean() for v in out.seg_logits.values()) + sum(s.full.mean() for s in out.stages)
    tiny.zero_grad()
    loss.backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_same_seed_same_model_and_output() -> None:
    a, b, c = build_model("tiny", seed=3), build_model("tiny", seed=3), build_model("tiny", seed=4)
    y = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ra, rb, rc = (m(y).seg_logits["acdc"] for m in (a, b, c))
    torch.testing.assert_close(ra, rb, rtol=0, atol=0)
    assert not torch.allclose(ra, rc)
    # the fixed text-prompt anchors do not depend on the model seed
    torch.testing.assert_close(a.priors.text_embeddings, c.priors.text_embeddings)


@pytest.mark.parametrize(
    "switch", [{"use_priors": False}, {"freq_decoupling": False}, {"seg_head": False}, {"rec_head": False}]
)
def test_ablation_switches(switch: dict) -> None:
    m = build_model("tiny", **switch)
    out = m(torch.rand(1, 1, 33, 47))
    if switch.get("use_priors") is False:
        assert out.modality_logits is None and not hasattr(m.priors, "visual")
    if switch.get("seg_head") is False:
        assert out.seg_logits == {}
    if switch.get("rec_head") is False:
        assert out.restored is None and out.seg_logits["acdc"].shape[-2:] == (33, 47)
    else:
        assert out.restored.shape == (1, 1, 33, 47)


def test_no_frequency_decoupling_changes_the_proximal_map() -> None:
    y = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fd = build_model("tiny", seed=0)(y).seg_logits["acdc"]
        no_fd = build_model("tiny", seed=0, freq_decoupling=False)(y).seg_logits["acdc"]
    assert not torch.allclose(fd, no_fd)


def test_fresh_model_starts_from_its_input() -> None:
    """The stage image heads start at zero (in the model, not in training code): every stage estimate and the
    restored image equal the input until training moves them."""
    y = torch.rand(1, 1, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = build_model("tiny", seed=0)(y, return_stages=True)
    torch.testing.assert_close(out.restored, y)
    assert len(out.stages) == 6 and all(torch.equal(s.full, y) for s in out.stages)


def test_both_heads_off_is_refused() -> None:
    with pytest.raises(ValueError, match="rec_head"):
        build_model("tiny", rec_head=False, seg_head=False)


def test_bad_input_shape(tiny: VLDUN) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        tiny(torch.rand(1, 3, 32, 32))


def test_named_config_sizes() -> None:
    tiny_info = model_info(build_model("tiny"), (64, 64))
    assert tiny_info["params_total"] < 2_000_000
    paper = build_model("paper", use_priors=False)
    n = sum(p.numel() for p in paper.parameters())
    assert abs(n - 22.77e6) / 22.77e6 < 0.05, n


def test_unknown_config_name() -> None:
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")


def test_checkpoint_round_trip(tmp_path, tiny: VLDUN) -> None:
    path = save_checkpoint(tiny, tmp_path / "ck", meta={"note": "test"})
    assert path.name == "ck.safetensors" and (tmp_path / "ck.json").exists()
    model, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"note": "test"}
    y = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(y).restored, tiny.eval()(y).restored)
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(tiny, tmp_path / "ck", overwrite=False)
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_and_mismatched_checkpoints(tmp_path, tiny: VLDUN) -> None:
    save_checkpoint(tiny, tmp_path / "ck")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.json").write_text((tmp_path / "ck.json").read_text())
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad")
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["config"]["widths"] = [8, 16, 32]
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_load_clip_weights_from_a_local_file(tmp_path) -> None:
    """User CLIP weights (open_clip state dict, safetensors) replace the visual tower and re-embed the prompts."""
    from safetensors.torch import save_file

    from napari_vldun.degradation import DEGRADATION_PROMPTS
    from napari_vldun.model.priors import _build_clip, load_clip_weights

    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="BatchNorm"):  # the tiny GroupNorm ResNet tower cannot take CLIP weights
        load_clip_weights(build_model(cfg).priors, tmp_path / "none.safetensors", [], cfg.clip)
    cfg.clip.vision = {"layers": 2, "width": 96, "patch_size": 16, "head_width": 32}  # a small ViT tower
    torch.manual_seed(123)
    clip = _build_clip(cfg.clip)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    model = build_model(cfg)
    before = model.priors.text_embeddings.clone()
    prompts = [DEGRADATION_PROMPTS[d] for d in cfg.degradations]
    load_clip_weights(model.priors, tmp_path / "clip.safetensors", prompts, cfg.clip)
    for k, v in clip.visual.state_dict().items():
        torch.testing.assert_close(model.priors.visual.state_dict()[k], v)
    assert not torch.allclose(before, model.priors.text_embeddings)
    torch.testing.assert_close(model.priors.text_embeddings.norm(dim=-1), torch.ones(len(prompts)))
    bad = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="open_clip checkpoint"):
        load_clip_weights(model.priors, bad, prompts, cfg.clip)


def test_known_kspace_makes_the_output_consistent(tiny: VLDUN, acdc_slice: np.ndarray) -> None:
    """With the measured k-space the restored image (odd size, padded inside) is consistent with it and
    closer to the truth than the same network's output without it; the segmentation sees that image."""
    from napari_vldun.degradation import cartesian_mask, data_consistency, measure, undersample

    x = torch.from_numpy(acdc_slice[:97, :131].copy())[None, None]
    m = cartesian_mask((97, 131), 4, seed=1).mask
    k = measure(x, m)
    y = undersample(x, m)
    with torch.no_grad():
        free, dc = tiny(y), tiny(y, kspace=k, mask=m)
    assert dc.restored.shape == (1, 1, 97, 131)
    torch.testing.assert_close(data_consistency(dc.restored, k, m), dc.restored, atol=1e-5, rtol=0)
    assert float(((dc.restored - x) ** 2).sum()) < float(((free.restored - x) ** 2).sum())
    assert not torch.equal(dc.seg_logits["acdc"], free.seg_logits["acdc"])
    torch.testing.assert_close(dc.restored_free, free.restored)
    with pytest.raises(ValueError, match="both kspace and mask"):
        tiny(y, kspace=k)
    # a cascade: more passes, each consistent, the first pass's estimate kept as restored_free
    with torch.no_grad():
        two = tiny(y, kspace=k, mask=m, cascades=2)
    torch.testing.assert_close(data_consistency(two.restored, k, m), two.restored, atol=1e-5, rtol=0)
    torch.testing.assert_close(two.restored_free, free.restored)
    assert not torch.allclose(two.restored, dc.restored)
    with pytest.raises(ValueError, match="cascades"):
        tiny(y, kspace=k, mask=m, cascades=0)
    with pytest.raises(ValueError, match="cascades"):
        build_model("tiny", cascades=0)
    # the pass count reported everywhere (CLI summary, napari provenance, evaluate JSON)
    assert tiny.passes(True) == tiny.cfg.cascades and tiny.passes(True, 2) == 2 and tiny.passes(False, 2) == 1


def test_pass_count_per_mask_kind(acdc_slice: np.ndarray) -> None:
    """``cascades_by_mask`` sets a job's default pass count for a mask kind (radial CT may want fewer passes
    than Cartesian MRI), decided once per job in inference; the module runs the count it is given (default
    ``cascades``, whatever the mask); an explicit count wins, other kinds keep ``cascades``, bad entries are
    refused."""
    from napari_vldun.degradation import cartesian_mask, measure, radial_mask, undersample
    from napari_vldun.degradation.measurement import Measurement
    from napari_vldun.inference import InferenceError, LoadedModel, passes, predict

    model = build_model("tiny", use_priors=False, cascades=3, cascades_by_mask={"radial": 1}).eval()
    loaded = LoadedModel(model, torch.device("cpu"), "test", True)
    x = torch.from_numpy(acdc_slice[:64, :64].copy())[None, None]
    radial, lines = radial_mask((64, 64), 4, seed=0).mask, cartesian_mask((64, 64), 4, seed=0).mask
    assert passes(loaded, True, None, radial) == 1 and passes(loaded, True, None, lines) == 3
    assert passes(loaded, True, 2, radial) == 2 and passes(loaded, True) == 3 and passes(loaded, False, None, radial) == 1
    assert passes(loaded, True, None, torch.stack([radial, lines])) == 3  # a job of both kinds: the default
    with pytest.raises(InferenceError, match="cascades"):
        passes(loaded, True, 0, radial)
    assert model.passes(True) == 3 and model.passes(True, 1) == 1  # the module: no policy of its own
    k, y = measure(x, radial), undersample(x, radial)
    with torch.no_grad():
        default, one, three = (model(y, kspace=k, mask=radial, cascades=c) for c in (None, 1, 3))
    torch.testing.assert_close(default.restored, three.restored)
    assert not torch.allclose(one.restored, three.restored)
    # a job: the policy's count for the radial mask, the same numbers as the module at 1 pass
    job = predict(loaded, y[0, 0].numpy(), measurement=Measurement.of(k[0].numpy(), radial.numpy()))
    np.testing.assert_allclose(job.restored[0], one.restored[0, 0].clamp(0, 1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="not a mask kind"):
        build_model("tiny", cascades_by_mask={"spiral": 2})
    with pytest.raises(ValueError, match="cascades_by_mask"):
        build_model("tiny", cascades_by_mask={"radial": 0})


def test_segmentation_decoder_head(acdc_slice: np.ndarray) -> None:
    """``seg_decoder_width``: the top-down decoder over three U levels gives full-size logits on odd sizes,
    every one of its parameters learns, and it needs ``stage_images``."""
    m = build_model("tiny", seed=0, seg_decoder_width=24)
    assert type(m.seg_head).__name__ == "SegmentationDecoder"
    y = torch.from_numpy(acdc_slice[:75, :98].copy())[None, None]
    out = m(y)
    for name, logits in out.seg_logits.items():
        assert logits.shape == (1, len(m.cfg.label_sets[name]), 75, 98)
    loss = sum(v.square().mean() for v in out.seg_logits.values())
    loss.backward()
    missing = [n for n, p in m.seg_head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"seg decoder parameters without gradient: {missing}"
    with pytest.raises(ValueError, match="seg_decoder_width"):
        get_config("tiny", seg_decoder_width=16, stage_images=False)


def test_segmentation_unet_head(acdc_slice: np.ndarray) -> None:
    """``seg_unet_widths``: the U-Net head gives full-size logits on odd sizes (the input is padded to its depth
    too); a fresh head ignores the unfolding features (zero laterals), every parameter then learns, and they
    reach the logits; it needs ``stage_images`` and two levels."""
    m = build_model("tiny", seed=0, seg_unet_widths=(8, 16, 32, 64, 128))
    assert type(m.seg_head).__name__ == "SegmentationUNet" and m.multiple == 16
    assert m.seg_head.joins == {1: 0, 2: 1, 3: 2}  # patch 2: U level j joins the head's level j + 1
    y = torch.from_numpy(acdc_slice[:75, :98].copy())[None, None]
    out = m(y)
    for name, logits in out.seg_logits.items():
        assert logits.shape == (1, len(m.cfg.label_sets[name]), 75, 98)
    image = torch.rand(1, 1, 80, 112)
    feats = [torch.randn(1, c, 40 // 2**j, 56 // 2**j) for j, c in enumerate(m.cfg.widths)]
    first = m.seg_head(feats, image)["acdc"]
    torch.testing.assert_close(m.seg_head([2 * f + 1 for f in feats], image)["acdc"], first, rtol=0, atol=0)
    loss = sum(v.square().mean() for v in out.seg_logits.values())
    loss.backward()
    missing = [n for n, p in m.seg_head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"seg U-Net parameters without gradient: {missing}"
    with torch.no_grad():
        for conv in m.seg_head.lateral.values():
            conv.weight.fill_(0.1)
    assert not torch.allclose(m.seg_head(feats, image)["acdc"], m.seg_head([2 * f for f in feats], image)["acdc"])
    for bad in ({"stage_images": False}, {"seg_unet_widths": (16,)}, {"seg_unet_widths": (16, 0)}):
        with pytest.raises(ValueError, match="seg_unet_widths"):
            get_config("tiny", **{"seg_unet_widths": (8, 16), **bad})


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if p.ndim == 4]


def test_channels_last_weights_match_the_nchw_path(tmp_path, acdc_slice: np.ndarray) -> None:
    """The model stores its 4-D weights channels-last (built and loaded alike); the same weights NCHW give
    the same restoration and labels, and both give the float64 gradient: the layout is a speed choice only."""
    import copy

    model = build_model("tiny", seed=0, seg_decoder_width=16)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(model))
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "ck"))
    conv = [w for w in _conv_weights(loaded) if w.shape[-1] > 1 and w.shape[1] > 1]
    assert conv and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in conv)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert all(w.is_contiguous() for w in _conv_weights(nchw))
    f64 = copy.deepcopy(nchw).double()
    y = torch.from_numpy(acdc_slice[:64, :72].copy())[None, None]
    outs, grads = [], []
    for m, x in ((model, y), (nchw, y), (f64, y.double())):
        out = m(x)
        (out.restored.mean() + out.seg_logits["acdc"].logsumexp(1).mean()).backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.double().flatten() for p in m.parameters() if p.grad is not None]))
    a, b, _ = outs
    torch.testing.assert_close(a.restored, b.restored, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.seg_logits["acdc"], b.seg_logits["acdc"], rtol=1e-4, atol=1e-4)
    # fp32 summation order differs between layouts; measured ~9e-4 (NHWC) and ~3e-4 (NCHW) from float64
    errors = [((g - grads[2]).norm() / grads[2].norm()).item() for g in grads[:2]]
    assert max(errors) < 5e-3, errors


def test_grouped_seg_heads_keep_each_groups_outputs_exactly() -> None:
    """seg_head_groups: a composed model gives each label set exactly the logits of the model its head came
    from (same network), and refuses groups that do not cover the label sets once."""
    from napari_vldun.model.vldun import group_seg_heads

    a = build_model("tiny", seed=1, seg_decoder_width=16).eval()
    b = build_model("tiny", seed=2, seg_decoder_width=16).eval()
    b.load_state_dict({**b.state_dict(), **{k: v for k, v in a.state_dict().items() if not k.startswith("seg_head.")}})
    g = group_seg_heads(a, [(["acdc", "covid_ct"], a), (["brats2015"], b)])
    assert g.cfg.seg_head_groups == (("acdc", "covid_ct"), ("brats2015",))
    y = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        oa, ob, og = a(y), b(y), g(y)
    assert set(og.seg_logits) == set(a.cfg.label_sets)
    for k, v in og.seg_logits.items():
        ref = (ob if k == "brats2015" else oa).seg_logits[k]
        assert v.shape == ref.shape == (1, len(a.cfg.label_sets[k]), 64, 48)
        assert torch.equal(v, ref)
    assert not torch.equal(oa.seg_logits["brats2015"], ob.seg_logits["brats2015"])  # the heads do differ
    assert torch.equal(og.restored, oa.restored)
    # a grouped model round-trips through its config and can be a source itself
    again = group_seg_heads(g, [(["acdc"], g), (["brats2015", "covid_ct"], a)])
    with torch.no_grad():
        assert torch.equal(again(y).seg_logits["acdc"], oa.seg_logits["acdc"])
    with pytest.raises(ValueError, match="exactly once"):
        a.cfg.replace(seg_head_groups=(("acdc",), ("brats2015",)))
    with pytest.raises(ValueError, match="exactly once"):
        a.cfg.replace(seg_head_groups=(("acdc", "covid_ct"), ("brats2015", "acdc")))
    with pytest.raises(ValueError, match="differs from the base"):
        group_seg_heads(a, [(["acdc", "covid_ct", "brats2015"], build_model("tiny", seg_decoder_width=8))])
