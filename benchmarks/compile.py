"""Does ``torch.compile`` (inductor, CPU C++ backend) speed up the shipped model's forward? Eager vs compiled.

    python benchmarks/compile.py                       # shipped weights, 256x256, 1 thread, channels-last
    python benchmarks/compile.py --layout nchw         # the same with NCHW weights (the path before 2026-12-03)
    python benchmarks/compile.py --package --precision bf16  # the package's path: compiled_copy vs eager, bf16

Compiles every unfolding stage and the segmentation head (``nn.Module.compile``, ``dynamic=False``); the prior
tower stays eager (its open_clip code is a small share of the time). Inductor's attention-fusion pattern fails on
the scan's broadcast matmuls in torch 2.14 (``RuntimeError: Attempting to broadcast a dimension of length 2``),
so the compile runs with ``pattern_matcher`` off. ``--package`` compiles through the package's own
:func:`napari_vldun.model.compiled.compiled_copy` (NCHW copy) against the eager channels-last model. Prints the compile time (first call), the median eager and
compiled forward time (no grad, one pass, no k-space), the largest difference of the restored image and of
the segmentation logits, and the lowest share of pixels (over the label sets) whose label agrees. Needs a C++ compiler.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def _median_time(fn, y: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(y)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--package", action="store_true", help="compiled_copy (the --compile path) vs the eager model")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from napari_vldun.inference import load_model
    from napari_vldun.model.compiled import COMPILE_OPTIONS, compiled_copy
    from napari_vldun.model.precision import autocast
    from napari_vldun.model.unfolding import UnfoldingStage

    from model import to_layout  # benchmarks/model.py (this folder is on sys.path when run as a script)

    if a.package:
        eager = load_model(device="cpu").model.eval()
        compiled = compiled_copy(eager)
        a.layout = "nhwc eager / nchw compiled"
    else:
        eager = to_layout(load_model(device="cpu").model.eval(), a.layout)
        compiled = copy.deepcopy(eager)
        for mod in compiled.modules():
            if isinstance(mod, UnfoldingStage):
                mod.compile(dynamic=False, options=COMPILE_OPTIONS)
        if compiled.seg_head is not None:
            compiled.seg_head.compile(dynamic=False, options=COMPILE_OPTIONS)
    y = torch.rand(1, 1, a.size, a.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), autocast("cpu", a.precision):
        ref = eager(y)
        t = time.perf_counter()
        out = compiled(y)
        compile_s = time.perf_counter() - t
        eager_s, compiled_s = [], []
        for _ in range(2):  # interleaved: the machine is shared
            eager_s.append(_median_time(eager, y, a.repeats))
            compiled_s.append(_median_time(compiled, y, a.repeats))
    rec_diff = (out.restored.float() - ref.restored.float()).abs().max().item()
    logit_diff = max((out.seg_logits[k].float() - ref.seg_logits[k].float()).abs().max().item() for k in ref.seg_logits)
    agree = min((out.seg_logits[k].argmax(1) == ref.seg_logits[k].argmax(1)).float().mean().item()
                for k in ref.seg_logits)
    row = {"size": a.size, "threads": a.threads, "layout": a.layout, "precision": a.precision, "compile_s": round(compile_s, 1),
           "eager_s": round(min(eager_s), 4), "compiled_s": round(min(compiled_s), 4),
           "speedup": round(min(eager_s) / min(compiled_s), 3), "restored_max_abs_diff": rec_diff,
           "logits_max_abs_diff": logit_diff, "label_agreement": round(agree, 5), "torch": torch.__version__}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
