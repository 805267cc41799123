"""The network: its spec, inputs and filters, dense evaluation through max-pooling fragments, heads, prediction and the Model."""
