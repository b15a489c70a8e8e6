"""The package as users meet it: a light import, and models saved by earlier code still load.

``tests/fixtures/temporal_v0.keras`` was saved by the code of commit 3dfcb15,
before the library moved into its rooms; Keras finds its classes by their
registered names (``mat_effnet>StreamModel``, ...), never by module paths.
"""

import os
import subprocess
import sys

import numpy as np

import import_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

NO_TF = import_block.hook_source("tensorflow") + r"""
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("loaded:", " ".join(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")))
"""

ROOMS = ["mat_effnet", "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records",
         "mat_effnet.data", "mat_effnet.encoding", "mat_effnet.modeling", "mat_effnet.training",
         "mat_effnet.evaluation", "mat_effnet.serving", "mat_effnet.webapp",
         "mat_effnet.benchmark"]


def _run(code, *args, **env):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **env))


def test_importing_the_package_and_its_rooms_starts_no_tensorflow():
    r = _run(NO_TF, *ROOMS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loaded:"


def test_the_hook_does_block_tensorflow():
    # The check above means something only if the hook refuses a real import.
    r = _run(NO_TF, "mat_effnet.training.trainer")
    assert r.returncode != 0 and "tensorflow is blocked" in r.stderr


def test_the_jax_only_modules_import_without_tensorflow():
    r = _run(NO_TF, "mat_effnet.benchmark.device", "mat_effnet.benchmark.device_measure",
             "mat_effnet.ops.tvl1", "mat_effnet.ops.quantize", "mat_effnet.modeling.models",
             KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "loaded:"


def test_a_model_saved_by_earlier_code_loads_safely_and_predicts_the_same():
    from mat_effnet.evaluation import protocol
    from mat_effnet.modeling import model_identity

    model = protocol.load_model(os.path.join(FIXTURES, "temporal_v0.keras"))  # safe_mode=True
    assert type(model) is model_identity.StreamModel
    ident = model_identity.identity(model)
    assert ident.stream == "temporal" and ident.class_names == ("left", "right", "up")
    assert ident.preparation["flow"] == "dis" and ident.inferred == ()
    x = np.load(os.path.join(FIXTURES, "temporal_v0_input.npy"))
    want = np.load(os.path.join(FIXTURES, "temporal_v0_output.npy"))
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)
