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

__all__ = ["Precision", "autocast"]


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(f"precision must be one of {[p.value for p in cls]}, got {value!r}") from None


def autocast(device: torch.device | str, precision: "str | Precision"):
    """A context manager: bf16 autocast on ``device``'s type for ``Precision.BF16``, else a no-op."""
    if Precision.parse(precision) is Precision.FP32:
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
