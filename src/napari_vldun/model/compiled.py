"""Opt-in ``torch.compile`` of a VL-DUN for inference, with a silent eager fallback.

:func:`compiled_copy` returns a copy of a model whose unfolding stages and segmentation head are compiled by
inductor (``dynamic=False``: one compile per slice size, cached on disk by torch between runs); the prior
tower and the unfolding loop (data consistency, the ``interrupt`` calls) stay eager. The copy keeps NCHW
weights: compiled NCHW was the fastest forward measured (BENCHMARKS.md, "torch.compile"). It pays for
volumes: the first slice of each size compiles (~50-85 s cold, ~5 s with a warm cache, on this CPU).

A machine without a C++ compiler (CPU) or without triton (CUDA) cannot compile: :func:`compile_unavailable`
says why before anything is tried, and a compile that fails at its first call raises one of
:data:`COMPILE_ERRORS`, on which :func:`napari_vldun.inference.iter_predict` switches to the eager model.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil

import torch
from torch import nn

__all__ = ["COMPILE_ERRORS", "COMPILE_OPTIONS", "compile_unavailable", "compiled_copy"]

#: inductor options: its attention-fusion pattern fails on the scan's broadcast matmuls in torch 2.14
#: ("Attempting to broadcast a dimension of length 2"), so the pattern matcher is off.
COMPILE_OPTIONS = {"pattern_matcher": False}

#: what a failed compile raises at the compiled module's first call (a missing or broken compiler is
#: wrapped in ``BackendCompilerFailed``, a ``TorchDynamoException``).
COMPILE_ERRORS: tuple[type[BaseException], ...] = (torch._dynamo.exc.TorchDynamoException,)


def _cxx() -> str | None:
    """The C++ compiler inductor would use on the CPU, if one is on the PATH."""
    from torch._inductor import config

    names = [c for c in config.cpp.cxx if c] if isinstance(config.cpp.cxx, (tuple, list)) else [config.cpp.cxx]
    for name in [*names, "g++", "c++", "clang++"]:
        if name and shutil.which(name):
            return name
    return None


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (a sentence), or None when it can be tried."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed (needed to compile on CUDA)"
    if dev.type == "cpu":
        return None if _cxx() else "no C++ compiler (g++, c++ or clang++) on the PATH"
    return f"compiling for {dev.type} is not supported"


def compiled_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (a :class:`~napari_vldun.model.VLDUN`, in eval mode) with NCHW weights whose
    unfolding stages and segmentation head are compiled. Compilation happens at the first call of each
    module (and again for each new input size); ``model`` itself is left untouched as the eager fallback."""
    from .unfolding import UnfoldingStage

    out = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    for mod in out.modules():
        if isinstance(mod, UnfoldingStage):
            mod.compile(dynamic=False, options=COMPILE_OPTIONS)
    if getattr(out, "seg_head", None) is not None:
        out.seg_head.compile(dynamic=False, options=COMPILE_OPTIONS)
    return out
