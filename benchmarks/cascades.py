"""PSNR and Dice against the number of data-consistent cascades, on *training* slices (so that choosing the
checkpoint's ``cascades`` never looks at the validation splits).

    python benchmarks/cascades.py --weights runs/shipped_dc/best --dataset acdc brats2015 covid_ct \\
        --slices 12 --cascades 1 2 3 4 5 --threads 1

For each dataset, ``--slices`` whole training slices evenly spread over the split, degraded at ``--accel`` with the
dataset's mask kind (slice j uses seed 1000 + j); rows: the zero-filled input, the network without k-space
("free"), with data consistency over N cascades, and (Dice only) the network segmenting the clean slice ("clean").
PSNR in dB on [0, 1] images, mean over slices; Dice with the dataset's label set (mean over the foreground classes
present), averaged over the slices with foreground.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from napari_vldun.data.sources import SOURCES, volume_slices
from napari_vldun.degradation.measurement import Measurement
from napari_vldun.metrics import dice, psnr
from napari_vldun.inference import load_model, predict


def sweep(weights: str | None, dataset: str, slices: int, cascades: list[int], accel: float) -> dict:
    loaded = load_model(weights, "cpu")
    kind = SOURCES[dataset].mask_kind
    items = [(vol[z], None if lab is None else lab[z])
             for _, vol, lab, _ in volume_slices(dataset, "train", None) for z in range(vol.shape[0])]
    items = [items[i] for i in np.unique(np.linspace(0, len(items) - 1, slices).round().astype(int))]
    label_set = dataset if dataset in loaded.model.cfg.label_sets else None
    n_classes = len(loaded.model.cfg.label_sets[label_set]) if label_set else 0
    scores: dict[str, list[float]] = {}
    dices: dict[str, list[float]] = {}

    def add_dice(name: str, labels: np.ndarray | None, true: np.ndarray | None) -> None:
        if label_set and labels is not None and true is not None and true.any():
            dices.setdefault(name, []).append(dice(labels[0], true, n_classes))

    for j, (clean, true) in enumerate(items):
        zf, meas = Measurement.simulate(clean, kind, accel, seed=1000 + j)
        scores.setdefault("zero-filled", []).append(psnr(np.clip(zf, 0, 1), clean))
        add_dice("clean", predict(loaded, clean, label_set=label_set).labels, true)
        free = predict(loaded, zf, label_set=label_set)
        scores.setdefault("free", []).append(psnr(free.restored[0], clean))
        add_dice("free", free.labels, true)
        for c in cascades:
            r = predict(loaded, zf, label_set=label_set, measurement=meas, cascades=c)
            scores.setdefault(f"cascades={c}", []).append(psnr(r.restored[0], clean))
            add_dice(f"cascades={c}", r.labels, true)
    return {"dataset": dataset, "mask": kind, "accel": accel, "slices": len(items),
            "psnr": {name: round(float(np.mean(v)), 2) for name, v in scores.items()},
            "dice": {name: round(float(np.mean(v)), 4) for name, v in dices.items()}}


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
