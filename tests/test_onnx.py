"""The ONNX streams of ``mat-effnet-export --onnx``, run in ONNX Runtime (CPU).

One trained tiny pair is exported once for the module (`exported`): two
streams fitted for a few steps on clips whose class sets their grey level,
so their softmax is peaked and moves with the clip (checked in
`test_the_keras_scores_are_not_flat`, else a tolerance could be met by
near-uniform scores). The files are made by the calls that
`saved_model_export.export` makes with ``onnx=True``.

Why 1e-4: ONNX Runtime and TensorFlow run the same float32 graph with other
kernels (convolution and matmul summation orders); measured differences are
about 1e-7 on these models.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import import_block

from data_prep import synthetic
from mat_effnet.evaluation import protocol
from mat_effnet.evaluation.clip_prediction import StreamPredictor
from mat_effnet.modeling import models as M
from mat_effnet.serving import onnx_export, predict_video, saved_model_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Drift", "Jump", "Spin", "Wave"]
# OpenCV's TV-L1 for prediction: the export takes TV-L1 models, and OpenCV's
# needs no XLA compile (the Keras TV-L1's graph is the SavedModel's concern).
PREP = {"short_side": 40, "flow": "tvl1", "flow_implementation": "opencv",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 2}
SMALL = dict(backbone="efficientnet_b0", image_size=32, num_segments=None, flow_length=2,
             key_dim=16, fc_units=32, class_names=CLASSES, dataset="ucf101")
SEGMENTS = 4
WEIGHTS = (1.0, 1.5)
TOLERANCE = 1e-4

# Without them the ONNX export must say how to install them (one line).
ONNX_PACKAGES = ("onnx", "tf2onnx", "onnxruntime")
NO_ONNX = import_block.hook_source(*ONNX_PACKAGES)


def _need_packages():
    # The extra 'onnx' (requirements.txt pins it, so CI runs these).
    for name in ("onnx", "tf2onnx", "onnxruntime"):
        pytest.importorskip(name)


def _clips(stream, n, segments, seed):
    """Clips whose grey level is set by their class (with noise); labels 0..3."""
    rng = np.random.default_rng(seed)
    channels = 3 if stream == "spatial" else 4
    labels = np.arange(n) % len(CLASSES)
    base = 40.0 + 55.0 * labels[:, None, None, None, None]
    x = base + rng.normal(0, 25, (n, segments, 32, 32, channels))
    return np.clip(x, 0, 255).astype("float32"), labels


def _trained(stream, seed):
    """BN statistics of the training clips, then the head fitted for 12 steps.

    The backbone is frozen after its statistics are taken: fitting it too
    gives the same peaked scores for three times the CPU seconds.
    """
    model = M.build_stream(len(CLASSES), stream, preparation=PREP, bn_momentum=0.0, **SMALL)
    x, y = _clips(stream, 32, 3, seed)
    model(x, training=True)  # momentum 0: the moving statistics are these clips'
    model.get_layer("backbone").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    return model


def _video(path, seed):
    """A smooth texture translating by 2 px a frame (TV-L1 sees texture)."""
    import cv2

    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (60 + 64, 80 + 64, 3), dtype=np.uint8), (0, 0), 1.5)
    synthetic.write_video(path, [big[i:i + 60, 2 * i:2 * i + 80] for i in range(10)])
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _need_packages()
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    paths = {s: str(root / f"{s}.keras") for s in ("spatial", "temporal")}
    models = {}
    for seed, stream in enumerate(paths):
        models[stream] = _trained(stream, seed)
        models[stream].save(paths[stream])
    out = str(root / "export")
    # The ONNX part of the export, as saved_model_export.export makes it with
    # onnx=True (the SavedModel beside it is test_export.py's); the flow file
    # at a smaller size in its own test, its conversion being the slow part.
    settings = saved_model_export.ExportSettings(num_segments=SEGMENTS, frame_sizes=("4:3",),
                                                 fusion_weights=WEIGHTS, onnx=True)
    serving, meta = saved_model_export.build(paths["spatial"], paths["temporal"], settings)
    os.makedirs(out)
    onnx_export.write_files(out, onnx_export.for_export(serving, meta, flow=False))
    sessions = {s: onnx_export.session(os.path.join(out, onnx_export.FILES[s])) for s in paths}
    return {"root": root, "paths": paths, "models": models, "out": out, "meta": meta,
            "sessions": sessions}


def test_one_input_the_clip_and_the_softmax_out(exported):
    import onnx

    for stream, sess in exported["sessions"].items():
        channels = 3 if stream == "spatial" else 4
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        assert inp.name == "clip" and inp.type == "tensor(float)"
        assert inp.shape[2:] == [32, 32, channels] and len(inp.shape) == 5
        assert out.name == "probabilities" and out.shape[-1] == len(CLASSES)
        proto = onnx.load(os.path.join(exported["out"], onnx_export.FILES[stream]))
        assert onnx_export.foreign_ops(proto) == []
        opset = {o.domain: o.version for o in proto.opset_import}[""]
        assert opset == onnx_export.OPSET


def test_the_files_say_what_they_are(exported):
    for stream in ("spatial", "temporal"):
        meta = onnx_export.read_metadata(os.path.join(exported["out"], onnx_export.FILES[stream]))
        assert meta["stream"] == stream and meta["class_names"] == CLASSES
        assert meta["preparation"]["flow"] == "tvl1" and meta["preparation"]["short_side"] == 40
        assert meta["model"]["stream"] == stream and meta["model"]["image_size"] == [32, 32]
        assert meta["test_segments"] == SEGMENTS and meta["opset"] == onnx_export.OPSET
        assert meta["input"]["name"] == "clip" and meta["output"]["values"] == "softmax"
    # And the export's metadata (its JSON and metadata signature) states them.
    assert exported["meta"]["onnx"]["opset"] == onnx_export.OPSET
    assert exported["meta"]["onnx"]["files"] == {"spatial": "spatial.onnx",
                                                  "temporal": "temporal.onnx"}


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_onnx_equals_keras_on_held_out_clips(exported, stream):
    # Held out: another seed, and 5 segments where training saw 3.
    clips, _ = _clips(stream, 8, 5, seed=10 + len(stream))
    want = exported["models"][stream](clips, training=False).numpy()
    got = onnx_export.run(exported["sessions"][stream], clips)
    assert np.abs(got - want).max() <= TOLERANCE
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_the_keras_scores_are_not_flat(exported, stream):
    """Not vacuous: peaked scores that differ between clips by more than the tolerance."""
    clips, labels = _clips(stream, 8, 5, seed=10 + len(stream))
    want = exported["models"][stream](clips, training=False).numpy()
    assert want.max(1).mean() > 0.6 and len(set(want.argmax(1))) >= 2
    assert np.abs(want - want[0]).max() > 100 * TOLERANCE


def test_fused_onnx_scores_equal_predict(exported):
    video = _video(str(exported["root"] / "walk.avi"), seed=3)
    models = {s: protocol.load_model(p) for s, p in exported["paths"].items()}
    resolved = predict_video.resolve({s: (exported["paths"][s], m) for s, m in models.items()},
                                     predict_video.PrepSettings())
    want = predict_video.predict_video(video, models["spatial"], models["temporal"],
                                       resolved.settings, SEGMENTS, fusion_weights=WEIGHTS)
    # The same records (prepared once: both streams' frames agree), the same clips.
    scores = {}
    for stream, model in models.items():
        predictor = StreamPredictor(model, SEGMENTS)
        clips = [predictor.views(predict_video.RecordFrames(s, stream)) for s in want["records"]]
        scores[stream] = onnx_export.stream_scores(exported["sessions"][stream],
                                                   [np.asarray(c) for c in clips])
        assert np.abs(scores[stream] - want[stream]).max() <= TOLERANCE
    fused = onnx_export.fuse(scores["spatial"], scores["temporal"], WEIGHTS)
    assert np.abs(fused - want["fused"]).max() <= TOLERANCE
    assert fused.argmax() == np.argmax(want["fused"])
    # The weights matter here: the plain average is another answer.
    assert np.abs(onnx_export.fuse(scores["spatial"], scores["temporal"]) - fused).max() > 1e-3


def test_tvl1_converts_and_matches_the_keras_flow(tmp_path):
    """The Keras TV-L1 graph as ONNX Loops, at a size with two pyramid levels."""
    from data_prep import known_flow
    from mat_effnet.ops import tvl1

    _need_packages()
    height, width = 20, 26
    assert len(tvl1.pyramid_sizes(height, width, tvl1.TVL1Params())) == 2
    path = str(tmp_path / onnx_export.FLOW_FILE)
    onnx_export.write_files(str(tmp_path), {onnx_export.FLOW_FILE: onnx_export.convert_flow(
        height, width).SerializeToString()})
    meta = onnx_export.read_metadata(path)
    assert meta["flow"]["size"] == [height, width] and meta["opset"] == onnx_export.OPSET
    sess = onnx_export.session(path)
    assert [i.name for i in sess.get_inputs()] == list(onnx_export.FLOW_INPUTS)
    keras_flow = tvl1.batch_tvl1()
    for kind, magnitude in (("translation", 2.0), ("rotation", 3.0)):
        prev, nxt, truth = known_flow.known_flow_pair(kind, height, width, seed=1,
                                                      magnitude=magnitude)
        got = onnx_export.run_flow(sess, prev, nxt)
        want = keras_flow(prev[None], nxt[None])[0]
        assert known_flow.endpoint_error(got, want) < 0.02, kind
        # Not vacuous: the flow is the motion, and the order of the frames matters.
        assert known_flow.endpoint_error(got, truth) < 0.5 * magnitude, kind
        swapped = onnx_export.run_flow(sess, nxt, prev)
        assert known_flow.endpoint_error(swapped, want) > 0.5 * magnitude, kind


def test_an_op_without_onnx_conversion_is_named():
    import tensorflow as tf

    _need_packages()

    @tf.function(autograph=False)
    def f(x):
        return {"y": tf.math.igammac(x, x)}

    with pytest.raises(onnx_export.OnnxError, match="Igammac"):
        onnx_export.convert_function(f, [tf.TensorSpec([3], tf.float32, name="x")], ["y"], "f")


def test_without_the_packages_the_library_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [import_block.Blocker(ONNX_PACKAGES)] + sys.meta_path)
    for name in list(sys.modules):
        if name.split(".")[0] in ONNX_PACKAGES:
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(onnx_export.OnnxError, match=r"pip install -e \.\[onnx\]"):
        onnx_export.require()


def test_without_the_packages_the_binary_is_one_line_and_exit_2(tmp_path):
    for name in ("s.keras", "t.keras"):
        (tmp_path / name).write_bytes(b"not opened")
    code = NO_ONNX + "from experiments import export\nexport.run()\n"
    r = subprocess.run([sys.executable, "-c", code, f"--spatial_model={tmp_path / 's.keras'}",
                        f"--temporal_model={tmp_path / 't.keras'}",
                        f"--output_dir={tmp_path / 'out'}", "--onnx"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("mat-effnet-export: error: the ONNX export needs ")
    assert "pip install -e .[onnx]" in lines[-1] and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out")
