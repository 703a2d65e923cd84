"""Real-data sources, splits and slice datasets with on-the-fly k-space degradation.

See :mod:`napari_vldun.data.sources` for the sources and their train/val splits,
:mod:`napari_vldun.data.datasets` for :class:`SliceDataset` and its sample format, and
:mod:`napari_vldun.data.memory` for :class:`PairsDataset` (the same samples from in-memory
image / labels pairs, e.g. napari layers or two folders).
"""

from .datasets import (ITEM_MASK_KINDS, SliceDataset, augment_pair, center_crop, crop_pair, degrade_sample, item_rngs,
                       make_loader, make_sample, random_crop, set_loader_epoch)
from .memory import (PairsDataset, class_names_for, folder_pair_datasets, load_folder_pairs, make_pair_datasets,
                     match_folders, split_pairs)
from .sources import (CT_WINDOW, SOURCES, CaseData, SliceItem, SourceSpec, clear_cache,
                      default_data_root, describe_splits, load_case, volume_slices)

__all__ = [
    "CT_WINDOW", "ITEM_MASK_KINDS", "SOURCES", "CaseData", "PairsDataset", "SliceDataset", "SliceItem", "SourceSpec",
    "augment_pair", "center_crop", "class_names_for", "clear_cache", "crop_pair", "default_data_root",
    "degrade_sample", "describe_splits", "folder_pair_datasets", "item_rngs", "load_case", "load_folder_pairs",
    "make_loader", "make_pair_datasets", "make_sample", "match_folders", "random_crop", "set_loader_epoch",
    "split_pairs", "volume_slices",
]
