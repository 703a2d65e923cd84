"""Worker of the data-parallel test: ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/_ddp_worker.py OUT_DIR``. Trains the tiny model for 2 steps and writes, per rank, a SHA-256
checksum of its final parameters to ``OUT_DIR/params_rank<R>.txt``."""

from __future__ import annotations

import hashlib
import os
import sys

import torch


def checksum(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    from napari_vldun.train import TrainConfig, iter_train

    cfg = TrainConfig(model="tiny", model_overrides={"use_priors": False}, sources=["acdc"], crop=48,
                      batch_size=2, epochs=1, steps_per_epoch=2, max_slices_per_source=8, val_max_slices=3,
                      out_dir=out_dir, device="cpu", seed=1)
    rank = int(os.environ["RANK"])
    kinds = []
    for ev in iter_train(cfg):
        kinds.append(ev.kind)
        if ev.kind == "epoch":
            with open(os.path.join(out_dir, f"metrics_rank{rank}.txt"), "w") as f:
                f.write(repr(sorted((k, v) for k, v in ev.metrics.items() if k.startswith("val_"))))
        if ev.kind == "done":
            with open(os.path.join(out_dir, f"params_rank{rank}.txt"), "w") as f:
                f.write(checksum(ev.model))
    print(f"rank {rank}: {' '.join(kinds)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
