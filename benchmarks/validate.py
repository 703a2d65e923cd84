"""A checkpoint's training-validation metrics, recomputed: the crops, masks and metrics a run of its training config
validates on (``train.setup.validation_dataset``, seeded by ``val_seed``), so checkpoints of different runs compare
on identical inputs.

    python benchmarks/validate.py --weights runs/shipped_c5/best --cascades 5 --threads 1

The training config is the one recorded in the checkpoint (``meta.train_config``) unless ``--config`` names
another; ``--cascades N`` runs N passes on every crop (as a training run with ``model_overrides.cascades`` N
validates), otherwise the checkpoint's defaults apply. Prints one JSON object: ``val_psnr``, ``val_ssim``,
``val_psnr_free``, ``val_dice[_<set>]``, ``val_iou[_<set>]``, ``zero_filled_psnr/ssim``, ``score``.
"""

from __future__ import annotations

import argparse
import json

import torch

from napari_vldun.model.checkpoint import load_checkpoint
from napari_vldun.train.config import TrainConfig
from napari_vldun.train.distributed import DistContext
from napari_vldun.train.setup import validation_dataset
from napari_vldun.train.validate import validate_joint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="checkpoint path (without suffix)")
    p.add_argument("--config", default=None, help="training config JSON (default: the checkpoint's own)")
    p.add_argument("--cascades", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, meta = load_checkpoint(a.weights, "cpu")
    if a.config:
        cfg = TrainConfig.from_file(a.config)
    elif meta.get("train_config"):
        cfg = TrainConfig.from_dict(meta["train_config"], source=f"{a.weights} (meta.train_config)")
    else:
        raise SystemExit(f"{a.weights}: no training config recorded; pass --config")
    if a.cascades is not None:  # every crop runs this many passes, as in a run with model_overrides.cascades
        model.cfg.cascades, model.cfg.cascades_by_mask = a.cascades, {}
    ds = validation_dataset(cfg, list(model.cfg.modalities))
    m = validate_joint(model, ds, DistContext(), cfg.batch_size, zero_filled=True,
                       data_consistency=cfg.data_consistency)
    print(json.dumps({k: round(float(v), 4) for k, v in m.items()}))


if __name__ == "__main__":
    main()
