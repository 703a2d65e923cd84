"""The network learns its job on real data at a tiny budget: a short seeded run of the current recipe on ACDC
crops lowers the segmentation loss and segments the heart above a fixed bar. The first release's recipe
(uniform 64 px crops, most of which miss the heart) only started to segment after ~600 steps (docs/history.md,
"Ablations"), so it fails this bar at 160. Measured: 2026-12-01 (run 10's network, bf16): validation Dice 0.079
after epoch 1 and 0.18 after epoch 2. 2026-12-02 with stage feedback (the current ``tiny``; fp32 through
``precision="auto"`` on an AVX2-only CPU, ~2.5 min): Dice 0.0 after epoch 1 and 0.104 after epoch 2 -- feedback
learns segmentation more slowly in the first 160 steps (it segments better at run 11's budget, BENCHMARKS.md);
PSNR with k-space 26.86 dB vs 25.65 zero-filled; without k-space 25.34 -> 25.64 dB. 2026-12-03 (AVX512-bf16 CPU,
1 thread, ~65 s, ``python benchmarks/precision_training.py``): fp32 Dice 0.0 -> 0.110, PSNR 26.87 dB; bf16 (what ``precision="auto"`` picks on such a CPU)
Dice 0.0 -> 0.030, PSNR 26.86 dB: at 160 steps segmentation is at its onset, where rounding decides how soon it
starts. The run is pinned to fp32 so that the bar means the same on every CPU (0.104 on AVX2, 0.110 on AVX512);
bf16 vs fp32 training at a longer budget is left to the speed issue."""

from __future__ import annotations

import pytest

from napari_vldun.train import TrainConfig, iter_train

#: validation Dice of ACDC crops after the short run below must pass this (measured 0.104 with stage feedback,
#: 0.18 without; the first release's recipe: ~0 at this budget). Lowered from 0.12 on 2026-12-02, see above.
DICE_BAR = 0.08


@pytest.fixture(autouse=True)
def _need_data(shared_data):
    """Reads the real ACDC slices (skipped when shared/data is absent)."""


def short_run(out_dir, **kw) -> TrainConfig:
    base = dict(model="tiny", sources=["acdc"], crop=64, val_crop=96, batch_size=4, epochs=2, steps_per_epoch=80,
                val_max_slices=12, lr=2e-3, warmup_steps=10, min_lr_ratio=0.1, rec_weight=3.0, free_weight=1.0,
                lambda_seg=1.0, stage_weight=0.5, stage_monotone=1.0, foreground_oversample=0.9,
                intensity_augment=True, precision="fp32", data_consistency=True, out_dir=str(out_dir),
                device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_short_training_learns_to_segment_and_restore(tmp_path) -> None:
    events = list(iter_train(short_run(tmp_path / "run")))
    epochs = [e.metrics for e in events if e.kind == "epoch"]
    first, last = epochs[0], epochs[-1]
    assert last["train_seg"] < first["train_seg"]
    assert last["val_dice_acdc"] > DICE_BAR, last["val_dice_acdc"]
    assert last["val_dice_acdc"] > first["val_dice_acdc"] + 0.05
    # restoration: the data-consistent estimate beats its input clearly; the k-space-free one improves
    assert last["val_psnr"] > first["zero_filled_psnr"] + 0.5
    assert last["val_psnr_free"] > first["val_psnr_free"] + 0.2
