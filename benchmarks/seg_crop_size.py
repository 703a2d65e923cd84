"""Does a checkpoint's segmentation depend on the input's size? Dice on clean validation slices, full slice vs
crops centred on the labelled structures (the training crops are 128 px).

    python benchmarks/seg_crop_size.py training/run19/last training/run21/last [--dataset acdc] [--slices 40]

Clean images (no degradation, no k-space), evenly spaced validation slices that hold labels; prints one line per
input size with each checkpoint's mean Dice: whole tumour (any label) for BraTS, mean over the classes present
otherwise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_vldun.evaluate.runner import dataset_cases
from napari_vldun.data.sources import SOURCES
from napari_vldun.metrics import dice, whole_dice
from napari_vldun.model.checkpoint import load_checkpoint


def _crop(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(lab > 0)
    y0 = min(max(int(ys.mean()) - size // 2, 0), img.shape[0] - size)
    x0 = min(max(int(xs.mean()) - size // 2, 0), img.shape[1] - size)
    return img[y0:y0 + size, x0:x0 + size], lab[y0:y0 + size, x0:x0 + size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+")
    p.add_argument("--dataset", default="brats2015", choices=["brats2015", "acdc", "covid_ct"])
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 160, 128], help="0: the full slice")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    label_set = SOURCES[args.dataset].label_set
    cases = [c for c in dataset_cases([args.dataset]) if (c.label > 0).any()]
    cases = [cases[i] for i in np.linspace(0, len(cases) - 1, args.slices).round().astype(int)]
    models = {w: load_checkpoint(w)[0] for w in args.weights}
    n_classes = len(next(iter(models.values())).cfg.label_sets[label_set])
    for size in args.sizes:
        scores: dict[str, list[float]] = {w: [] for w in models}
        for c in cases:
            img, lab = _crop(c.clean, c.label, size) if size else (c.clean, c.label)
            y = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
            for w, m in models.items():
                with torch.no_grad():
                    pred = m(y).seg_logits[label_set].argmax(1)[0].numpy()
                scores[w].append(whole_dice(pred, lab) if args.dataset == "brats2015" else dice(pred, lab, n_classes))
        name = f"crop {size}" if size else "full slice"
        print(f"{name}: " + ", ".join(f"{w} {np.nanmean(v):.3f}" for w, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
