"""Labels of a DICOM series as a DICOM Segmentation object (``labels.seg.dcm``, with highdicom).

The labels are the ``(Z, H, W)`` (or ``(H, W)``) integer array of the :class:`~napari_vldun.io.Volume` read
from the series: slice ``k`` is the instance ``source_files[k]`` (the reader's order along the slice normal,
``Volume.meta["source_files"]``), rows and columns as stored in the files (the reader flips only the affine
to RAS, never the array), so label pixel ``(k, r, c)`` is pixel ``(r, c)`` of that instance.

What the SEG holds (SOP class Segmentation Storage, type BINARY, one segment per foreground class):

* segment ``n`` is label value ``n`` named ``classes[n]`` (index 0 is the background, never a segment);
  every class of the label set is a segment, also one without any voxel (highdicom allows described
  segments without frames: a viewer lists it, empty); a value beyond ``classes`` is named ``"label n"``;
* the patient, study and FrameOfReferenceUID of the source, and for every frame its source instance
  (``DerivationImageSequence``) and plane position;
* only the computed ``slices`` (a partial result) are source images of the SEG: slices not computed are
  neither referenced nor encoded; a computed slice without a label has no frame (highdicom omits empty
  frames) but stays referenced, so "computed, nothing found" and "not computed" can be told apart;
* segment algorithm AUTOMATIC, identified as ``napari-vldun`` with its version and the checkpoint name;
  property category and type are the generic SNOMED "Tissue" code (the class name is the segment label).

Single-frame series only (one file per slice, e.g. CT / MR Image Storage); a multi-frame file gets no SEG
(:meth:`SegSource.from_meta` returns None). highdicom is imported when a SEG is written (it is slow to import).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .atomic import write_with

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["DicomSegError", "SegExport", "SegSource", "build_dicom_seg", "write_dicom_seg"]

#: Product name written as manufacturer, model and algorithm name.
PRODUCT = "napari-vldun"


class DicomSegError(ValueError):
    """A DICOM SEG cannot be written (source files gone or changed, labels that do not fit the series)."""


@dataclass(frozen=True)
class SegSource:
    """The source instances of a label volume, one file per slice in the volume's slice order."""

    files: tuple[str, ...]
    sop_instance_uids: tuple[str, ...] = ()  #: as read; a file that now holds another instance is refused

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None, shape: Sequence[int]) -> SegSource | None:
        """From a Volume's ``meta`` (:func:`napari_vldun.io.read_image` of a DICOM series): None unless it
        is a single-frame DICOM series with one file per slice of ``shape``."""
        meta = meta or {}
        files = meta.get("source_files")
        n = int(shape[0]) if len(shape) == 3 else 1
        if meta.get("format") != "dicom" or not files or len(files) != n or len(shape) not in (2, 3):
            return None
        return cls(tuple(str(f) for f in files), tuple(str(u) for u in meta.get("sop_instance_uids") or ()))

    def check(self) -> None:
        """Every file is still there; else :class:`DicomSegError` naming the missing ones."""
        gone = [f for f in self.files if not Path(f).is_file()]
        if gone:
            raise DicomSegError(
                f"the source DICOM series is gone ({len(gone)} of {len(self.files)} files missing, e.g. {gone[0]}): "
                "the DICOM SEG (labels.seg.dcm) references those files; put them back where they were read from")

    def datasets(self) -> list[Dataset]:
        """The source headers (pixel data not read: highdicom needs the attributes only), checked to be the
        instances that were read and to have a frame of reference (cheap checks, before any work)."""
        import pydicom

        self.check()
        out = []
        for i, f in enumerate(self.files):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - any read failure: one clear error
                raise DicomSegError(f"source DICOM file {f} cannot be read any more ({type(exc).__name__}: {exc})"
                                    ) from exc
            if self.sop_instance_uids and str(getattr(ds, "SOPInstanceUID", "")) != self.sop_instance_uids[i]:
                raise DicomSegError(f"source DICOM file {f} now holds another instance than the one read "
                                    "(SOPInstanceUID changed); open the series again")
            if not getattr(ds, "FrameOfReferenceUID", None):
                raise DicomSegError(f"source DICOM file {f} has no FrameOfReferenceUID: a DICOM SEG cannot "
                                    "reference it")
            out.append(ds)
        return out


@dataclass(frozen=True)
class SegExport:
    """What a result set needs to add a DICOM SEG of its labels (see :func:`write_dicom_seg`)."""

    source: SegSource
    classes: tuple[str, ...]
    slices: tuple[int, ...] | None = None  #: the computed slices; None: all
    series_description: str = "napari-vldun labels"
    checkpoint: str = ""


def _label_map(labels: np.ndarray, n_slices: int) -> np.ndarray:
    """``labels`` as an unsigned (Z, H, W) label map of ``n_slices`` slices."""
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3 or lab.shape[0] != n_slices:
        raise DicomSegError(f"labels of shape {np.shape(labels)} do not fit the source series of {n_slices} slice(s)")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DicomSegError("labels must be integers for a DICOM SEG")
    elif lab.dtype.kind not in "biu":
        raise DicomSegError(f"labels of dtype {lab.dtype} cannot be written as a DICOM SEG")
    lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise DicomSegError(f"labels hold values {lo}..{hi}; a DICOM SEG needs 0..65535")
    return lab.astype(np.uint8 if hi <= 255 else np.uint16)


def build_dicom_seg(labels: np.ndarray, sources: Sequence[Dataset], classes: Sequence[str], *,
                    slices: Sequence[int] | None = None, series_description: str = "napari-vldun labels",
                    algorithm_version: str = "", checkpoint: str = "") -> Dataset:
    """The Segmentation dataset (highdicom) of ``labels`` (Z, H, W) / (H, W) on ``sources`` (one dataset per
    slice, in the labels' slice order); ``slices``: the computed ones (None: all). See the module docstring."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    lab = _label_map(labels, len(sources))
    keep = list(range(len(sources))) if slices is None else sorted({int(z) for z in slices})
    if not keep:
        raise DicomSegError("no computed slice: nothing to write as a DICOM SEG")
    if keep[0] < 0 or keep[-1] >= len(sources):
        raise DicomSegError(f"slices {keep[0]}..{keep[-1]} are outside the series of {len(sources)} slice(s)")
    lab = lab[keep]
    n_seg = max(len(classes) - 1, int(lab.max()), 1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=PRODUCT, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version or "unknown",
        source=(checkpoint or "unknown")[:64])
    segments = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=(classes[n] if n < len(classes) else f"label {n}")[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for n in range(1, n_seg + 1)]
    src = [sources[k] for k in keep]
    version = algorithm_version or "unknown"
    try:
        with warnings.catch_warnings():  # a one-component PatientName of the source is not ours to fix
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            return hd.seg.Segmentation(
                source_images=src, pixel_array=lab, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=100,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer=PRODUCT,
                manufacturer_model_name=PRODUCT, software_versions=version, device_serial_number="0",
                series_description=series_description[:64], content_label="VLDUN",
                content_description=f"{PRODUCT} labels ({checkpoint or 'unknown checkpoint'})"[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomSegError(f"the source series cannot be referenced by a DICOM SEG "
                            f"({type(exc).__name__}: {exc})") from exc


def write_dicom_seg(labels: np.ndarray, source_files: Sequence[str | Path] | SegSource, classes: Sequence[str],
                    out_path: str | Path, *, series_description: str = "napari-vldun labels",
                    algorithm_version: str = "", checkpoint: str = "", slices: Sequence[int] | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``labels`` (Z, H, W) / (H, W) of the series ``source_files`` (one file per slice, in the labels'
    slice order) as a DICOM SEG at ``out_path``, atomically (:mod:`napari_vldun.io.atomic`); returns the path.

    Raises :class:`DicomSegError` (a ``ValueError``) when the source files are gone or changed or the labels
    do not fit them; ``FileExistsError`` for an existing ``out_path`` unless ``overwrite``."""
    source = source_files if isinstance(source_files, SegSource) else SegSource(tuple(str(f) for f in source_files))
    seg = build_dicom_seg(labels, source.datasets(), classes, slices=slices, series_description=series_description,
                          algorithm_version=algorithm_version, checkpoint=checkpoint)
    return write_with(out_path, lambda tmp: seg.save_as(tmp), overwrite)
