"""``napari-mpf info``: what a model file holds."""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..engine import (
    load_model,
)
from .common import heads_text, jsonable


def cmd_info(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    spec = model.spec
    wh, ww = model.window
    cy, cx = spec.centre
    fy, fx = spec.pool_factor
    mean = np.asarray(model.norm_mean, dtype=float).ravel()
    std = np.asarray(model.norm_std, dtype=float).ravel()
    with np.load(args.model, allow_pickle=False) as z:  # load_model has checked the file
        header = json.loads(str(z["header"]))
    print(f"model: {args.model} ({header.get('format', '?')} version {header.get('version', '?')})")
    print(f"network: {spec.text}")
    print(f"window: {wh}x{ww} (classified pixel at offset {cy},{cx}); pooling factor {fy}x{fx}")
    print(f"activation: {model.activation}; dtype: {np.dtype(model.dtype).name}; parameters: {model.n_params:,}")
    print(f"input channels: {model.in_channels}; normalisation mean {np.array2string(mean, precision=4)}, std {np.array2string(std, precision=4)}")
    print("classes: " + ", ".join(f"{k + 1} = {n}" for k, n in enumerate(model.class_names)))
    heads = heads_text(model)
    if heads:
        print(f"heads: {heads}")
    prov = getattr(model, "provenance", None) or {}
    print("provenance:")
    print("  " + json.dumps(jsonable(prov), indent=2, sort_keys=True, default=str).replace("\n", "\n  "))
    return 0
