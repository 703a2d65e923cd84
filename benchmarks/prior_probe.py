"""Which view should the prior phase train on? A linear probe of the modality on a checkpoint's frozen CLIP embeddings.

    python benchmarks/prior_probe.py [--weights W] [--threads 1]

Embeds (1) whole training slices of the checkpoint's prior sources (evenly spaced, at most 120 per source, one seeded
degradation each, no augmentation), (2) 1,200 augmented ``--crop`` px training crops drawn as the prior phase with
``prior_view: "crop"`` draws them (modality-balanced), and (3) whole validation slices (at most 16 per source,
the slices of ``benchmarks/priors.py``). Fits a class-weighted logistic regression (LBFGS, 500 iterations) on (1)
or (2) at a few L2 weights and prints its top-1 accuracy on (3). The tower's tiles span the whole slice at
inference, so a probe fit on crops sees other embeddings than it is scored on (BENCHMARKS.md "Run 32 and 33").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from napari_vldun.data import SliceDataset
from napari_vldun.model.checkpoint import load_checkpoint


def embed(model, ds, items) -> tuple[torch.Tensor, torch.Tensor]:
    f, m = [], []
    with torch.no_grad():
        for i in items:
            s = ds[int(i)]
            f.append(model.priors.encode(s["degraded"][None])[0])
            m.append(int(s["modality"]))
    return torch.stack(f), torch.tensor(m)


def probe_accuracy(ft, mt, fv, mv, n_classes: int, weight_decay: float) -> float:
    lin = torch.nn.Linear(ft.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500)
    cw = 1.0 / torch.bincount(mt, minlength=n_classes).clamp(min=1).float()
    cw = cw / cw.sum() * n_classes

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(ft), mt, weight=cw) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(fv).argmax(1) == mv).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="src/napari_vldun/weights/vldun_tiny")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, meta = load_checkpoint(a.weights)
    model.eval()
    mods = list(model.cfg.modalities)
    sources = (meta.get("train_config") or {}).get("prior_sources")
    if not sources:
        raise SystemExit(f"{a.weights}: its training config names no prior sources")
    whole = SliceDataset(sources, "train", crop=None, mode="prior", modalities=mods, max_slices_per_source=120,
                         augment=False, seed=3)
    crops = SliceDataset(sources, "train", crop=a.crop, mode="prior", modalities=mods, balance="modality", seed=5)
    val = SliceDataset(sources, "val", crop=None, mode="prior", modalities=mods, max_slices_per_source=16,
                       augment=False, seed=0)
    fv, mv = embed(model, val, range(len(val)))
    fits = {"whole training slices": embed(model, whole, range(len(whole))),
            f"{a.crop} px training crops": embed(model, crops, np.random.default_rng(0).integers(0, len(crops), 1200))}
    print(f"{a.weights}: linear modality probe on frozen embeddings, {len(val)} whole validation slices, "
          f"threads={a.threads}")
    for name, (ft, mt) in fits.items():
        accs = {wd: probe_accuracy(ft, mt, fv, mv, len(mods), wd) for wd in (0.0, 1e-3, 1e-2)}
        print(f"  fit on {len(mt)} {name}: validation accuracy "
              + ", ".join(f"{acc:.3f} (L2 {wd:g})" for wd, acc in accs.items()))


if __name__ == "__main__":
    main()
