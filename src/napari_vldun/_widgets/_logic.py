"""Qt-free decisions of the docks: which slices to run, which slices a result holds, how partial results
fill a volume, and the words for a run's measurement. Tested without a display."""

from __future__ import annotations

from typing import Iterable

import numpy as np

#: Slice choices of the Restore dock.
SLICE_MODES = ("all slices", "current slice", "slice range")


def chosen_slices(n: int, mode: str, current: int = 0, first: int = 0, last: int = 0) -> list[int] | None:
    """Slices to compute of a stack of ``n``: ``None`` for all; the ``current`` one; or ``first..last``
    (inclusive, in either order, clipped to the stack). ``mode`` is one of :data:`SLICE_MODES`."""
    if mode not in SLICE_MODES:
        raise ValueError(f"unknown slice choice {mode!r}; use one of {SLICE_MODES}")
    if mode == "all slices" or n <= 1:
        return None
    if mode == "current slice":
        return [int(min(max(current, 0), n - 1))]
    a, b = sorted((int(first), int(last)))
    a, b = max(a, 0), min(b, n - 1)
    if a > b:
        raise ValueError(f"slice range {first}..{last} is outside the stack (slices 0..{n - 1})")
    return list(range(a, b + 1))


def computed_slices(prov: dict, n: int) -> list[int]:
    """Slices a result layer holds (``slices_done`` of its provenance), all ``n`` when it records none."""
    done = prov.get("slices_done")
    return list(range(n)) if done is None else sorted(int(z) for z in done if 0 <= int(z) < n)


def fill_slices(shape: tuple[int, ...], slices: list[int], values: np.ndarray, fill: float, dtype,
                base: np.ndarray | None = None, base_slices: Iterable[int] = ()) -> tuple[np.ndarray, list[int]]:
    """A ``(Z, H, W)`` volume holding ``values`` at ``slices`` and, from ``base`` (an earlier result of the
    same shape), its ``base_slices``; every other slice is ``fill`` (NaN for images, 0 for labels, both
    drawn transparent). Returns the volume and the sorted slices it holds."""
    out = np.full(shape, fill, dtype)
    kept = sorted(set(int(z) for z in base_slices) - set(slices)) if base is not None else []
    if kept:
        out[kept] = np.asarray(base, dtype).reshape(shape)[kept]
    out[slices] = values
    return out, sorted(set(kept) | set(slices))


def measurement_text(data_consistency: bool, passes: int) -> str:
    """How a run used the layer's acquisition: "with recorded k-space, N passes" or "image only"."""
    if not data_consistency:
        return "image only"
    return f"with recorded k-space, {passes} pass{'' if passes == 1 else 'es'}"


def duration_text(seconds: float) -> str:
    """``"4.2 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"`` for a duration in seconds."""
    s = max(float(seconds), 0.0)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def time_left(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left after ``done`` of ``total`` slices took ``elapsed`` seconds (their mean rate);
    None before the first slice."""
    if done <= 0 or total <= 0:
        return None
    return max(total - done, 0) * float(elapsed) / done


def progress_text(done: int, total: int, elapsed: float, slice_elapsed: float | None = None,
                  device: str | None = None) -> str:
    """Status while running: ``"slice 2 / 5 on cpu: 3.1 s elapsed, about 4.6 s left"``. ``elapsed``: since
    the start (model loading included); ``slice_elapsed``: since the first slice started, the ETA's rate
    (default ``elapsed``)."""
    where = f" on {device}" if device else ""
    text = f"slice {done} / {total}{where}: {duration_text(elapsed)} elapsed"
    left = time_left(done, total, elapsed if slice_elapsed is None else slice_elapsed)
    if left is not None and done < total:
        text += f", about {duration_text(left)} left"
    return text


def device_hint(chosen: str, cuda_available: bool) -> str:
    """A hint when the user chose the CPU though a CUDA GPU is available (else "")."""
    if str(chosen).lower() == "cpu" and cuda_available:
        return "a CUDA GPU is available: choose device 'auto' or 'cuda' for a faster run"
    return ""


def _num(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


#: Columns of the measurements table of the Compare dock (the CSV has the areas per slice too).
MEASUREMENT_COLUMNS = ("source", "label", "name", "voxels", "volume (mL)", "mean intensity")


def measurement_cells(rows: list[dict]) -> list[list[str]]:
    """Cells of :data:`MEASUREMENT_COLUMNS` for :func:`napari_vldun.measure.label_measurements` rows."""
    return [[str(r.get("source", "")), str(r["label"]), str(r["name"]), str(r["voxels"]),
             _num(r["volume_ml"], ".4g"), _num(r["mean_intensity"], ".4g")] for r in rows]


def dice_cells(table: dict) -> tuple[list[str], list[list[str]]]:
    """``(columns, rows)`` of a :func:`napari_vldun.measure.dice_table`: a row "all computed slices" and one
    per slice, a column per class (Dice to 3 decimals; "n/a" where the class is in neither)."""
    cols = ["slices", *table["classes"]]
    rows = [["all computed", *(_num(table["per_class"][c], ".3f") for c in table["classes"])]]
    rows += [[f"slice {s['slice']}", *(_num(s["dice"][c], ".3f") for c in table["classes"])]
             for s in table["per_slice"]]
    return cols, rows
