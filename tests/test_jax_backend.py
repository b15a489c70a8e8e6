"""The model is backend-agnostic.

The stream model and its custom layers use ``keras.ops`` only, so the same
code builds, trains, saves and loads under ``KERAS_BACKEND=jax`` (e.g. on a
GPU machine with JAX but no TensorFlow GPU build). The backend is fixed when
Keras is first imported, and this test session runs TensorFlow, hence a
subprocess. ``jax`` is a test dependency, not a runtime one.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, os, sys
import numpy as np
import keras
from mat_effnet.modeling import model_identity as I, models as M

path = sys.argv[1]
keras.utils.set_random_seed(0)
out = {"backend": keras.backend.backend()}
model = M.build_stream(2, "temporal", backbone="resnet18", image_size=32, num_segments=2,
                       flow_length=1, bn_momentum=0.9, class_names=["left", "right"],
                       dataset="toy", preparation={"flow": "tvl1", "short_side": 40},
                       train_segments=2)
model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (2, 2, 32, 32, 2)).astype("float32")
y = np.array([0, 1])
before = [w.copy() for w in model.get_weights()]
history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
after = model.get_weights()
out["loss"] = float(history.history["loss"][0])
out["weights_changed"] = sum(not np.array_equal(a, b) for a, b in zip(before, after))
expected = np.asarray(model.predict(x, verbose=0))
model.save(path)
loaded = keras.models.load_model(path, safe_mode=True)
got = np.asarray(loaded.predict(x, verbose=0))
out["max_abs_diff"] = float(np.abs(got - expected).max())
out["row_sums"] = expected.sum(axis=1).tolist()
out["type"] = type(loaded).__name__
out["identity"] = I.identity(loaded).to_dict()
print(json.dumps(out))
"""


def test_stream_trains_saves_and_loads_under_jax(tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (a test dependency: pip install 'jax[cpu]')")
    env = dict(os.environ, KERAS_BACKEND="jax",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "jax.keras")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    assert out["loss"] > 0 and out["loss"] == out["loss"]  # finite, not NaN
    assert out["weights_changed"] > 10  # the step updated the network
    assert out["max_abs_diff"] < 1e-6
    assert all(abs(s - 1) < 1e-5 for s in out["row_sums"])
    assert out["type"] == "StreamModel"
    ident = out["identity"]
    assert (ident["stream"], ident["flow_length"], ident["class_names"]) == (
        "temporal", 1, ["left", "right"])
    assert ident["preparation"] == {"flow": "tvl1", "short_side": 40}
