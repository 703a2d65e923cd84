"""The shipped weights on the bundled ACDC sample (10 slices, 256 x 224): PSNR gain over the input, Dice and wall
time of ``predict_file`` with and without the recorded k-space, on slices 2-5 (what
``tests/test_inference.py::test_shipped_checkpoint_recognises_and_segments_the_acdc_sample`` runs) and on all 10.

    python benchmarks/sample_volume.py [--threads 1] [--weights PATH] [--json]

The sample's files are cut with nibabel's slicer and its recorded k-space alike; the checkpoint's pass count is
used with k-space. Times include writing the outputs, not loading the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_inference import cut_acdc_sample  # noqa: E402  (the golden test's own cut: one definition)

from napari_vldun.inference import load_model  # noqa: E402
from napari_vldun.pipeline import predict_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="a checkpoint (default: the shipped weights)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.weights, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cut in (slice(2, 6), slice(0, 10)):
            folder = Path(tmp) / f"z{cut.start}-{cut.stop}"
            folder.mkdir()
            measured = cut_acdc_sample(folder, cut)
            for input_name, kspace in (("magnitude only", None), ("k-space", measured)):
                t = time.perf_counter()
                r = predict_file(folder / "degraded.nii.gz", folder / input_name.replace(" ", "_"),
                                 labels=folder / "labels.nii.gz", clean=folder / "clean.nii.gz", loaded=loaded,
                                 progress=False, kspace=kspace)
                m = r["metrics"]
                rows.append({"slices": f"{cut.start}-{cut.stop - 1}", "input": input_name, "passes": r["cascades"],
                             "psnr_input": round(m["psnr_input"], 2), "psnr": round(m["psnr"], 2),
                             "gain_db": round(m["psnr"] - m["psnr_input"], 2), "dice": round(m["dice"], 3),
                             "wall_s": round(time.perf_counter() - t, 2)})
    if args.json:
        print(json.dumps({"threads": args.threads, "weights": args.weights or "shipped", "rows": rows}))
        return
    print(f"threads={args.threads} weights={args.weights or 'shipped'}")
    for r in rows:
        print(f"slices {r['slices']:>4}  {r['input']:14}  {r['passes']} pass(es)  {r['psnr_input']:.2f} -> "
              f"{r['psnr']:.2f} dB ({r['gain_db']:+.2f})  Dice {r['dice']:.3f}  {r['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
