"""Summarise `scripts/evaluate_checkpoint.sh` outputs: one line per row and folder (VL-DUN and zero-filled).

Usage: python scripts/summarize_eval.py OUT [OUT2 ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(dirs: list[str]) -> None:
    for d in dirs:
        print(f"## {d}")
        for f in sorted(Path(d).glob("*.json")):
            doc = json.loads(f.read_text())
            by_method = {r["method"]: r for r in doc["rows"] if r.get("dataset") != "average"}
            zf = next((r for m, r in by_method.items() if m.lower().startswith("zero")), None)
            net = next((r for m, r in by_method.items() if m.lower().replace("-", "").startswith("vldun")), None)
            if net is None:
                print(f"{f.stem}: no VL-DUN row ({sorted(by_method)})")
                continue
            gain = "" if zf is None or zf.get("psnr") is None else f" ({net['psnr'] - zf['psnr']:+.2f} over zero-filled)"
            mono = net.get("stages_monotone")
            print(f"{f.stem}: PSNR {net['psnr']:.2f} dB{gain}, Dice {net.get('dice')}, whole {net.get('dice_whole')}, "
                  f"per class {net.get('dice_per_class')}, per volume {net.get('dice_volume')}, monotone {mono}, "
                  f"n {net.get('n_slices')}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])
