"""Compose a checkpoint whose segmentation head is one head per group of label sets (``seg_head_groups``),
each group's head taken from the checkpoint that segments it best; everything else from ``--base``.

    python scripts/compose_seg_heads.py OUT --base runs/v17/last \
        --group acdc,covid_ct=runs/v17/last --group brats2015=training/run19/last

The checkpoints must share the network (e.g. heads trained with ``train_only: ["seg_head"]`` on one frozen
network): :func:`napari_vldun.model.vldun.group_seg_heads` refuses configs that differ. Writes OUT.safetensors +
OUT.json (meta: the base's, plus ``composed_from``); refuses to overwrite.
"""

from __future__ import annotations

import argparse

from napari_vldun.model.checkpoint import load_checkpoint, save_checkpoint
from napari_vldun.model.vldun import group_seg_heads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--base", required=True, help="checkpoint of everything but the segmentation heads")
    p.add_argument("--group", action="append", required=True, metavar="NAMES=CHECKPOINT",
                   help="comma-separated label sets and the checkpoint whose head segments them")
    a = p.parse_args()
    base, meta = load_checkpoint(a.base)
    groups, provenance = [], []
    for g in a.group:
        names, _, path = g.partition("=")
        if not path:
            p.error(f"--group {g!r}: expected NAMES=CHECKPOINT")
        groups.append((names.split(","), load_checkpoint(path)[0]))
        provenance.append({"label_sets": groups[-1][0], "checkpoint": path})
    model = group_seg_heads(base, groups)
    save_checkpoint(model, a.out, {**meta, "composed_from": {"base": a.base, "seg_head_groups": provenance}},
                    overwrite=False)
    print(f"wrote {a.out}: seg_head_groups {[n for n, _ in groups]}")


if __name__ == "__main__":
    main()
