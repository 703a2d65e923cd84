"""The vision-language prior's input view: native-scale tiles, GroupNorm towers, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vldun.model import build_model, get_config
from napari_vldun.model.config import ClipConfig, VLDUNConfig
from napari_vldun.model.priors import image_tiles

torch.set_num_threads(1)


def test_tiles_cover_the_image_edge_to_edge_at_native_scale() -> None:
    y = torch.arange(2 * 200 * 130, dtype=torch.float32).reshape(2, 1, 200, 130)
    t = image_tiles(y, 64, max_tiles=4)
    assert t.shape == (2, 4 * 3, 1, 64, 64)  # ceil(200/64)=4 rows, ceil(130/64)=3 columns
    torch.testing.assert_close(t[:, 0], y[..., :64, :64])
    torch.testing.assert_close(t[:, -1], y[..., -64:, -64:])
    torch.testing.assert_close(t[:, 1], y[..., :64, 33:97])  # columns 0, 33, 66
    assert image_tiles(torch.rand(1, 1, 512, 512), 64, max_tiles=4).shape[1] == 16  # capped


def test_tiles_upsample_a_side_shorter_than_the_tile() -> None:
    t = image_tiles(torch.rand(1, 1, 40, 100), 64, max_tiles=4)
    assert t.shape == (1, 2, 1, 64, 64)


def test_tiles_keep_the_noise_that_resizing_removes(acdc_slice: np.ndarray) -> None:
    """Pixel noise on a 256 px slice survives the tiles view and mostly vanishes when resized to 64 px."""
    clean = torch.from_numpy(acdc_slice[:256, :256].copy())[None, None]
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))

    def hf(x: torch.Tensor) -> float:  # mean absolute horizontal difference
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    tiles = [hf(image_tiles(v, 64, 4)) for v in (clean, noisy)]
    resized = [hf(F.interpolate(v, size=(64, 64), mode="bilinear", align_corners=False)) for v in (clean, noisy)]
    assert tiles[1] / tiles[0] > 2.0
    assert resized[1] / resized[0] < tiles[1] / tiles[0] / 2


def test_tiny_prior_tower_uses_group_norm_and_the_tiles_view() -> None:
    m = build_model("tiny", seed=0)
    assert m.cfg.clip.view == "tiles" and m.cfg.clip.norm == "group"
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.priors.visual.modules())
    y = torch.rand(3, 1, 150, 90, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.train()
        a = m.priors(y).degradation_logits
        m.eval()
        b = m.priors(y).degradation_logits
    torch.testing.assert_close(a, b)  # no batch statistics: training and inference agree
    with torch.no_grad():  # one image's prior does not depend on the rest of the batch
        torch.testing.assert_close(m.priors(y[:1]).degradation_logits, b[:1], rtol=1e-4, atol=1e-5)


def test_clip_config_rejects_unknown_view_and_norm() -> None:
    with pytest.raises(ValueError, match="view"):
        ClipConfig(view="crop")
    with pytest.raises(ValueError, match="norm"):
        ClipConfig(norm="layer")
    with pytest.raises(ValueError, match="max_tiles"):
        ClipConfig(max_tiles=0)


def test_a_config_saved_before_the_view_existed_keeps_the_resize_view() -> None:
    d = get_config("tiny").to_dict()
    for key in ("view", "max_tiles", "norm"):
        d["clip"].pop(key)
    d["clip"]["vision"] = {"layers": 2, "width": 96, "patch_size": 16, "head_width": 32}
    cfg = VLDUNConfig.from_dict(d)
    assert cfg.clip.view == "resize" and cfg.clip.norm == "batch"


def test_a_clip_override_merges_into_the_named_config() -> None:
    cfg = get_config("tiny", clip={"view": "resize", "norm": "batch"})
    assert cfg.clip.view == "resize" and cfg.clip.norm == "batch"
    assert cfg.clip.image_size == get_config("tiny").clip.image_size
    with pytest.raises(TypeError):
        get_config("tiny", clip={"viewport": "resize"})


def test_a_list_of_whole_slices_of_different_sizes_gets_each_slices_own_prior(acdc_slice, covid_slice) -> None:
    """The prior phase batches whole slices (what inference shows the tower) as a list: each one's embedding
    and logits are those it gets alone."""
    from napari_vldun.data.datasets import collate_slices

    m = build_model("tiny", seed=0).eval()
    ys = [torch.from_numpy(np.ascontiguousarray(a))[None] for a in (acdc_slice, covid_slice[:150, :97])]
    assert ys[0].shape != ys[1].shape
    with torch.no_grad():
        batch = m.priors(ys)
        for i, y in enumerate(ys):
            alone = m.priors(y[None])
            torch.testing.assert_close(batch.modality_logits[i], alone.modality_logits[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batch.tokens[i], alone.tokens[0], rtol=1e-4, atol=1e-5)
    out = collate_slices([{"degraded": y, "modality": torch.tensor(i)} for i, y in enumerate(ys)])
    assert isinstance(out["degraded"], list) and torch.equal(out["modality"], torch.tensor([0, 1]))
    same = collate_slices([{"degraded": ys[0]}, {"degraded": ys[0]}])["degraded"]
    assert isinstance(same, torch.Tensor) and same.shape == (2, *ys[0].shape)


def test_the_prior_phase_trains_on_whole_slices_unless_told_crop(tmp_path) -> None:
    """``prior_view``: "whole" (default) gives the prior datasets uncropped slices; "crop" the ``crop`` px windows
    of runs saved before the field existed; anything else is refused."""
    from napari_vldun.train.config import TrainConfig
    from napari_vldun.train.setup import _datasets

    base = dict(sources=["acdc"], prior_sources=["acdc", "spinalcord_mri"], crop=64, prior_epochs=1,
                val_max_slices=2, max_slices_per_source=4, out_dir=str(tmp_path))
    whole = _datasets(TrainConfig(**base), ["cardiac_mri", "spine_mri"], True)
    assert whole["prior"].crop is None and whole["prior_val"].crop is None
    shapes = {tuple(whole["prior"][i]["degraded"].shape) for i in range(len(whole["prior"]))}
    assert len(shapes) > 1 and max(s[-1] for s in shapes) > 64  # whole slices of their own sizes
    crop = _datasets(TrainConfig(**base, prior_view="crop"), ["cardiac_mri", "spine_mri"], True)
    assert crop["prior"].crop == 64
    with pytest.raises(ValueError, match="prior_view"):
        TrainConfig(**base, prior_view="tiles").validate()
