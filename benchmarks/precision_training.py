"""The short seeded training of ``tests/test_learning.py`` (``short_run``: tiny, ACDC crops of 64 px, batch 4,
2 x 80 steps) in fp32 and in bf16, one after the other in one process, on one thread: the epoch metrics of each
and the samples/s of their training steps.

    python benchmarks/precision_training.py [--precisions fp32 bf16] [--epochs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning import short_run  # noqa: E402  (the test's own config: one definition of the run)

from napari_vldun.train import iter_train  # noqa: E402
from napari_vldun.train.loop import EventKind  # noqa: E402

KEYS = ("val_psnr", "val_psnr_free", "val_dice_acdc", "train_seg", "samples_per_s", "epoch_time_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json", help="also write the result to this file")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = {"threads": 1, "epochs": a.epochs, "runs": {}}
    for prec in a.precisions:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = short_run(Path(tmp) / "run", precision=prec, epochs=a.epochs)
            epochs = [e.metrics for e in iter_train(cfg) if e.kind == EventKind.EPOCH]
        out["runs"][prec] = [{k: round(float(m[k]), 4) for k in KEYS if k in m} for m in epochs]
        for i, m in enumerate(out["runs"][prec], 1):
            print(f"{prec} epoch {i}: " + ", ".join(f"{k} {v}" for k, v in m.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
