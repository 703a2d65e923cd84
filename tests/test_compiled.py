"""The opt-in ``torch.compile`` path gives the eager numbers, and falls back to eager where it cannot compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.inference import LoadedModel, compile_loaded, predict
from napari_vldun.model import build_model
from napari_vldun.model.compiled import compile_unavailable

torch.set_num_threads(1)


def _loaded(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(build_model("tiny").eval(), torch.device("cpu"), "tiny (test)", True)


@pytest.mark.slow
@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="no C++ compiler")
def test_compiled_model_gives_the_eager_numbers(acdc_slice: np.ndarray) -> None:
    vol = np.stack([acdc_slice, acdc_slice[::-1].copy()])[:, :64, :64]
    eager = _loaded()
    compiled = compile_loaded(_loaded())
    assert compiled.compiled and compiled.compile_note is None
    assert compile_loaded(compiled) is compiled  # idempotent
    a, b = predict(eager, vol), predict(compiled, vol)
    assert compiled.compiled, compiled.compile_note  # it compiled and ran; no fallback happened
    np.testing.assert_allclose(b.restored, a.restored, atol=2e-4)
    np.testing.assert_allclose(b.modality_probs, a.modality_probs, atol=1e-5)
    assert (b.labels == a.labels).mean() > 0.999
    # the eager model is untouched (still channels-last) and is the fallback
    conv = next(m for m in compiled.eager.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_compile_that_fails_falls_back_to_eager(acdc_slice: np.ndarray, monkeypatch, tmp_path) -> None:
    from torch._inductor import codecache, config

    vol = acdc_slice[None, :48, :48].copy()
    ref = predict(_loaded(), vol)
    monkeypatch.setattr("napari_vldun.inference.compile_unavailable", lambda dev: None)  # let it try anyway
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no kernel compiled earlier is reused
    for cache in (codecache.CppCodeCache, codecache.CppPythonBindingsCodeCache):
        cache.cache_clear()
    torch._dynamo.reset()
    loaded = compile_loaded(_loaded())
    assert loaded.compiled
    # inductor's C++ compiler is missing
    with config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}), \
            pytest.warns(UserWarning, match="torch.compile failed"):
        out = predict(loaded, vol)
    torch._dynamo.reset()
    assert not loaded.compiled and "running eager" in loaded.compile_note
    np.testing.assert_allclose(out.restored, ref.restored, atol=1e-6)
    assert (out.labels == ref.labels).all()


def test_no_compiler_means_eager_with_a_note(monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in compile_unavailable("cpu")
    loaded = compile_loaded(_loaded())
    assert not loaded.compiled and "no C++ compiler" in loaded.compile_note


def test_the_docks_cache_the_compiled_copy_beside_the_eager_model() -> None:
    pytest.importorskip("qtpy")
    from napari_vldun._widgets._models import get_model

    eager = get_model(None, "cpu")
    fast = get_model(None, "cpu", compile=True)
    assert get_model(None, "cpu", compile=True) is fast and get_model(None, "cpu") is eager
    assert not eager.compiled  # the cached eager model is not changed by compiling
    if compile_unavailable("cpu") is None:
        assert fast.compiled and fast.eager is eager.model and fast.model is not eager.model
    else:
        assert not fast.compiled and fast.compile_note


def test_vldun_predict_compile_without_a_compiler_runs_eager_and_says_so(acdc_slice, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    import json

    from napari_vldun.cli import main

    np.save(tmp_path / "slice.npy", acdc_slice[:64, :64])
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert main(["predict", str(tmp_path / "slice.npy"), "--out", str(tmp_path / "out"), "--compile",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compiled"] is False and "no C++ compiler" in summary["compile_note"]
    assert (tmp_path / "out" / "labels.nii.gz").exists()
