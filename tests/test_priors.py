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
