"""bf16 autocast gives the numbers fp32 gives: the shipped model on a real slice, and the fast path's parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.degradation.measurement import Measurement
from napari_vldun.metrics import psnr
from napari_vldun.inference import InferenceError, load_model, predict
from napari_vldun.model.precision import Precision, autocast


def test_precision_names_are_checked() -> None:
    assert Precision.parse("BF16") is Precision.BF16
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision.parse("fp16")


def test_bf16_inference_of_the_shipped_model_matches_fp32(acdc_slice: np.ndarray) -> None:
    """Restoration within 0.1 dB and labels on >= 99 % of the pixels, on a real ACDC slice at 4x with its
    measured k-space (the product's main path)."""
    loaded = load_model()
    clean = acdc_slice[:128, :128]
    y, meas = Measurement.simulate(clean, "cartesian", 4, seed=0)
    kw = {"measurement": meas, "cascades": 1}
    a = predict(loaded, y, precision="fp32", **kw)
    b = predict(loaded, y, precision="bf16", **kw)
    pa, pb = psnr(a.restored[0], clean), psnr(b.restored[0], clean)
    assert abs(pa - pb) < 0.1, (pa, pb)
    assert (a.labels == b.labels).mean() >= 0.99
    with pytest.raises(InferenceError, match="precision"):
        predict(loaded, y, precision="half")


def test_autocast_is_a_no_op_for_fp32() -> None:
    x = torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert (x @ x).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_auto_precision_uses_bf16_only_where_it_is_native() -> None:
    """On a CPU without AVX512-bf16/AMX, bf16 is emulated (~4x slower): ``auto`` stays fp32 there."""
    from napari_vldun.model.precision import native_bf16

    auto = Precision.parse("auto")
    assert auto.resolve("cpu") is (Precision.BF16 if native_bf16("cpu") else Precision.FP32)
    assert Precision.parse("bf16").resolve("cpu") is Precision.BF16  # an explicit choice is kept
    x = torch.rand(4, 8)
    with autocast("cpu", "auto"):
        y = torch.nn.functional.linear(x, torch.rand(3, 8))
    assert y.dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
