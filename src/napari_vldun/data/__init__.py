"""Real-data sources, splits and slice datasets with on-the-fly k-space degradation.

See :mod:`napari_vldun.data.sources` for the sources and their train/val splits and
:mod:`napari_vldun.data.datasets` for :class:`SliceDataset` and its sample format.
"""

from .datasets import (MASK_KINDS, SliceDataset, augment_pair, center_crop, make_loader,
                       random_crop, set_loader_epoch)
from .sources import (CT_WINDOW, SOURCES, CaseData, SliceItem, SourceSpec, clear_cache,
                      default_data_root, describe_splits, load_case, volume_slices)

__all__ = [
    "CT_WINDOW", "MASK_KINDS", "SOURCES", "CaseData", "SliceDataset", "SliceItem", "SourceSpec",
    "augment_pair", "center_crop", "clear_cache", "default_data_root", "describe_splits",
    "load_case", "make_loader", "random_crop", "set_loader_epoch", "volume_slices",
]
