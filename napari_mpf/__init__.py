"""napari-mpf: train a max-pooling CNN from a few painted strokes, on the CPU, inside napari."""

__version__ = "0.1.0"
