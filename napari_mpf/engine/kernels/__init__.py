"""The Numba kernels: activations, convolutions, max-pooling fragments, blocked products (no NumPy-level logic)."""
