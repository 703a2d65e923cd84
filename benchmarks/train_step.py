"""Samples per second of one joint training step, the first release's path and the current one, back to back.

    python benchmarks/train_step.py --json                # 1 thread, batch 4, crop 96, 5 repeats each
    python benchmarks/train_step.py --paths old new --batch 4 --crop 96 --threads 1

``old``: the first release's shipped recipe (``tiny_v1``: full-resolution U, LayerNorm Phi^T, 5 weight-shared
passes with data consistency, fp32). ``new``: the current ``tiny`` (half-resolution U, stage images with data
consistency after every stage, 1 pass, bf16 autocast). Both: AdamW, the joint loss with stage supervision,
real ACDC crops (``../shared/data``). One process: compare the ratio, not the absolute rate (the machine is
shared). Add ``--paths new_fp32`` to separate the bf16 gain from the architecture's, ``new_nchw`` to separate
the channels-last weights' gain (the model's default layout since 2026-12-03), and ``shipped`` / ``shipped_nchw``
for the recipe of the shipped weights (``tiny`` + the segmentation decoder, 3 passes). ``old`` runs NCHW, as
the first release did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from napari_vldun.data import SliceDataset
from napari_vldun.model import build_model
from napari_vldun.model.precision import autocast
from napari_vldun.train.losses import JointLoss
from napari_vldun.train.validate import measured

from model import to_layout  # benchmarks/model.py (this folder is on sys.path when run as a script)

PATHS = {  # name -> (config, passes, precision, weight layout, config overrides)
    "old": ("tiny_v1", 5, "fp32", "nchw", {}),
    "new": ("tiny", 1, "bf16", "nhwc", {}),
    "new_fp32": ("tiny", 1, "fp32", "nhwc", {}),
    "new_nchw": ("tiny", 1, "bf16", "nchw", {}),
    "shipped": ("tiny", 3, "bf16", "nhwc", {"seg_decoder_width": 48}),
    "shipped_nchw": ("tiny", 3, "bf16", "nchw", {"seg_decoder_width": 48}),
    "shipped_fp32": ("tiny", 3, "fp32", "nhwc", {"seg_decoder_width": 48}),
}


def batch_of(crop: int, batch: int) -> dict:
    ds = SliceDataset(["acdc"], "train", crop=crop, seed=0, foreground_oversample=0.67)
    items = [ds[i] for i in range(batch)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def time_path(name: str, batch: dict, repeats: int) -> dict:
    config, passes, precision, layout, overrides = PATHS[name]
    model = build_model(config, cascades=passes, label_sets={"acdc": ["bg", "rv", "myo", "lv"]}, **overrides)
    model = to_layout(model, layout).train()
    loss_fn = JointLoss(["acdc"], rec_weight=3.0, free_weight=1.0, stage_weight=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        with autocast("cpu", precision):
            out = model(batch["degraded"], return_stages=True, **measured(batch))
        total = loss_fn(out, batch)["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if r:  # the first step warms up
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    n = batch["degraded"].shape[0]
    return {"path": name, "config": config, "passes": passes, "precision": precision, "layout": layout,
            "step_s": round(s, 3), "samples_per_s": round(n / s, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paths", nargs="+", default=["old", "new"], choices=sorted(PATHS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    batch = batch_of(a.crop, a.batch)
    rows = [time_path(name, batch, a.repeats) for name in a.paths]
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup_vs_first"] = round(r["samples_per_s"] / base, 2)
    doc = {"threads": a.threads, "batch": a.batch, "crop": a.crop, "torch": torch.__version__, "rows": rows}
    if a.json:
        print(json.dumps(doc))
        return
    print(f"threads={a.threads} batch={a.batch} crop={a.crop}")
    for r in rows:
        print(f"{r['path']:12} {r['config']:8} passes={r['passes']} {r['precision']} {r['layout']}: {r['step_s']:.3f} s/step, "
              f"{r['samples_per_s']:.2f} samples/s, x{r['speedup_vs_first']}")


if __name__ == "__main__":
    main()
