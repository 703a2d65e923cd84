"""Restore-then-segment: a checkpoint whose segmentation head for one label set is a plain U-Net on the restored
image (kind ``image_unet``), everything else from ``--base``.

    vldun cache-restored --weights training/run32/last --out runs/rcache34          # the restored training slices
    vldun train-unet --restored runs/rcache34 --init training/unet33/unet --out runs/rts34 --steps 20000
    python scripts/attach_unet_head.py OUT --base training/run32/last --unet runs/rts34/unet

:func:`napari_vldun.model.vldun.attach_unet_head` moves the U-Net's label set into a group of its own; the other
label sets keep their heads, so their outputs do not change. Writes OUT.safetensors + OUT.json (meta: the base's,
plus ``composed_from``; the postprocessing rules of the base's label sets stay as they were); refuses to overwrite.
"""

from __future__ import annotations

import argparse

from napari_vldun.model.checkpoint import load_checkpoint, save_checkpoint
from napari_vldun.model.unet import load_unet
from napari_vldun.model.vldun import attach_unet_head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--base", required=True, help="the VL-DUN checkpoint prefix")
    p.add_argument("--unet", required=True, help="the U-Net checkpoint prefix (train-unet's OUT/unet)")
    a = p.parse_args()
    base, meta = load_checkpoint(a.base)
    unet, unet_meta = load_unet(a.unet)
    model = attach_unet_head(base, unet)
    provenance = {"base": a.base, "unet": a.unet, "label_set": unet.cfg.label_set,
                  "unet_train_config": unet_meta.get("train_config")}
    save_checkpoint(model, a.out, {**meta, "composed_from": provenance}, overwrite=False)
    print(f"wrote {a.out}: seg_head_groups {[list(g) for g in model.cfg.seg_head_groups]}, "
          f"kinds {list(model.cfg.seg_head_kinds)}")


if __name__ == "__main__":
    main()
