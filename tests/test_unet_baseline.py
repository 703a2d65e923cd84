"""The plain U-Net baseline: it trains on real ACDC crops, round-trips its checkpoint, and `vldun evaluate
--unet` scores it on the same degraded slices as VL-DUN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.model.unet import UNet, UNetConfig, load_unet, save_unet
from napari_vldun.train.unet import UNetTrainConfig, iter_train_unet


def test_unet_shapes_and_checkpoint_round_trip(tmp_path) -> None:
    model = UNet(UNetConfig()).eval()
    y = torch.rand(1, 1, 70, 90)
    with torch.no_grad():
        out = model(y)
    assert out.shape == (1, 4, 70, 90)
    save_unet(model, tmp_path / "u")
    again, _ = load_unet(tmp_path / "u")
    with torch.no_grad():
        torch.testing.assert_close(again(y), out)
    (tmp_path / "v.json").write_text('{"kind": "vldun"}')
    with pytest.raises(ValueError, match="not a U-Net"):
        load_unet(tmp_path / "v")


def test_unet_training_lowers_its_loss_and_evaluate_adds_its_row(tmp_path, shared_data) -> None:
    from napari_vldun.evaluate.runner import UNET_ROW, Case, Evaluator
    from napari_vldun.data.sources import volume_slices
    from napari_vldun.inference import load_model

    cfg = UNetTrainConfig(out_dir=str(tmp_path), steps=24, crop=48, batch_size=4, widths=(8, 16, 32), lr=3e-3,
                          precision="fp32")
    events = list(iter_train_unet(cfg))
    losses = [e["loss"] for e in events]
    assert len(events) == 24 and "checkpoint" in events[-1]
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    unet, meta = load_unet(events[-1]["checkpoint"])
    assert meta["steps_done"] == 24
    case_name, vol, lab, _ = next(iter(volume_slices("acdc", "val")))
    z = int(np.argmax((lab > 0).sum((1, 2))))
    ev = Evaluator(load_model(None, "cpu"), {}, tv=False, tv_iters=1, tv_lambda=0.01, label_set=None,
                   cascades=1)
    ev.unet = unet
    ev.add(Case("acdc", f"{case_name}:{z}", vol[z], lab[z], "cartesian", "acdc"), 4.0, 0)
    rows = {r["method"]: r for r in ev.rows(4.0)}
    assert rows[UNET_ROW]["dice"] is not None and rows[UNET_ROW]["psnr"] is None
