"""The front door keeps its promises: README and the guides run, and quote BENCHMARKS exactly.

* Every ``python`` block of README.md and docs/ runs, file by file in one
  namespace, in a folder that holds what the examples name: ``spatial.keras``,
  ``temporal.keras`` (tiny streams), ``clip.mp4`` (a generated video) and
  ``export/mine`` (their export).
* A measured figure is quoted as ``VALUE (`key`)``: the key must be a figure of
  BENCHMARKS.md and the value its value, to the precision quoted.
* README stays a front page: at most 250 lines, the two set-up commands, no
  development history.
"""

import glob
import os
import re
import shutil

import keras
import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.modeling import models as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Drift", "Jump", "Spin"]
# The examples' models use DIS flow (OpenCV, no compile); the export needs a
# TV-L1 model (the flow it computes in its graph), made from models of their own.
PREP = {"short_side": 40, "flow": "dis", "flow_implementation": "opencv",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 2}
TVL1 = dict(PREP, flow="tvl1", flow_implementation="keras")
SMALL = dict(backbone="efficientnet_b0", image_size=32, num_segments=None, flow_length=2,
             key_dim=8, fc_units=16, class_names=CLASSES, dataset="folder", train_segments=3)
DOCS = ["README.md"] + sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
# A BENCHMARKS key: three or more dotted parts, lower case, the first a figure family
# (a file name such as `flow.onnx` has two).
KEY = r"(?:demo|flow|prep|pipeline|inference|headline|train|export|onnx|serve)\.[a-z0-9_]+\.[a-z0-9_.]+"
QUOTE = re.compile(r"(?<![\w.,])([0-9][0-9,]*(?:\.[0-9]+)?)(?:e[+-]?[0-9]+)?[^0-9`(|]{0,24}\(`(" + KEY + r")`\)")


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def benchmark_figures(text: str) -> dict[str, str]:
    """``{key: value}`` of every table row ``| `key` | value | ...`` in BENCHMARKS.md."""
    return dict(re.findall(r"^\|\s*`(" + KEY + r")`\s*\|\s*([-0-9.,e+]+)\s*\|", text, re.M))


def same_figure(quoted: str, table: str) -> bool:
    """Equal to the precision of the coarser of the two (3.64 quotes 3.6427; 2,236 quotes 2.24e+03)."""
    q, t = float(quoted.replace(",", "")), float(table.replace(",", ""))

    def digits(s):
        mantissa = s.replace(",", "").split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        return max(1, len(mantissa))

    n = min(digits(quoted), digits(table))
    return float(f"{q:.{n - 1}e}") == float(f"{t:.{n - 1}e}")


# ---------------------------------------------------------------------------
# README as a front page
# ---------------------------------------------------------------------------
def test_readme_is_a_front_page():
    text = _read("README.md")
    assert len(text.splitlines()) <= 250
    assert "pip install -r requirements.txt -e . && mat-effnet-demo" in text
    assert "pip install -r requirements.txt -e . && python -m pytest -q" in text


@pytest.mark.parametrize("name", [os.path.relpath(d, REPO) for d in DOCS])
def test_no_development_history_in_the_docs(name):
    assert not re.search(r"\bissues? #?\d+", _read(name), re.I)


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
def test_the_figure_checks_see_a_wrong_figure():
    figures = {"flow.x.speed": "3.64", "prep.y.peak": "1.77e+03"}
    text = "by 3.6× (`flow.x.speed`), and 0.7 GB (`prep.y.peak`)"
    found = QUOTE.findall(text)
    assert found == [("3.6", "flow.x.speed"), ("0.7", "prep.y.peak")]
    assert same_figure("3.6", figures["flow.x.speed"])
    assert not same_figure("0.7", figures["prep.y.peak"])
    assert same_figure("2,236", "2.24e+03") and not same_figure("2.29", "5.29")


@pytest.mark.parametrize("name", [os.path.relpath(d, REPO) for d in DOCS])
def test_quoted_figures_are_benchmarks_figures(name):
    figures = benchmark_figures(_read("BENCHMARKS.md"))
    assert len(figures) > 40  # the tables were read
    text = _read(name)
    for key in re.findall(r"`(" + KEY + r")`", text):
        assert key in figures, f"{name}: `{key}` is not a figure of BENCHMARKS.md"
    for value, key in QUOTE.findall(text):
        assert same_figure(value, figures[key]), (
            f"{name}: {value} for `{key}`, BENCHMARKS.md says {figures[key]}")


# ---------------------------------------------------------------------------
# the examples run
# ---------------------------------------------------------------------------
def _tvl1_models(root):
    return root.parent / (root.name + "_tvl1")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from mat_effnet.serving import saved_model_export

    root = tmp_path_factory.mktemp("docs")
    made = _tvl1_models(root)
    made.mkdir()
    keras.utils.set_random_seed(3)
    for stream in ("spatial", "temporal"):
        M.build_stream(len(CLASSES), stream, preparation=PREP, **SMALL).save(
            str(root / f"{stream}.keras"))
        M.build_stream(len(CLASSES), stream, preparation=TVL1, **SMALL).save(
            str(made / f"{stream}.keras"))
    rng = np.random.default_rng(0)
    synthetic.write_video(str(root / "clip.mp4"),
                          synthetic.render_clip("RedSquareRight", rng, num_frames=16))
    saved_model_export.export(str(made / "spatial.keras"), str(made / "temporal.keras"),
                              str(root / "export" / "mine"),
                              saved_model_export.ExportSettings(num_segments=4, onnx=True,
                                                                frame_sizes=("4:3",)))
    return root


@pytest.mark.parametrize("name", [os.path.relpath(d, REPO) for d in DOCS
                                  if python_blocks(_read(os.path.relpath(d, REPO)))])
def test_python_examples_run(name, workdir, monkeypatch, tmp_path, capsys):
    for item in os.listdir(workdir):
        src = workdir / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(_read(name)):
        exec(compile(block, f"{name}:python", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "the examples print what they show"
    # Whatever an example printed as a top class is one of the model's classes.
    shown = re.findall(r"\('(\w+)', [0-9.e-]+\)", out)
    assert set(shown) <= set(CLASSES)


def test_the_readme_example_equals_predict_json(workdir, monkeypatch):
    import json
    import subprocess
    import sys

    monkeypatch.chdir(workdir)
    from mat_effnet import VideoClassifier

    result = VideoClassifier.load(spatial="spatial.keras", temporal="temporal.keras").predict(
        "clip.mp4")
    r = subprocess.run([sys.executable, "-m", "experiments.predict", "--video=clip.mp4",
                        "--spatial_model=spatial.keras", "--temporal_model=temporal.keras",
                        "--json"], cwd=workdir, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr[-2000:]
    cli = json.loads(r.stdout)
    assert [t["class"] for t in cli["top"]] == [c for c, _ in result.top(5)]
    np.testing.assert_allclose([t["probability"] for t in cli["top"]],
                               [p for _, p in result.top(5)], atol=1e-5)
    assert cli["preparation"] == json.loads(json.dumps(result.to_dict()["preparation"]))


def test_an_export_folder_answers_within_the_exports_tolerance(workdir, monkeypatch):
    # 0.05: the export's stated tolerance against predict (tests/test_export.py:
    # TF's area resize and JPEG encoder against OpenCV's, float32 quantization).
    monkeypatch.chdir(workdir)
    from mat_effnet import VideoClassifier

    made = _tvl1_models(workdir)
    keras_result = VideoClassifier.load(spatial=made / "spatial.keras",
                                        temporal=made / "temporal.keras",
                                        num_segments=4).predict("clip.mp4")
    exported = VideoClassifier.load("export/mine")
    assert exported.class_names == tuple(CLASSES)
    assert exported.preparation["temporal"]["flow"] == "tvl1"
    result = exported.predict("clip.mp4")
    assert result.frames == 16
    np.testing.assert_allclose(result.scores, keras_result.scores, atol=0.05)
    np.testing.assert_allclose(result.scores.sum(), 1.0, atol=1e-5)
