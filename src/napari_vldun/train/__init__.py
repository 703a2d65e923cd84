"""Training: losses, configuration, the event-yielding loop, data-parallel helpers, console runner.

``iter_train(cfg)`` is the one loop; ``train_from_file(path)`` wraps it for the CLI
(``vldun train CONFIG``) and the napari widget consumes its :class:`TrainEvent` s directly.
``iter_train(cfg, run_builder=make_run_builder(train_ds, val_ds))`` trains on ready-made datasets
(e.g. :class:`~napari_vldun.data.PairsDataset` s of napari layers or folders) instead of ``cfg.sources``.
"""

from .config import SOURCE_LICENSES, TrainConfig
from .losses import DiceCELoss, FocalLoss, JointLoss, PriorLoss, charbonnier, degradation_contrastive_loss
from .loop import EVENT_KINDS, TrainEvent, fit_batch, iter_train
from .runner import run_training, train_from_file
from .setup import RunExistsError, build_run_from_datasets, make_run_builder

__all__ = [
    "TrainConfig", "SOURCE_LICENSES", "FocalLoss", "DiceCELoss", "JointLoss", "PriorLoss", "charbonnier",
    "degradation_contrastive_loss", "TrainEvent", "EVENT_KINDS", "iter_train", "fit_batch",
    "train_from_file", "run_training", "RunExistsError", "build_run_from_datasets", "make_run_builder",
]
