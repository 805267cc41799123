"""The kernels a first use compiles: the default path's warm-up, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from numba.core.registry import CPUDispatcher
from napari_mpf.engine.training.warmup import warm_backward, warm_up
warm_backward()  # what prepare's second child compiles: the same signatures as training, or a second one shows
warm_up(in_channels=int(sys.argv[1]))
compiled = {}
for name, module in list(sys.modules.items()):
    if name.startswith("napari_mpf"):
        for attr, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == name and obj.signatures:
                compiled[name.rsplit(".", 1)[-1] + "." + attr] = len(obj.signatures)
print(json.dumps(compiled))
"""


@pytest.mark.parametrize("in_channels", [1, 3])
def test_default_path_compiles_each_kernel_once(in_channels):
    """Every kernel the default net runs (training with a preview, prediction) is compiled for one
    signature only (a second array layout costs another 0.5-1.5 s of a first use; warm_backward's
    probes must match what training passes), and none of the kernels kept for other nets (the Numba
    head, the blocked convolution: 32 s of compiling)."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(in_channels)], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    compiled = json.loads(out.strip().splitlines()[-1])
    assert compiled, "warm_up ran no Numba kernel"
    assert {name: n for name, n in compiled.items() if n != 1} == {}
    assert not {"fc.fc_pair_forward", "fc.fc_pair_backward", "blocked._forward"} & set(compiled)
    assert len(compiled) <= 10, sorted(compiled)
