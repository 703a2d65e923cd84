"""Training: config files, the event loop, checkpoints, resume/stop, the runner and 2-process DDP.

Real data (ACDC + COVID-19 CT slices from shared/data), the tiny model, crop 48, a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import numpy as np
import torch

from napari_vldun.train import (RunExistsError, TrainConfig, fit_batch, iter_train, train_from_file)
from napari_vldun.train.losses import JointLoss

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _need_data(shared_data):
    """Every test here reads the real data (skipped when shared/data is absent)."""


def small(out_dir, **kw) -> TrainConfig:
    base = dict(model="tiny", sources=["acdc", "covid_ct"], crop=48, batch_size=2, epochs=1, steps_per_epoch=3,
                max_slices_per_source=8, val_max_slices=1, out_dir=str(out_dir), device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- config
def test_config_files(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"_comment": "ignored", "sources": ["acdc"], "crop": 64,
                             "model_overrides": {"use_priors": False}}))
    cfg = TrainConfig.from_file(j)
    assert cfg.crop == 64 and cfg.model_overrides == {"use_priors": False}
    assert cfg.resolved_val_sources() == ["acdc"] and cfg.lambda_seg == 0.5 and cfg.stage_weight == 0.1
    t = tmp_path / "c.toml"
    t.write_text('sources = ["acdc", "totalseg_ct"]\nepochs = 3\n[model_overrides]\nfreq_decoupling = false\n')
    cfg = TrainConfig.from_file(t)
    assert cfg.epochs == 3 and cfg.model_overrides == {"freq_decoupling": False}
    assert cfg.resolved_val_sources() == ["acdc"]  # labelled sources only
    j.write_text(json.dumps({"sources": ["acdc"], "learning_rate": 1, "bogus": 2}))
    with pytest.raises(ValueError, match="bogus.*learning_rate|learning_rate.*bogus"):
        TrainConfig.from_file(j)
    j.write_text(json.dumps({"sources": ["nope"]}))
    with pytest.raises(ValueError, match="nope"):
        TrainConfig.from_file(j)
    j.write_text(json.dumps({"sources": ["acdc"], "rec_weight": -1}))
    with pytest.raises(ValueError, match="rec_weight must be >= 0"):
        TrainConfig.from_file(j)
    for name in ("tiny_acdc.json", "shipped.json", "ablation_acdc.json"):
        shipped = TrainConfig.from_file(REPO / "configs" / name)
        assert shipped.model == "tiny"
    for key in ("prior_balance", "joint_balance"):
        j.write_text(json.dumps({"sources": ["acdc"], key: "patient"}))
        with pytest.raises(ValueError, match=key):
            TrainConfig.from_file(j)
    j.write_text(json.dumps({"sources": ["acdc", "covid_ct"], "joint_balance": {"acdc": 2, "brats2015": 1}}))
    with pytest.raises(ValueError, match="joint_balance.*not sources: \\['brats2015'\\]"):
        TrainConfig.from_file(j)
    j.write_text(json.dumps({"sources": ["acdc"], "rec_loss": "ssim"}))
    with pytest.raises(ValueError, match="rec_loss must be one of"):
        TrainConfig.from_file(j)
    shipped = TrainConfig.from_file(REPO / "configs" / "shipped.json")
    assert (shipped.rec_weight, shipped.prior_balance) == (2.0, "modality")  # as the shipped run


# ----------------------------------------------------------------------------- events, checkpoints
def test_iter_train_events_and_checkpoints(tmp_path, acdc_slice):
    from napari_vldun.model.checkpoint import load_checkpoint

    cfg = small(tmp_path / "run", prior_epochs=1, prior_steps_per_epoch=1, steps_per_epoch=2, val_max_slices=2)
    events = list(iter_train(cfg))
    kinds = [e.kind for e in events]
    assert kinds == ["start", "step", "epoch", "checkpoint",                    # prior phase
                     "step", "step", "epoch", "checkpoint", "checkpoint", "done"]  # joint phase
    assert [e.phase for e in events[1:4]] == ["prior"] * 3
    assert events[1].metrics.keys() >= {"modality", "degradation", "loss", "samples_per_s"}
    step = events[4]
    assert step.phase == "joint" and step.step == 2 and step.total_steps == 3 and step.epoch == 1
    assert step.metrics.keys() >= {"rec", "stage", "seg", "loss", "lr", "samples_per_s"}
    assert all(torch.isfinite(torch.tensor(e.metrics["loss"])) for e in events if e.kind == "step")
    joint_epoch = events[6].metrics
    for k in ("val_psnr", "val_ssim", "val_dice", "val_iou", "zero_filled_psnr", "zero_filled_ssim", "score"):
        assert k in joint_epoch, k
    assert "val_modality_acc" in events[2].metrics
    ckpts = {e.metrics["name"]: e.checkpoint for e in events if e.kind == "checkpoint"}
    assert set(ckpts) == {"last", "best"}
    done = events[-1]
    assert done.metrics["best"] == str(tmp_path / "run" / "best") and done.model is not None
    for f in ("last.safetensors", "last.json", "last.state.safetensors", "last.state.json",
              "best.safetensors", "best.json"):
        assert (tmp_path / "run" / f).is_file(), f
    assert not list((tmp_path / "run").glob("*.pt")) and not list((tmp_path / "run").glob("*.pkl"))

    model, meta = load_checkpoint(tmp_path / "run" / "best")
    assert meta["train_config"]["sources"] == ["acdc", "covid_ct"]
    assert meta["label_sets"]["acdc"]["classes"][1] == "RV cavity"
    assert meta["label_sets"]["covid_ct"]["colors"][1].startswith("#")
    assert "CC BY-NC-SA" in meta["data_sources"]["acdc"]
    assert meta["val_metrics"]["val_psnr"] == joint_epoch["val_psnr"] and meta["wall_s"] > 0
    assert list(model.cfg.modalities) == ["cardiac_mri", "lung_ct"]
    assert set(model.cfg.label_sets) == {"acdc", "covid_ct"}
    y = torch.from_numpy(acdc_slice[:64, :64].copy())[None, None]
    with torch.no_grad():
        out = model(y)
    assert out.restored.shape == y.shape and out.seg_logits["acdc"].shape == (1, 4, 64, 64)
    last, _ = load_checkpoint(tmp_path / "run" / "last")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values()))


def test_balance_options_reach_the_training_sets_only(tmp_path):
    from napari_vldun.train.setup import _datasets, _modalities_of

    cfg = small(tmp_path / "run", joint_balance="source", prior_epochs=1, max_slices_per_source=None)
    ds = _datasets(cfg, _modalities_of(cfg.sources), with_prior=True)
    assert (ds["train"].balance, ds["prior"].balance) == ("source", "modality")
    assert ds["val"].balance is None and ds["prior_val"].balance is None
    covid = np.mean([ds["train"].item_info(i)["source"] == "covid_ct" for i in range(len(ds["train"]))])
    assert 0.3 < covid < 0.7  # half of the positions, though COVID has a fraction of ACDC's slices


def test_validation_inputs_do_not_follow_the_run_seed(tmp_path):
    """Runs with different seeds validate on the same degraded inputs (their figures compare); ``val_seed``
    changes them, and the training draws still follow ``seed``."""
    from napari_vldun.train.setup import _datasets, _modalities_of

    def sets(**kw):
        cfg = small(tmp_path / "run", prior_epochs=1, **kw)
        return _datasets(cfg, _modalities_of(cfg.sources), with_prior=True)

    a, b, c = sets(seed=0), sets(seed=7), sets(seed=0, val_seed=3)
    for key in ("val", "prior_val"):
        assert torch.equal(a[key][0]["degraded"], b[key][0]["degraded"])
        assert not torch.equal(a[key][0]["degraded"], c[key][0]["degraded"])
    assert not torch.equal(a["train"][0]["degraded"], b["train"][0]["degraded"])


def test_validation_dataset_is_the_one_a_run_validates_on(tmp_path):
    """``validation_dataset`` (benchmarks/validate.py) rebuilds a run's joint validation set input for input."""
    from napari_vldun.train.setup import _datasets, _modalities_of, validation_dataset

    cfg = small(tmp_path / "run", seed=5)
    mods = _modalities_of(cfg.sources)
    run_val, rebuilt = _datasets(cfg, mods, with_prior=False)["val"], validation_dataset(cfg, mods)
    assert len(rebuilt) == len(run_val) > 0
    for i in (0, len(run_val) - 1):
        a, b = run_val[i], rebuilt[i]
        assert torch.equal(a["degraded"], b["degraded"]) and torch.equal(a["clean"], b["clean"])


def test_joint_phase_keeps_the_fine_tuned_priors(tmp_path):
    """Stage 2 trains the prior-token projection, not the stage-1 tower, classifier or similarity scale."""
    from napari_vldun.model.checkpoint import load_checkpoint

    cfg = small(tmp_path / "run", prior_epochs=1, prior_steps_per_epoch=1, steps_per_epoch=2)
    after_prior = None
    for e in iter_train(cfg):
        if e.kind == "checkpoint" and e.phase == "prior" and after_prior is None:
            after_prior = {k: v.clone() for k, v in load_checkpoint(e.checkpoint)[0].priors.state_dict().items()}
        if e.kind == "done":
            final = e.model.priors.state_dict()
    kept = [k for k in final if k.startswith(("visual.", "classifier.")) or k == "logit_scale"]
    assert len(kept) > 10
    for k in kept:
        torch.testing.assert_close(final[k], after_prior[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(final["project.weight"], after_prior["project.weight"])


def test_overfits_one_batch():
    """The joint loss goes down when the tiny model trains on one fixed real batch."""
    from napari_vldun.data import SliceDataset
    from napari_vldun.model import build_model

    ds = SliceDataset(["acdc"], "val", crop=48, max_slices_per_source=12, fixed_accel=4.0, seed=3)
    items = [it for it in (ds[i] for i in range(len(ds))) if (it["label"] > 0).sum() > 50][:2]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("clean", "degraded", "label", "has_label",
                                                               "label_set_index", "modality", "degradation")}
    assert bool(batch["has_label"].all()) and (batch["label"] > 0).any()
    model = build_model("tiny", seed=0, use_priors=False, modalities=("cardiac_mri",),
                        label_sets={"acdc": ["bg", "rv", "myo", "lv"]})
    losses = fit_batch(model, batch, JointLoss(ds.label_sets), steps=15, lr=2e-3)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert min(losses[-3:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("config", ["tiny", "tiny_v1", "tiny+mask_steps"])
@pytest.mark.parametrize("data_consistency", [True, False])
def test_every_trainable_parameter_gets_a_gradient_each_step(config: str, data_consistency: bool):
    """What lets DDP run without ``find_unused_parameters``: with the loop's zero-weighted touch of every
    output and trainable parameter, one joint step on a batch of one label set gives every parameter a
    gradient, the other label sets' heads included, and the mask-kind step factors on a step without
    k-space; without the touch those get none (so the check can fail; run 30 stopped on that in DDP)."""
    from napari_vldun.data import SliceDataset
    from napari_vldun.model import build_model
    from napari_vldun.train.loop import _touch
    from napari_vldun.train.validate import measured

    ds = SliceDataset(["acdc"], "val", crop=32, max_slices_per_source=2, fixed_accel=4.0, seed=3)
    items = [ds[0], ds[1]]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}
    sets = {"acdc": ["bg", "rv", "myo", "lv"], "brats2015": ["bg", "a", "b", "c", "d"], "covid_ct": ["bg", "inf"]}
    name, _, extra = config.partition("+")
    kw = {"pass_step_sizes": 3, "mask_step_sizes": True} if extra else {}
    model = build_model(name, seed=0, label_sets=sets, **kw)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = JointLoss(list(sets), 1.5, 0.5)
    for touch in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(batch["degraded"], return_stages=True, **measured(batch, data_consistency))
        (loss(out, batch)["total"] + (_touch(out, params) if touch else 0)).backward()
        missing = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
        if touch:
            assert not missing
        else:
            assert missing and all(".brats2015." in n or ".covid_ct." in n or n == "mask_steps" for n in missing), missing
            assert ("mask_steps" in missing) == (bool(extra) and not data_consistency)


# ----------------------------------------------------------------------------- resume / stop / overwrite
def test_reproducible_stop_and_exact_resume(tmp_path):
    a = [e.metrics["loss"] for e in iter_train(small(tmp_path / "a")) if e.kind == "step"]
    assert len(a) == 3

    stop = threading.Event()
    b, kinds = [], []
    for e in iter_train(small(tmp_path / "b"), stop=stop):
        kinds.append(e.kind)
        if e.kind == "step":
            b.append(e.metrics["loss"])
            if e.step == 2:
                stop.set()
    assert kinds == ["start", "step", "step", "stopped"]
    assert b == a[:2]  # same config -> identical losses
    run_b = tmp_path / "b"
    assert (run_b / "last.json").is_file() and not (run_b / "best.json").exists()
    state = json.loads((run_b / "last.state.json").read_text())
    assert state["position"] == {"phase": "joint", "epoch": 0, "epoch_step": 2, "phase_step": 2, "global_step": 2}

    # a fresh start there is refused; resuming continues at step 3 with the uninterrupted run's loss
    with pytest.raises(RunExistsError, match="resume"):
        next(iter(iter_train(small(run_b))))
    resumed = list(iter_train(small(run_b), resume=True))
    assert resumed[0].kind == "start" and resumed[0].metrics["resumed_from_step"] == 2
    steps = [e for e in resumed if e.kind == "step"]
    assert [e.step for e in steps] == [3] and [e.metrics["loss"] for e in steps] == a[2:]
    assert resumed[-1].kind == "done" and (run_b / "best.json").is_file()

    # changing a fixed field is refused on resume
    with pytest.raises(ValueError, match="crop"):
        next(iter(iter_train(small(run_b, crop=32), resume=True)))
    with pytest.raises(FileNotFoundError):
        next(iter(iter_train(small(tmp_path / "empty"), resume=True)))


def test_close_generator_keeps_last_and_overwrite(tmp_path):
    cfg = small(tmp_path / "c", steps_per_epoch=2, model_overrides={"use_priors": False})
    gen = iter_train(cfg)
    for e in gen:
        if e.kind == "step":
            break
    gen.close()  # like a GUI closing the worker: `last` is written
    state = json.loads((tmp_path / "c" / "last.state.json").read_text())
    assert state["position"]["global_step"] == 1
    gen = iter_train(cfg.replace(overwrite=True))
    assert next(gen).kind == "start"  # allowed, and the previous run's files are gone
    gen.close()
    assert not (tmp_path / "c" / "last.json").exists()


def test_start_from_checkpoint_with_more_cascades(tmp_path):
    """A run may start from a checkpoint and train it with another number of data-consistent passes
    (the shipped run 4), forgetting its per-mask-kind counts; overrides that would change the architecture
    are refused by name."""
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import read_checkpoint_config, save_checkpoint

    start = tmp_path / "start"
    save_checkpoint(build_model("tiny", use_priors=False, cascades_by_mask={"radial": 3}), start)
    cfg = small(tmp_path / "c2", model=str(start), model_overrides={"cascades": 2}, epochs=1, steps_per_epoch=1)
    events = list(iter_train(cfg))
    assert events[-1].kind == "done"
    trained = read_checkpoint_config(tmp_path / "c2" / "last")[0]
    assert trained.cascades == 2
    assert trained.cascades_by_mask == {}  # chosen for the old weights: cleared, to be chosen again
    assert read_checkpoint_config(start)[0].cascades == 1  # the starting checkpoint is not touched
    with pytest.raises(ValueError, match="widths"):
        next(iter(iter_train(small(tmp_path / "w", model=str(start), model_overrides={"widths": [8, 16, 32]}))))


# ----------------------------------------------------------------------------- runner (CLI)
def test_train_from_file_summary(tmp_path, capsys):
    summary = train_from_file(REPO / "configs" / "tiny_acdc.json", out_dir=tmp_path / "r", progress=False,
                              overrides={"crop": 48, "batch_size": 2, "epochs": 1, "steps_per_epoch": 1,
                                         "prior_epochs": 0, "max_slices_per_source": 4, "val_max_slices": 1,
                                         "model_overrides": {"use_priors": False}})
    assert summary["best"] == str(tmp_path / "r" / "best") and summary["last"] == str(tmp_path / "r" / "last")
    assert summary["epochs"] == 1 and summary["steps"] == 1 and not summary["stopped"]
    assert "val_psnr" in summary["metrics"] and summary["wall_s"] > 0
    out = capsys.readouterr().out
    assert "joint epoch 1/1" in out and "val_psnr=" in out


def test_runner_stop_and_sigint(tmp_path):
    import signal

    from napari_vldun.train.runner import _SigintToStop, run_training

    stop = threading.Event()
    stop.set()  # as if Ctrl-C came during the first step
    cfg = small(tmp_path / "s", model_overrides={"use_priors": False}, max_slices_per_source=4)
    summary = run_training(cfg, progress=False, verbose=False, stop=stop)
    assert summary["stopped"] and summary["steps"] == 1 and summary["last"] == str(tmp_path / "s" / "last")
    assert (tmp_path / "s" / "last.state.json").is_file()

    stop = threading.Event()
    with _SigintToStop(stop, lambda msg: None):
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop after the current step
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):  # second Ctrl-C: abort
            os.kill(os.getpid(), signal.SIGINT)


# ----------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "_ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        assert f"rank {r}: start step step epoch checkpoint checkpoint done" in proc.stdout
    sums = [(out / f"params_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1] and len(sums[0]) == 64
    # every rank reports the same (all-reduced) validation metrics
    assert (out / "metrics_rank0.txt").read_text() == (out / "metrics_rank1.txt").read_text()
    # one checkpoint set, written by rank 0 only, equal to the ranks' parameters
    files = sorted(p.name for p in out.iterdir() if not p.name.endswith(".txt"))
    assert files == ["best.json", "best.manifest.json", "best.safetensors", "last.json", "last.manifest.json",
                     "last.safetensors", "last.state.json", "last.state.safetensors"]
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from _ddp_worker import checksum
    finally:
        sys.path.pop(0)
    from napari_vldun.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(out / "last")
    assert checksum(model) == sums[0] and meta["world_size"] == 2 and meta["global_step"] == 2


def test_data_consistency_in_training_and_validation(tmp_path):
    """New runs train and validate with the samples' measured k-space; runs saved before the option
    existed resume without it; validation with it scores the same model higher (a projection)."""
    from napari_vldun.data import SliceDataset
    from napari_vldun.model import build_model
    from napari_vldun.train.distributed import DistContext
    from napari_vldun.train.setup import _check_resume_config
    from napari_vldun.train.validate import validate_joint

    assert TrainConfig().data_consistency
    legacy = {k: v for k, v in small(tmp_path).to_dict().items() if k not in ("data_consistency", "free_weight")}
    _check_resume_config(small(tmp_path, data_consistency=False, free_weight=0.0), legacy, tmp_path)
    with pytest.raises(ValueError, match="data_consistency"):
        _check_resume_config(small(tmp_path), legacy, tmp_path)
    ds = SliceDataset(["acdc"], "val", crop=48, max_slices_per_source=3, fixed_accel=4.0)
    model = build_model("tiny", seed=0)
    ctx = DistContext()
    off = validate_joint(model, ds, ctx, 3, zero_filled=True)
    on = validate_joint(model, ds, ctx, 3, zero_filled=True, data_consistency=True)
    assert on["val_psnr"] > off["val_psnr"] + 0.5 and on["zero_filled_psnr"] == off["zero_filled_psnr"]
    # the estimate before data consistency is the network's output without k-space
    assert on["val_psnr_free"] == pytest.approx(off["val_psnr"], abs=1e-4) and "val_psnr_free" not in off
    legacy_free = {**legacy, "data_consistency": True}
    with pytest.raises(ValueError, match="free_weight"):
        _check_resume_config(small(tmp_path), legacy_free, tmp_path)


def test_init_weights_warm_starts_a_new_architecture(tmp_path):
    """``init_weights`` copies every tensor of a checkpoint that the new model has with the same shape (a run
    10 checkpoint into the ``stage_feedback`` model) and refuses a checkpoint of another shape."""
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint
    from napari_vldun.train.setup import _named_model

    old = build_model("tiny", seed=7, stage_feedback=False)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.01)
    save_checkpoint(old, tmp_path / "old")
    heads = {k: list(v) for k, v in old.cfg.label_sets.items()}
    with pytest.warns(UserWarning, match="keep their initialisation"):
        new = _named_model(small(tmp_path, init_weights=str(tmp_path / "old")), list(old.cfg.modalities), heads,
                           dict(old.cfg.label_colors))
    own, src = new.state_dict(), old.state_dict()
    assert new.cfg.stage_feedback
    assert all(torch.equal(own[k], v) for k, v in src.items())
    assert all(torch.count_nonzero(own[k]) == 0 for k in own if k.startswith("feedback."))
    save_checkpoint(build_model("tiny", seed=0, widths=(8, 16, 32)), tmp_path / "other")
    with pytest.raises(ValueError, match="tensors match"):
        _named_model(small(tmp_path, init_weights=str(tmp_path / "other")), list(old.cfg.modalities), heads, {})


def test_train_only_trains_the_named_parameters_alone(tmp_path):
    """``train_only: ["seg_head"]`` fine-tunes the segmentation head on a frozen network: after a few joint steps
    every other tensor is bitwise the initial one, the head's changed; a prefix that names nothing is refused."""
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint

    save_checkpoint(build_model("tiny", seed=3, seg_unet_widths=(8, 16, 32, 64)), tmp_path / "init")
    cfg = small(tmp_path / "run", init_weights=str(tmp_path / "init"), train_only=["seg_head"],
                model_overrides={"seg_unet_widths": [8, 16, 32, 64]}, lr=1e-2)
    init = build_model("tiny", seed=3, seg_unet_widths=(8, 16, 32, 64)).state_dict()
    final = next(e for e in iter_train(cfg) if e.kind == "done").model.state_dict()
    head = [k for k in final if k.startswith("seg_head.")]
    assert len(head) > 20 and len(final) - len(head) > 100
    for k, v in final.items():
        if not k.startswith("seg_head."):
            torch.testing.assert_close(v, init[k], rtol=0, atol=0, msg=k)
    assert sum(not torch.equal(final[k], init[k]) for k in head) > len(head) // 2
    with pytest.raises(ValueError, match="train_only"):
        next(e for e in iter_train(small(tmp_path / "bad", train_only=["no_such_module"])) if e.kind == "done")
    # in the prior phase too: a linear probe of the modality (the classifier alone, the tower frozen)
    cfg = small(tmp_path / "probe", init_weights=str(tmp_path / "init"), train_only=["priors.classifier"],
                model_overrides={"seg_unet_widths": [8, 16, 32, 64]}, prior_epochs=1, prior_steps_per_epoch=3,
                epochs=0, prior_lr=1e-2)
    final = next(e for e in iter_train(cfg) if e.kind == "done").model.state_dict()
    probe = [k for k in final if k.startswith("priors.classifier.")]
    assert probe and all(not torch.equal(final[k], init[k]) for k in probe)
    for k, v in final.items():
        if k not in probe:
            torch.testing.assert_close(v, init[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="train_only must be a list"):
        small(tmp_path / "bad", train_only=[3]).validate()
    one = small(tmp_path / "one", train_only="seg_head")
    one.validate()
    assert one.train_only == ["seg_head"]  # a bare string is one prefix, not one per character


def test_training_one_group_of_seg_heads_keeps_the_other_label_sets_exactly(tmp_path):
    """``seg_head_groups`` + ``train_only: ["seg_head.heads.0"]`` on a subset of the sources (ACDC only): the run
    keeps its init checkpoint's other label sets (BraTS, COVID), their head is bitwise unchanged, ACDC's learns."""
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint

    groups = [["acdc"], ["brats2015", "covid_ct"]]
    kw = dict(seg_decoder_width=8, seg_head_groups=tuple(tuple(g) for g in groups))
    save_checkpoint(build_model("tiny", seed=3, **kw), tmp_path / "init")
    init = build_model("tiny", seed=3, **kw).state_dict()
    cfg = small(tmp_path / "run", sources=["acdc"], init_weights=str(tmp_path / "init"),
                train_only=["seg_head.heads.0"], lr=1e-2,
                model_overrides={"seg_decoder_width": 8, "seg_head_groups": groups})
    model = next(e for e in iter_train(cfg) if e.kind == "done").model
    assert list(model.cfg.label_sets) == ["acdc", "brats2015", "covid_ct"]
    final = model.state_dict()
    assert set(final) == set(init)
    for k, v in final.items():
        if not k.startswith("seg_head.heads.0."):
            torch.testing.assert_close(v, init[k], rtol=0, atol=0, msg=k)
    mine = [k for k in final if k.startswith("seg_head.heads.0.")]
    assert sum(not torch.equal(final[k], init[k]) for k in mine) > len(mine) // 2


def test_dc_fraction_draws_the_same_steps_on_every_rank(tmp_path):
    """``dc_fraction``: a share of joint steps trains without k-space, drawn from (seed, step) only."""
    from types import SimpleNamespace

    from napari_vldun.train.loop import Trainer

    with pytest.raises(ValueError, match="dc_fraction"):
        small(tmp_path, dc_fraction=1.5).validate()

    def draws(cfg, n=400):
        t = SimpleNamespace(cfg=cfg, pos=SimpleNamespace(global_step=0))
        out = []
        for s in range(n):
            t.pos.global_step = s
            out.append(Trainer._dc_step(t))
        return out

    half = draws(small(tmp_path, dc_fraction=0.5))
    assert 0.4 < np.mean(half) < 0.6 and half == draws(small(tmp_path, dc_fraction=0.5))
    assert all(draws(small(tmp_path), 20)) and not any(draws(small(tmp_path, data_consistency=False), 20))
    assert half != draws(small(tmp_path, dc_fraction=0.5, seed=1))


def test_init_weights_keeps_the_checkpoint_modality_classifier(tmp_path):
    """A run without a prior phase that starts from a checkpoint trained on more modalities keeps its
    modality list and copies its classifier (run 17 restarted a 3-class classifier from run 16's 6-class one)."""
    from napari_vldun.model import build_model
    from napari_vldun.model.checkpoint import save_checkpoint
    from napari_vldun.train.setup import _fresh_modalities, _named_model

    six = ("abdomen_ct", "abdomen_mri", "brain_mri", "cardiac_mri", "lung_ct", "spine_mri")
    src = build_model("tiny", seed=1, modalities=six)
    save_checkpoint(src, tmp_path / "six")
    cfg = small(tmp_path / "run", init_weights=str(tmp_path / "six"), prior_epochs=0)
    mods = _fresh_modalities(cfg, ["acdc", "covid_ct"])
    assert mods == list(six)
    heads = {k: list(v) for k, v in src.cfg.label_sets.items()}
    model = _named_model(cfg, mods, heads, dict(src.cfg.label_colors))
    own, ref = model.state_dict(), src.state_dict()
    cls = [k for k in ref if k.startswith("priors.") and ref[k].ndim and ref[k].shape[0] == len(six)]
    assert cls and all(torch.equal(own[k], ref[k]) for k in cls)
    # without a checkpoint: the training, validation and configured prior sources' modalities
    cfg = small(tmp_path / "run", prior_epochs=0, prior_sources=["acdc", "brats2015"])
    assert _fresh_modalities(cfg, ["acdc", "covid_ct"]) == ["brain_mri", "cardiac_mri", "lung_ct"]
    # a checkpoint that lacks a modality of the data: the data's list (its classifier cannot be copied)
    save_checkpoint(build_model("tiny", seed=1, modalities=("cardiac_mri",)), tmp_path / "one")
    cfg = small(tmp_path / "run", init_weights=str(tmp_path / "one"))
    assert _fresh_modalities(cfg, ["acdc", "covid_ct"]) == ["cardiac_mri", "lung_ct"]
