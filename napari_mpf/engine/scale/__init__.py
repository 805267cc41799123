"""Beyond memory: chunked and distributed prediction with dask, equal to whole-image prediction; zarr output."""
