"""Accuracy of a checkpoint's vision-language priors on whole validation slices (inference conditions).

    python benchmarks/priors.py --weights src/napari_vldun/weights/vldun_tiny --threads 1
    python benchmarks/priors.py --weights runs/shipped/best --max-slices 16 --json out.json

Every validation slice of the checkpoint's prior-phase sources (its ``train_config``; evenly spaced, at most ``--max-slices`` per source,
uncropped) gets one degradation class drawn uniformly and applied with the seeded primitives of
``SliceDataset(mode="prior")``. Reports top-1 accuracy, balanced accuracy (mean recall over the
classes present) and the confusion matrices (rows: truth, columns: prediction).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from napari_vldun.data import SOURCES, SliceDataset
from napari_vldun.model.checkpoint import load_checkpoint

def _scores(conf: np.ndarray) -> dict:
    present = conf.sum(1) > 0
    recall = np.diag(conf)[present] / conf.sum(1)[present]
    return {"accuracy": round(float(np.trace(conf) / conf.sum()), 4),
            "balanced_accuracy": round(float(recall.mean()), 4), "confusion": conf.tolist()}


def measure(weights: str, max_slices: int, seed: int = 0) -> dict:
    model, meta = load_checkpoint(weights)
    cfg = model.cfg
    if not cfg.use_priors:
        raise SystemExit(f"{weights}: a model without CLIP priors has nothing to measure")
    tc = meta.get("train_config") or {}
    sources = [s for s in (tc.get("prior_sources") or tc.get("sources") or list(SOURCES))
               if s in SOURCES and SOURCES[s].modality in cfg.modalities]
    ds = SliceDataset(sources, "val", crop=None, mode="prior", modalities=list(cfg.modalities),
                      max_slices_per_source=max_slices, augment=False, seed=seed)
    mod = np.zeros((len(cfg.modalities),) * 2, dtype=np.int64)
    deg = np.zeros((len(cfg.degradations),) * 2, dtype=np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            out = model.priors(s["degraded"][None])
            mod[int(s["modality"]), int(out.modality_logits.argmax(1))] += 1
            deg[int(s["degradation"]), int(out.degradation_logits.argmax(1))] += 1
    return {"weights": weights, "slices": len(ds), "sources": sources, "max_slices_per_source": max_slices,
            "modalities": list(cfg.modalities), "degradations": list(cfg.degradations),
            "modality": _scores(mod), "degradation": _scores(deg),
            "chance": {"modality": round(1 / len(cfg.modalities), 4),
                       "degradation": round(1 / len(cfg.degradations), 4)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="src/napari_vldun/weights/vldun_tiny")
    p.add_argument("--max-slices", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the result to this file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    r = measure(a.weights, a.max_slices)
    for key in ("modality", "degradation"):
        names = r["modalities"] if key == "modality" else r["degradations"]
        print(f"{key}: accuracy {r[key]['accuracy']:.3f}, balanced {r[key]['balanced_accuracy']:.3f} "
              f"(chance {r['chance'][key]:.3f}, {r['slices']} slices)")
        w = max(len(n) for n in names)
        for n, row in zip(names, r[key]["confusion"]):
            print(f"  {n:>{w}} " + " ".join(f"{v:3d}" for v in row))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
