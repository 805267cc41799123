"""The stand-alone evaluation of a saved model in docs/model-file.md agrees with the engine."""

import re
from pathlib import Path

import numpy as np

from napari_mpf.engine import Model, predict_proba, save_model

MODEL_FILE_DOC = Path(__file__).resolve().parents[1] / "docs" / "model-file.md"


def test_model_file_doc_snippet_matches_the_engine(tmp_path):
    text = MODEL_FILE_DOC.read_text()
    code = re.search(r"```python\n(import json, numpy as np\n.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the document's own example
    classify_pixel = namespace["classify_pixel"]
    rng = np.random.default_rng(0)
    model = Model.create("C3x3x4, MPF2x2, C3x3x5, MPF2x2, FC6", 2, 3, activation="relu", seed=1)
    model.norm_mean[:] = [3.0, -1.0]
    model.norm_std[:] = [2.0, 0.5]
    path = save_model(model, tmp_path / "m.npz")
    image = rng.normal(size=(2, 19, 23)).astype(np.float32)
    probs = predict_proba(model, image)
    for y, x in [(0, 0), (18, 22), (7, 11)]:
        np.testing.assert_allclose(classify_pixel(path, image, y, x), probs[:, y, x], atol=1e-6)
