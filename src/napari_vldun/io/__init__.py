"""Reading, writing and normalising medical images with their geometry (no Qt).

Convention: ``Volume.data`` is ``(Z, H, W)`` (or ``(H, W)``), slices along the
first axis; ``Volume.affine`` maps ``(z, y, x, 1)`` indices to RAS mm.  See
:mod:`napari_vldun.io.volume`.
"""

from .atomic import OutputPathError, atomic_outputs, atomic_path, check_outputs, dumps_json, write_json
from .normalize import CT_WINDOWS, normalize, normalize_ct, normalize_minmax, normalize_mri
from .readers import SUPPORTED_SUFFIXES, file_stem, read_image, read_label
from .volume import ImageReadError, Volume
from .writers import write_nifti, write_png

__all__ = [
    "CT_WINDOWS",
    "ImageReadError",
    "OutputPathError",
    "SUPPORTED_SUFFIXES",
    "Volume",
    "atomic_outputs",
    "atomic_path",
    "check_outputs",
    "dumps_json",
    "file_stem",
    "normalize",
    "normalize_ct",
    "normalize_minmax",
    "normalize_mri",
    "read_image",
    "read_label",
    "write_json",
    "write_nifti",
    "write_png",
]
