"""Numeric precision of a model call: fp32, or bf16 autocast with fp32 master weights.

Under ``bf16`` convolutions and matrix products run in bfloat16 (this CPU's AVX512-bf16, or a GPU's
tensor cores); the selective scans (:func:`~napari_vldun.model.ssm.ssd_scan_chunked`), the running image
estimate, data consistency (FFTs) and the losses stay float32. ``benchmarks/precision.py`` measures
that bf16 matches fp32.
"""

from __future__ import annotations

import contextlib
from enum import Enum

import torch

__all__ = ["Precision", "autocast", "native_bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """Does ``device`` run bf16 matrix products natively (a CUDA GPU with bf16, a CPU with AVX512-bf16/AMX)?
    Without it, CPU bf16 is emulated and ~4x *slower* than fp32 (an AMD EPYC with AVX2 only: 3.8 s vs 0.96 s
    per training step, BENCHMARKS.md)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    #: bf16 where the device runs it natively (:func:`native_bf16`), else fp32.
    AUTO = "auto"

    def resolve(self, device: torch.device | str) -> "Precision":
        """FP32 or BF16 for ``device`` (AUTO decided by :func:`native_bf16`)."""
        if self is Precision.AUTO:
            return Precision.BF16 if native_bf16(device) else Precision.FP32
        return self

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(f"precision must be one of {[p.value for p in cls]}, got {value!r}") from None


def autocast(device: torch.device | str, precision: "str | Precision"):
    """A context manager: bf16 autocast on ``device``'s type for ``Precision.BF16`` (and ``AUTO`` where bf16
    is native), else a no-op."""
    if Precision.parse(precision).resolve(device) is Precision.FP32:
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
