"""Accuracy of a checkpoint's vision-language priors on whole validation slices (inference conditions).

    python benchmarks/priors.py --weights src/napari_vldun/weights/vldun_tiny --threads 1
    python benchmarks/priors.py --weights runs/shipped/best --max-slices 16 --json out.json
    python benchmarks/priors.py --label-set-check   # also what "auto" picks on the labelled validation volumes

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


def label_set_check(weights: str, accel: float = 4.0) -> dict:
    """What :func:`~napari_vldun.inference.check_label_set` (the "auto" label set, 3 slices of a volume) says on
    every validation volume of the checkpoint's labelled sources, zero-filled at ``accel`` (Cartesian, COVID
    radial; seed = slice index): per source the volumes routed to their own label set without a warning, and
    the others with what the check said."""
    from napari_vldun.data.sources import volume_slices
    from napari_vldun.degradation.measurement import Measurement
    from napari_vldun.inference import check_label_set, load_model

    loaded = load_model(weights, "cpu")
    out = {}
    for src in loaded.model.cfg.label_sets:
        if src not in SOURCES:
            continue
        kind, n, misses = SOURCES[src].mask_kind, 0, []
        for name, img, _, _ in volume_slices(src, "val"):
            unit = np.clip(np.asarray(img, np.float32), 0, 1)
            zf = np.stack([Measurement.simulate(s, kind, accel, seed=i)[0] for i, s in enumerate(unit)])
            c = check_label_set(loaded, zf)
            n += 1
            if c.label_set != src or c.warning:
                misses.append({"volume": name, "label_set": c.label_set, "modality": c.modality,
                               "probability": round(c.probability, 3), "warning": c.warning})
        out[src] = {"volumes": n, "clean_routes": n - len(misses), "others": misses}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="src/napari_vldun/weights/vldun_tiny")
    p.add_argument("--max-slices", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--label-set-check", action="store_true",
                   help="also run the automatic label-set check on the labelled validation volumes at 4x")
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
    if a.label_set_check:
        r["label_set_check"] = label_set_check(a.weights)
        print("label-set check (\"auto\", 4x zero-filled validation volumes):")
        for src, c in r["label_set_check"].items():
            print(f"  {src}: {c['clean_routes']}/{c['volumes']} routed to {src} without a warning")
            for m in c["others"]:
                print(f"    {m['volume']}: {m['label_set']} ({m['modality']}, p = {m['probability']}): {m['warning']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
