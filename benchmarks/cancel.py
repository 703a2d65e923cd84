"""How long a cancel takes to stop inference: the shipped weights on the bundled ACDC sample's first slice
(256 x 224) with its recorded k-space and the checkpoint's passes, one thread.

    python benchmarks/cancel.py [--delays 2.0 3.3 4.6] [--threads 1]

For each delay, inference runs in a thread with :func:`napari_vldun._widgets._workers.interrupt_on` (what the
docks' Cancel uses); the cancel event is set after ``delay`` seconds, and the time until the run stops is
printed (the interrupt is checked before every unfolding stage).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch

from napari_vldun._widgets._workers import JobCancelled, interrupt_on
from napari_vldun.inference import iter_predict, load_model
from napari_vldun.io import read_image
from napari_vldun.pipeline import list_samples, sample_measurement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delays", type=float, nargs="+", default=[2.0, 3.3, 4.6])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(device="cpu")
    s = list_samples()["acdc"]
    deg = read_image(f"{s['dir']}/degraded.nii.gz").data[:1]
    meas = sample_measurement("acdc").slice(0)
    rows = []
    for delay in args.delays:
        ev, out = threading.Event(), {}

        def run() -> None:
            try:
                list(iter_predict(loaded, deg, measurement=meas, interrupt=interrupt_on(ev)))
            except JobCancelled:
                out["t"] = time.perf_counter()

        th = threading.Thread(target=run)
        th.start()
        time.sleep(delay)
        t0 = time.perf_counter()
        ev.set()
        th.join()
        latency = out["t"] - t0 if "t" in out else None  # None: the slice ended before the cancel
        rows.append({"delay_s": delay, "stopped_after_s": None if latency is None else round(latency, 3)})
        print(f"cancel after {delay:.1f} s: " + ("finished first" if latency is None else f"stopped {latency:.2f} s later"))
    print(json.dumps({"threads": args.threads, "shape": list(deg.shape[1:]), "runs": rows}))


if __name__ == "__main__":
    main()
