"""PSNR against the number of data-consistent cascades, on *training* slices (so that choosing the
checkpoint's ``cascades`` never looks at the validation splits).

    python benchmarks/cascades.py --weights runs/shipped_dc/best --dataset acdc brats2015 covid_ct \\
        --slices 12 --cascades 1 2 3 4 5 --threads 1

For each dataset, ``--slices`` whole training slices evenly spread over the split, degraded at ``--accel`` with the
dataset's mask kind (slice j uses seed 1000 + j); rows: the zero-filled input, the network without k-space
("free") and with data consistency over N cascades. PSNR in dB on [0, 1] images, mean over slices.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from napari_vldun.data.sources import SOURCES, volume_slices
from napari_vldun.degradation import measure, undersample
from napari_vldun.evaluate.metrics import psnr
from napari_vldun.evaluate.runner import make_mask
from napari_vldun.inference import load_model, predict


def sweep(weights: str | None, dataset: str, slices: int, cascades: list[int], accel: float) -> dict:
    loaded = load_model(weights, "cpu")
    kind = SOURCES[dataset].mask_kind
    items = [vol[z] for _, vol, _, _ in volume_slices(dataset, "train", None) for z in range(vol.shape[0])]
    items = [items[i] for i in np.unique(np.linspace(0, len(items) - 1, slices).round().astype(int))]
    scores: dict[str, list[float]] = {}
    for j, clean in enumerate(items):
        mask = make_mask(kind, clean.shape, accel, 1000 + j)
        k, m = measure(clean, mask).numpy()[None], mask.numpy()
        zf = np.asarray(undersample(clean, mask), np.float32)
        scores.setdefault("zero-filled", []).append(psnr(np.clip(zf, 0, 1), clean))
        scores.setdefault("free", []).append(psnr(predict(loaded, zf).restored[0], clean))
        for c in cascades:
            r = predict(loaded, zf, kspace=k, mask=m, cascades=c).restored[0]
            scores.setdefault(f"cascades={c}", []).append(psnr(r, clean))
    return {"dataset": dataset, "mask": kind, "accel": accel, "slices": len(items),
            "psnr": {name: round(float(np.mean(v)), 2) for name, v in scores.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint (default: the shipped one)")
    p.add_argument("--dataset", nargs="+", default=["acdc"])
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--cascades", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for ds in a.dataset:
        rows.append(sweep(a.weights, ds, a.slices, a.cascades, a.accel))
        print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"weights": a.weights or "shipped", "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
