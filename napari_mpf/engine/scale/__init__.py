"""Beyond memory: chunked, lazy and distributed prediction with dask, exactly equal to whole-image
prediction.

Every output pixel is computed from the region of the mirror-extended whole image its window
reads (:mod:`.region`), so results equal :func:`~napari_mpf.engine.network.predict.predict_proba`'s
whatever the chunking.

Three ways to use it:

- :func:`predict_dask`: a lazy dask array of probabilities (or labels) for a dask/NumPy/zarr array of
  2-D images or a stack of them (``dask.array.map_overlap`` with a halo of the window's half-size and
  ``boundary="none"``; the mirror padding at the true border is done inside the block, because
  dask's ``"reflect"`` boundary repeats the edge pixel, NumPy's ``"symmetric"``).
- :func:`predict_region`: the building block, one region of one image, from a reader function.
- :class:`ZarrPrediction`: a whole volume (:class:`~napari_mpf.engine.io.volume.Volume`: a TIFF stack,
  zarr store, folder of images or an in-memory array) written to a zarr store chunk by chunk, as a
  dask graph of independent tasks (one per output chunk, each reading its own region with the halo
  from the source) that runs on dask's local scheduler or on a ``dask.distributed`` cluster, with
  progress, stop and resume (finished chunks are skipped when the run is restarted), plus per-slice
  object counts (:mod:`napari_mpf.engine.post.objects`).

The output store's layout (a zarr v3 group): :mod:`.store`.
"""

from __future__ import annotations

from .counts import CountSettings, write_counts_csv
from .lazy import predict_dask, segment_dask
from .region import halo, numba_threads, predict_region, predict_tile_logits, threads_per_task
from .run import RunProgress, ZarrPrediction
from .store import (
    PROB_DTYPES,
    decode_probabilities,
    encode_probabilities,
    model_token,
    open_prediction,
)

__all__ = [
    "PROB_DTYPES",
    "halo",
    "numba_threads",
    "threads_per_task",
    "predict_tile_logits",
    "predict_region",
    "predict_dask",
    "segment_dask",
    "model_token",
    "encode_probabilities",
    "decode_probabilities",
    "CountSettings",
    "RunProgress",
    "ZarrPrediction",
    "open_prediction",
    "write_counts_csv",
]
