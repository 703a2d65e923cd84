"""napari-vldun: VL-DUN joint restoration and segmentation of degraded MRI/CT.

The core (``degradation``, ``model``, ``io``, ``data``, ``train``, ``evaluate``,
``inference``) imports no Qt; the napari layer lives in ``_widgets`` and the npe2
contribution modules (``_reader``, ``_writer``, ``_sample_data``).
"""

__version__ = "0.1.0"
