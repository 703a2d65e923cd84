"""Restore-then-segment: a U-Net segmentation head on the restored image alone (``seg_head_kinds``
``"image_unet"``), trained on restored slices drawn once from a frozen checkpoint (``vldun cache-restored`` ->
``train-unet --restored``) and attached to that checkpoint (``attach_unet_head``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.model.config import SegHeadKind
from napari_vldun.model.unet import UNet, UNetConfig, load_unet
from napari_vldun.model.vldun import attach_unet_head, build_model
from napari_vldun.train.restored import RestoredSliceDataset, cache_restored, capture_seg_input


def _grouped(seed: int):
    return build_model("tiny", seed=seed, seg_decoder_width=8,
                       seg_head_groups=(("acdc", "covid_ct"), ("brats2015",))).eval()


def test_seg_head_kinds_are_checked() -> None:
    base = _grouped(0).cfg
    ok = base.replace(seg_head_kinds=("decoder", "image_unet"), seg_unet_widths=(8, 16))
    assert [ok.seg_head_kind(j) for j in range(2)] == [SegHeadKind.DECODER, SegHeadKind.IMAGE_UNET]
    assert base.seg_head_kind(1) is SegHeadKind.DECODER  # no kinds given: from seg_decoder_width
    with pytest.raises(ValueError, match="unknown"):
        base.replace(seg_head_kinds=("decoder", "resnet"))
    with pytest.raises(ValueError, match="one kind per"):
        base.replace(seg_head_kinds=("decoder",))
    with pytest.raises(ValueError, match="needs seg_unet_widths"):
        base.replace(seg_head_kinds=("decoder", "image_unet"))
    with pytest.raises(ValueError, match="must be of"):
        base.replace(seg_head_kinds=("light", "decoder"))


def test_attached_unet_segments_the_restored_image_and_leaves_the_other_heads_alone(tmp_path) -> None:
    from napari_vldun.model.checkpoint import load_checkpoint, save_checkpoint

    base = _grouped(1)
    unet = UNet(UNetConfig(widths=(8, 16, 32))).eval()
    model = attach_unet_head(base, unet)
    assert model.cfg.seg_head_groups == (("acdc",), ("covid_ct",), ("brats2015",))
    assert model.cfg.seg_head_kinds == ("image_unet", "decoder", "decoder")
    save_checkpoint(model, tmp_path / "m")
    model = load_checkpoint(tmp_path / "m")[0]  # the new kinds round-trip through the JSON config
    y = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    k = torch.fft.fftshift(torch.fft.fft2(y), dim=(-2, -1))
    m = (torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        seen, unhook = capture_seg_input(model)
        out = model(y, kspace=k * m, mask=m)
        unhook()
        ref = base(y, kspace=k * m, mask=m)
        direct = unet(seen[0])
    assert torch.equal(out.restored, ref.restored)
    for name in ("covid_ct", "brats2015"):  # unchanged, bit for bit
        assert torch.equal(out.seg_logits[name], ref.seg_logits[name])
    # the ACDC logits are the U-Net's on the image the head receives: the restored, data-consistent estimate
    torch.testing.assert_close(seen[0], ref.restored.to(seen[0].dtype))
    # (the model's weights are channels-last, the U-Net's not: fp32 sums in another order, measured 4e-5)
    torch.testing.assert_close(out.seg_logits["acdc"], direct, rtol=1e-3, atol=2e-4)
    with pytest.raises(ValueError, match="classes differ"):
        attach_unet_head(base, UNet(UNetConfig(widths=(8, 16), classes=["background", "heart"])))


def test_cached_restored_slices_train_a_unet_head(tmp_path) -> None:
    """Real ACDC training slices through the shipped checkpoint: the cache holds the seg head's input, crops
    centred on labels, and a few train-unet steps on it from a given start lower the loss."""
    from napari_vldun.train.unet import UNetTrainConfig, iter_train_unet
    from napari_vldun.model.unet import save_unet
    from napari_vldun.train.restored import RestoreDraw

    from napari_vldun.inference import SHIPPED_WEIGHTS

    weights = SHIPPED_WEIGHTS
    draws = (RestoreDraw((4.0, 4.0), True), RestoreDraw((4.0, 4.0), False))
    events = list(cache_restored(weights, tmp_path / "cache", draws=draws, max_slices=3, seed=5))
    assert events[-1]["path"].endswith("restored-0.safetensors")
    ds = RestoredSliceDataset(tmp_path / "cache", crop=64, seed=0, foreground_oversample=1.0)
    assert len(ds) == 6 and [e["kspace"] for e in ds.entries[:2]] == [True, False]
    assert all(e["accel"] == 4.0 for e in ds.entries)
    # the k-space draw restores better than the magnitude-only one of the same slice (data consistency)
    from napari_vldun.data import SliceDataset
    clean = SliceDataset(["acdc"], "train", crop=None, augment=False).clean_pair(ds.entries[0]["slice"])[0]
    err = [float(np.mean((ds.images[j] - clean) ** 2)) for j in (0, 1)]
    assert ds.images[0].shape == clean.shape and err[0] < err[1]
    item = ds[0]
    assert item["degraded"].shape == (1, 64, 64) and item["label"].max() > 0  # centred on the heart
    start = UNet(UNetConfig(widths=(8, 16, 32)))
    save_unet(start, tmp_path / "start" / "unet")
    cfg = UNetTrainConfig(out_dir=str(tmp_path / "head"), steps=20, crop=64, batch_size=4, widths=(8, 16, 32),
                          lr=3e-3, precision="fp32", restored=str(tmp_path / "cache"),
                          init=str(tmp_path / "start" / "unet"))
    events = list(iter_train_unet(cfg))
    losses = [e["loss"] for e in events]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    head, meta = load_unet(events[-1]["checkpoint"])
    assert meta["train_config"]["restored"] == str(tmp_path / "cache")
    bad = UNetTrainConfig(out_dir=str(tmp_path / "bad"), steps=1, widths=(8, 16), restored=cfg.restored,
                          init=cfg.init)
    with pytest.raises(ValueError, match="differs"):
        next(iter_train_unet(bad))
