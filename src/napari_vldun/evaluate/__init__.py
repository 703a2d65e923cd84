"""The evaluation face of the core: ``vldun evaluate`` (:mod:`.runner`, :mod:`.args`) and the classical
baselines it compares against (:mod:`.baselines`: TV-regularised reconstruction). The metrics themselves live
one layer down, in :mod:`napari_vldun.metrics`, and the overview figure in :mod:`napari_vldun.io.figures`, so
that the pipeline, training, ``measure`` and the widgets use them without importing the runner."""
