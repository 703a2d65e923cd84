"""Rows of the reliability matrix (RELIABILITY.md): corrupt checkpoints, strict JSON, symlinks,
permissions, checks before compute, one-line errors, nothing partial left behind, small edge cases.

Inputs are 2 x 64 x 64 crops of the bundled ACDC sample (real cine MRI), so every run is fast."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vldun.cli import main
from napari_vldun.inference import InferenceError, LoadedModel, Progress, load_model, predict
from napari_vldun.io import OutputPathError, read_image, read_label, write_nifti, write_png
from napari_vldun.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from napari_vldun.pipeline import degrade_file, list_samples, predict_file

OUTPUTS = ("restored.nii.gz", "labels.nii.gz", "overview.png", "metrics.json")
CROP = (slice(4, 6), slice(96, 160), slice(80, 144))  # two slices through the heart


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 2 x 64 x 64 crop of the ACDC sample: degraded image, clean image, labels."""
    s = list_samples()["acdc"]
    d = tmp_path_factory.mktemp("small")
    paths = {}
    for key in ("degraded", "clean", "labels"):
        src = Path(s["dir"]) / s["files"][key]
        arr = read_label(src) if key == "labels" else read_image(src).data
        paths[key] = write_nifti(np.ascontiguousarray(arr[CROP]), d / f"{key}.nii.gz")
    return paths


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_model(device="cpu")


def _no_compute(monkeypatch) -> None:
    """Make any run of the network fail the test: checks must come before compute."""
    def boom(*a, **k):
        raise AssertionError("the network ran before the inputs/outputs were checked")
    monkeypatch.setattr("napari_vldun.pipeline.iter_predict", boom)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ row 1: corrupt checkpoint, strict JSON
def _nan_checkpoint(tmp_path: Path, shipped: LoadedModel, with_checksum: bool) -> tuple[Path, str]:
    """The shipped model with one weight flipped to NaN; saved with our writer, or (an old-style
    checkpoint) as bare safetensors next to a copy of the shipped JSON, which has no checksum."""
    from safetensors.torch import save_file

    from napari_vldun.inference import SHIPPED_WEIGHTS

    state = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1 and "text" not in k)
    state[name].view(-1)[0] = float("nan")
    base = tmp_path / "flipped"
    if with_checksum:
        model = load_model(device="cpu").model
        model.load_state_dict(state)
        save_checkpoint(model, base)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(base) + ".safetensors")
        doc = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
        doc.pop("weights_sha256", None)  # written before checksums existed
        Path(str(base) + ".json").write_text(json.dumps(doc))
    return base, name


@pytest.mark.parametrize("with_checksum", [False, True])
def test_nan_weight_checkpoint_is_refused_naming_file_and_tensor(tmp_path, shipped, with_checksum) -> None:
    base, name = _nan_checkpoint(tmp_path, shipped, with_checksum)
    with pytest.raises(CheckpointError, match="NaN") as info:
        load_checkpoint(base)
    assert "flipped.safetensors" in str(info.value) and repr(name) in str(info.value)


def test_predict_with_nan_checkpoint_exits_nonzero_and_writes_nothing(tmp_path, shipped, small, capsys) -> None:
    base, _ = _nan_checkpoint(tmp_path, shipped, with_checksum=False)
    rc = main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--weights", str(base),
               "--device", "cpu"])
    assert rc == 2 and "NaN" in capsys.readouterr().err
    assert _listing(tmp_path / "o") == []


def test_nonfinite_model_outputs_are_refused_before_writing(tmp_path, small) -> None:
    """A model that produces NaN (weights corrupted in memory, past the load check) writes nothing."""
    loaded = load_model(device="cpu")
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(InferenceError, match="NaN or infinite"):
        predict_file(small["degraded"], tmp_path / "o", loaded=loaded, progress=False)
    assert _listing(tmp_path / "o") == []


def test_checkpoint_checksum_recorded_and_verified(tmp_path, shipped) -> None:
    wpath = save_checkpoint(shipped.model, tmp_path / "ck")
    doc = json.loads((tmp_path / "ck.json").read_text())
    assert doc["weights_sha256"] == sha256_file(wpath)
    load_checkpoint(tmp_path / "ck")  # verifies
    raw = bytearray(wpath.read_bytes())
    raw[-3] ^= 0x01  # one flipped bit in the last float: still finite, but not what was saved
    wpath.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256") as info:
        load_checkpoint(tmp_path / "ck")
    assert "ck.safetensors" in str(info.value) and "ck.json" in str(info.value)
    # a checkpoint written before checksums existed (no weights_sha256 in its JSON) still loads, and so do the
    # shipped weights (verified when their JSON has the checksum)
    from napari_vldun.inference import SHIPPED_WEIGHTS
    doc = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    doc.pop("weights_sha256", None)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    shutil.copyfile(SHIPPED_WEIGHTS.with_suffix(".safetensors"), tmp_path / "old.safetensors")
    load_checkpoint(tmp_path / "old")
    load_checkpoint(SHIPPED_WEIGHTS)


def test_metrics_json_is_strict_with_null_for_undefined_metrics(tmp_path, shipped, small) -> None:
    """All-background reference labels make Dice undefined (NaN): it must be written as null."""
    empty = write_nifti(np.zeros_like(read_label(small["labels"])), tmp_path / "empty.nii.gz")
    summary = predict_file(small["degraded"], tmp_path / "o", loaded=shipped, labels=empty, label_set="acdc",
                           progress=False)
    assert np.isnan(summary["metrics"]["dice"])
    doc = _strict((tmp_path / "o" / "metrics.json").read_text())
    assert doc["metrics"]["dice"] is None and doc["metrics"]["iou"] is None


# ------------------------------------------------------------------ row 2: symlinks
def test_predict_refuses_a_dangling_symlink_in_out(tmp_path, small, capsys) -> None:
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "metrics.json").symlink_to(elsewhere / "metrics.json")
    (out / "overview.png").symlink_to(elsewhere / "overview.png")
    assert main(["predict", str(small["degraded"]), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "metrics.json" in err
    assert _listing(elsewhere) == [] and _listing(out) == ["metrics.json", "overview.png"]


def test_overwrite_never_writes_through_a_symlink(tmp_path, small, capsys) -> None:
    out, outside = tmp_path / "o", tmp_path / "precious.json"
    out.mkdir()
    outside.write_text("keep me")
    (out / "metrics.json").symlink_to(outside)
    assert main(["predict", str(small["degraded"]), "--out", str(out), "--device", "cpu", "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert outside.read_text() == "keep me" and (out / "metrics.json").is_symlink()


def _write_each(kind: str, path: Path, shipped: LoadedModel, small) -> None:
    from napari_vldun._writer import write_image
    from napari_vldun.degradation.measurement import Measurement

    img = read_image(small["clean"]).data
    if kind == "nifti":
        write_nifti(img, path, overwrite=True)
    elif kind == "png":
        write_png(img[0], path, overwrite=True)
    elif kind == "napari":
        write_image(str(path), img, {})
    elif kind == "kspace":
        Measurement.of(np.zeros(img.shape, np.complex64), np.ones(img.shape[-2:])).save(path, overwrite=True)
    elif kind == "degrade":
        degrade_file(small["clean"], path, mask="cartesian", accel=4, overwrite=True)
    elif kind == "checkpoint":
        save_checkpoint(shipped.model, path.with_suffix(""), overwrite=True)


@pytest.mark.parametrize(("kind", "name"), [("nifti", "a.nii.gz"), ("png", "a.png"), ("napari", "a.nii.gz"),
                                             ("kspace", "a.npz"), ("degrade", "a.nii.gz"),
                                             ("checkpoint", "a.safetensors")])
def test_every_writer_refuses_a_symlink_target(tmp_path, shipped, small, kind, name) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    link = tmp_path / name
    link.symlink_to(outside)
    with pytest.raises(OutputPathError, match="symbolic link"):
        _write_each(kind, link, shipped, small)
    assert outside.read_bytes() == b"keep" and link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".~")] == []  # no temp left


# ------------------------------------------------------------------ row 3: permissions follow the umask
def test_every_output_respects_the_umask(tmp_path, shipped, small) -> None:
    old = os.umask(0o027)
    try:
        predict_file(small["degraded"], tmp_path / "o", loaded=shipped, progress=False)
        degrade_file(small["clean"], tmp_path / "d.nii.gz", mask="radial", accel=4, kspace_out=tmp_path / "d.npz")
        save_checkpoint(shipped.model, tmp_path / "ck")
    finally:
        os.umask(old)
    files = [tmp_path / "o" / n for n in OUTPUTS] + [tmp_path / n for n in
                                                      ("d.nii.gz", "d.npz", "ck.safetensors", "ck.json")]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o640)}, modes


# ------------------------------------------------------------------ rows 7, 8: checks before any compute
def test_out_of_range_labels_refused_before_compute_naming_file_and_label_set(tmp_path, small, monkeypatch,
                                                                            capsys) -> None:
    lab = read_label(small["labels"]).copy()
    lab[0, 0, 0] = 9  # ACDC has classes 0..3
    bad = write_nifti(lab, tmp_path / "bad_labels.nii.gz")
    _no_compute(monkeypatch)
    rc = main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--labels", str(bad),
               "--label-set", "acdc", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad_labels.nii.gz" in err and "--label-set" in err
    assert not (tmp_path / "o").exists()


def test_out_being_a_file_fails_before_compute(tmp_path, small, monkeypatch, capsys) -> None:
    (tmp_path / "o").write_text("a file")
    _no_compute(monkeypatch)
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "--out" in capsys.readouterr().err


def test_missing_inputs_fail_before_compute(tmp_path, small, monkeypatch, capsys) -> None:
    _no_compute(monkeypatch)
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--clean",
                 str(tmp_path / "nope.nii.gz"), "--device", "cpu"]) == 2
    assert "--clean" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_degrade_checks_outputs_before_reading(tmp_path, small, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("read before the output was checked")
    monkeypatch.setattr("napari_vldun.io.read_image", boom)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputPathError, match="not a folder"):
        degrade_file(small["clean"], tmp_path / "f" / "x.nii.gz", mask="cartesian", accel=4)
    with pytest.raises(ValueError, match="must end in"):
        degrade_file(small["clean"], tmp_path / "x.jpg", mask="cartesian", accel=4)


def _images_folder(tmp_path: Path, small) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    write_nifti(read_image(small["clean"]).data[:1], d / "case1.nii.gz")
    return d


def test_evaluate_refuses_to_overwrite_example_figures_before_running(tmp_path, small, monkeypatch,
                                                                      capsys) -> None:
    imgs = _images_folder(tmp_path, small)
    out = tmp_path / "ev"
    out.mkdir()
    fig = out / "examples_imgs_R4.png"
    fig.write_bytes(b"earlier run")

    def boom(*a, **k):
        raise AssertionError("evaluation ran before its outputs were checked")
    monkeypatch.setattr("napari_vldun.evaluate.runner.Evaluator.add", boom)
    rc = main(["evaluate", "--images", str(imgs), "--accel", "4", "--no-tv", "--device", "cpu", "--out", str(out)])
    assert rc == 2 and "examples_imgs_R4.png" in capsys.readouterr().err
    assert fig.read_bytes() == b"earlier run"
    (out / "results.json").write_text("x")  # an --out that is a file is refused too
    assert main(["evaluate", "--images", str(imgs), "--device", "cpu", "--out", str(out / "results.json")]) == 2


# ------------------------------------------------------------------ row 9: one-line errors, nothing partial
def _one_line(err: str) -> str:
    """The single message line of stderr (progress bars aside); no traceback."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "slice/s]" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_permission_error_is_one_line(tmp_path, small, monkeypatch, capsys) -> None:
    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr("napari_vldun.io.atomic._make_temp", denied)
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "permission denied" in line and "restored.nii.gz" in line
    assert not (tmp_path / "o").exists()  # the folder this run made is gone too


def test_full_disk_after_two_outputs_leaves_nothing_and_a_rerun_works(tmp_path, small, monkeypatch, capsys) -> None:
    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr("napari_vldun.io.figures.overview_figure", full)  # the 3rd of 4 outputs
    out = tmp_path / "o"
    assert main(["predict", str(small["degraded"]), "--out", str(out), "--device", "cpu"]) == 2
    assert "no space left" in _one_line(capsys.readouterr().err)
    assert _listing(out) == []
    monkeypatch.undo()
    assert main(["predict", str(small["degraded"]), "--out", str(out), "--device", "cpu"]) == 0
    assert _listing(out) == sorted(OUTPUTS)


def test_ctrl_c_during_predict_exits_130_without_traceback(tmp_path, small, monkeypatch, capsys) -> None:
    def interrupted(*a, **k):
        yield Progress(1, 2)
        raise KeyboardInterrupt
    monkeypatch.setattr("napari_vldun.pipeline.iter_predict", interrupted)
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)
    assert _listing(tmp_path / "o") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_cuda_is_one_line(tmp_path, capsys) -> None:
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_acdc.json"
    assert main(["train", str(cfg), "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "CUDA" in _one_line(capsys.readouterr().err)
    assert main(["train", str(cfg), "--set", '{"device": "cuda:0"}', "--out", str(tmp_path / "run")]) == 2
    assert "CUDA" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ row 10: smaller ones
def test_constant_image_comes_back_as_its_own_value(tmp_path, shipped) -> None:
    const = write_nifti(np.full((2, 32, 32), 300, np.int16), tmp_path / "const.nii.gz", dtype=np.int16)
    predict_file(const, tmp_path / "o", loaded=shipped, progress=False)
    restored = read_image(tmp_path / "o" / "restored.nii.gz").data
    assert abs(float(restored.mean()) - 300.0) < 1.0


def test_pytorch_pickle_is_refused_with_a_conversion_hint(tmp_path, small, capsys) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "evil.pt")
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--weights",
                 str(tmp_path / "evil.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch pickles are not loaded" in err and "safetensors" in err and "evil.pt.json" not in err


@pytest.mark.parametrize("content", [b"hello, not numpy", "npy"])
def test_bad_kspace_file_gives_a_clean_message(tmp_path, small, capsys, content) -> None:
    bad = tmp_path / "k.npz"
    if content == "npy":
        with open(bad, "wb") as fh:
            np.save(fh, np.zeros(3))
    else:
        bad.write_bytes(content)
    assert main(["predict", str(small["degraded"]), "--out", str(tmp_path / "o"), "--kspace", str(bad),
                 "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "k.npz" in line and "not a k-space file" in line and "allow_pickle" not in line


def test_evaluate_skips_a_readme_in_the_images_folder(tmp_path, small, capsys) -> None:
    imgs = _images_folder(tmp_path, small)
    (imgs / "README.md").write_text("# my scans\n")
    with pytest.warns(UserWarning, match="README.md"):
        rc = main(["evaluate", "--images", str(imgs), "--accel", "4", "--no-tv", "--no-dc", "--device", "cpu",
                   "--json", str(tmp_path / "r.json")])
    assert rc == 0
    rows = _strict((tmp_path / "r.json").read_text())["rows"]
    assert any(r["method"] == "vldun" and r["n_slices"] == 1 for r in rows)


def test_predict_slice_index_out_of_range_is_an_inference_error(shipped, small) -> None:
    img = np.clip(read_image(small["clean"]).data, 0, 1)
    with pytest.raises(InferenceError, match=r"slices \[5\] out of range.*2 slice"):
        predict(shipped, img, slices=[5])
