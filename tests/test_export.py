"""The exported two-stream model: raw frames in, fused answer out.

One export of two tiny calibrated streams is shared by the module. A client
process in which importing ``mat_effnet`` or ``data_prep`` fails loads it and
runs ``serving_default`` on every input the tests need (one load and one XLA
compile); the tests compare its answers with ``mat-effnet-predict``'s path
(`mat_effnet.serving.predict_video.predict_video`) on the same video files.

Why 0.05 on every fused score: the export and prep differ in three known
places, each measured small: TF's area resize against OpenCV's INTER_AREA
(within 1 grey level, mostly equal), TF's JPEG encoder against OpenCV's
(both libjpeg, same quality), and float32 against float64 quantization (a
value on a rounding edge lands one level off). The grey conversion is
bit-exact. Calibrated models (logits with a spread of 1) make the scores
depend on the input, which `test_scores_depend_on_the_video` checks, so the
tolerance is not met by near-uniform scores.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.evaluation import protocol
from mat_effnet.serving import saved_model_export, predict_video, tflite_export
from mat_effnet.modeling import models as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Drift", "Jump", "Spin", "Wave"]
PREP = {"short_side": 40, "flow": "tvl1", "flow_implementation": "keras",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 2}
SMALL = dict(backbone="efficientnet_b0", image_size=32, num_segments=None, flow_length=2,
             key_dim=16, fc_units=32, class_names=CLASSES, dataset="ucf101")
SEGMENTS = 5
TOLERANCE = 0.05

CLIENT = r"""
import json, sys
class NothingOfOurs:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mat_effnet", "data_prep", "experiments"):
            raise ImportError(f"the client has no {name}")
sys.meta_path.insert(0, NothingOfOurs())
sys.path = [p for p in sys.path if p not in ("", ".") and not p.startswith(sys.argv[3])]
import numpy as np
import tensorflow as tf
export = tf.saved_model.load(sys.argv[1])
serve = export.signatures["serving_default"]
inputs = np.load(sys.argv[2])
out = {}
for name in inputs.files:
    for key, value in serve(frames=tf.constant(inputs[name])).items():
        value = value.numpy()
        out[f"{name}/{key}"] = value.astype(str) if value.dtype == object else value
out["metadata"] = np.array(export.signatures["metadata"]()["metadata"].numpy().decode())
np.savez(sys.argv[2] + ".out.npz", **out)
"""


def _calibrated(stream, seed, preparation=PREP, real=None):
    """BN statistics of a noise batch; logits scaled to a spread of 1 across ``real`` clips.

    ``real``: clips of the test videos, as the records hold them. Scaled on
    noise alone, the logits barely move between real videos (flow clips sit
    near 128), so a tolerance would be met by near-uniform scores; BN
    statistics of the real clips alone make any deviation from those four
    clips explode. Noise plus real clips for BN, the real clips' spread for
    the logits, gives scores that move with the video and not with a grey level.
    """
    model = M.build_stream(len(CLASSES), stream, preparation=preparation, **SMALL)
    M.set_bn_momentum(model, 0.0)
    channels = model.inputs[0].shape[-1]
    rng = np.random.RandomState(seed)
    if stream == "spatial":
        noise = rng.uniform(0, 255, (4, 3, 32, 32, channels))
    else:
        noise = np.clip(rng.normal(128, 8, (4, 3, 32, 32, channels)), 0, 255)
    x = noise if real is None else np.concatenate([noise, real])
    model(np.asarray(x, "float32"), training=True)
    probe = np.asarray(x if real is None else real, "float32")
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel, bias * 0.0])
    logits = keras.Model(model.input, model.get_layer("logits").output)(probe).numpy()
    if real is None:
        model.get_layer("logits").set_weights([kernel / logits.std(), bias * 0.0])
    else:
        # Centred on the real clips, so that no class wins whatever the video.
        spread = logits.std(axis=0).mean()
        model.get_layer("logits").set_weights([kernel / spread, -logits.mean(0) / spread])
    return model


def _real_clips(stream, videos):
    """One test clip (3 positions) per video, as the records hold it (DIS flow)."""
    import tensorflow as tf

    from mat_effnet.encoding import encode
    from mat_effnet.data import clips, sampling
    from mat_effnet import records

    cfg = sampling.PipelineConfig(stream=stream, image_size=32, flow_length=2,
                                  training=False, test_segments=3)
    settings = encode.EncodeSettings(short_side=40, flow="dis")
    out = []
    for path in videos:
        record = next(iter(encode.encode_video(path, settings)))
        clip, _ = clips.make_clip(records.parse(tf.constant(records.serialize(record))), cfg)
        out.append(clip.numpy()[0])
    return np.stack(out)


def _video(path, height, width, frames, seed, step=(2, 1), invert=False):
    """A smooth texture translating by ``step`` pixels a frame (TV-L1 sees texture).

    Smooth as camera footage is: on per-pixel noise, a grey level of resize
    difference moves TV-L1's answer at many pixels, which real video rarely does.
    """
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (height + 64, width + 64, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 1.5)
    if invert:  # another scene: the negative, moving the other way
        big = 255 - big
    out = [big[step[1] * i:step[1] * i + height, step[0] * i:step[0] * i + width]
           for i in range(frames)]
    synthetic.write_video(path, out)
    return path


def _decoded(path):
    import cv2

    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)  # the same models every run
    root = tmp_path_factory.mktemp("export")
    videos = {
        "landscape": _video(str(root / "landscape.avi"), 60, 80, 12, seed=0),
        "other": _video(str(root / "other.avi"), 60, 80, 12, seed=5, step=(0, 2), invert=True),
        "portrait": _video(str(root / "portrait.avi"), 80, 60, 10, seed=1),
        "odd": _video(str(root / "odd.avi"), 51, 77, 9, seed=2, step=(1, 1)),
    }
    paths = {"spatial": str(root / "spatial.keras"), "temporal": str(root / "temporal.keras")}
    for seed, stream in enumerate(paths):
        _calibrated(stream, seed, real=_real_clips(stream, videos.values())).save(paths[stream])
    settings = saved_model_export.ExportSettings(num_segments=SEGMENTS, frame_sizes=("4:3",))
    meta = saved_model_export.export(paths["spatial"], paths["temporal"], str(root / "saved"), settings)
    inputs = {name: _decoded(path) for name, path in videos.items()}
    inputs["two_frames"] = inputs["landscape"][:2]      # T = 2: one flow field, fewer than L
    inputs["short"] = inputs["landscape"][:3]           # fewer frames than positions (N = 5)
    np.savez(str(root / "inputs.npz"), **inputs)
    r = subprocess.run([sys.executable, "-c", CLIENT, str(root / "saved"),
                        str(root / "inputs.npz"), REPO], cwd=str(root), capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(np.load(str(root / "inputs.npz.out.npz"), allow_pickle=False))
    return {"root": root, "paths": paths, "videos": videos, "meta": meta, "out": out,
            "inputs": inputs}


def _predict(exported, name):
    models = {s: protocol.load_model(p) for s, p in exported["paths"].items()}
    resolved = predict_video.resolve({s: (exported["paths"][s], m) for s, m in models.items()},
                                 predict_video.PrepSettings())
    return predict_video.predict_video(exported["videos"][name], models["spatial"],
                                   models["temporal"], resolved.settings, SEGMENTS)


def _agrees(got, want, what, tolerance=TOLERANCE):
    assert np.abs(got - want).max() <= tolerance, (what, got, want)
    order = np.argsort(want)[::-1]
    if want[order[0]] - want[order[1]] > 0.1:
        assert np.argmax(got) == order[0], (what, got, want)


# The export of the fixture traces 4:3 only: the portrait and the odd video
# take the stretched path (flow on the frame resized to 40x53, resized back and
# rescaled per axis), whose flow is not prep's, hence twice the tolerance on
# the temporal and fused scores there. The default export also traces 3:4,
# 16:9 and 9:16, so real portrait video is exact.
@pytest.mark.parametrize("name,stretched", [("landscape", False), ("portrait", True),
                                            ("odd", True)])
def test_export_equals_predict_on_the_same_video(exported, name, stretched):
    want = _predict(exported, name)
    out = exported["out"]
    flow_tolerance = 2 * TOLERANCE if stretched else TOLERANCE
    for key, ref, tolerance in (("scores", want["fused"], flow_tolerance),
                                ("spatial_scores", want["spatial"], TOLERANCE),
                                ("temporal_scores", want["temporal"], flow_tolerance)):
        _agrees(out[f"{name}/{key}"], np.asarray(ref), f"{name}/{key}", tolerance)
    # top_classes / top_scores: the fused scores in order, k clamped to the 4 classes.
    order = np.argsort(out[f"{name}/scores"])[::-1]
    assert list(out[f"{name}/top_classes"]) == [CLASSES[i] for i in order]
    np.testing.assert_allclose(out[f"{name}/top_scores"], out[f"{name}/scores"][order])


def test_scores_depend_on_the_video(exported):
    """Not vacuous: two videos differ by more than the tolerance somewhere."""
    out = exported["out"]
    assert np.abs(out["landscape/spatial_scores"]
                  - out["other/spatial_scores"]).max() > TOLERANCE
    assert np.abs(out["landscape/temporal_scores"]
                  - out["other/temporal_scores"]).max() > TOLERANCE


@pytest.mark.parametrize("name", ["two_frames", "short"])
def test_short_videos_are_answered(exported, name):
    scores = exported["out"][f"{name}/scores"]
    assert np.isfinite(scores).all() and abs(scores.sum() - 1.0) < 1e-4
    # T = 2 has one flow field: every segment reads it (the documented clamp).
    assert exported["out"][f"{name}/top_classes"].shape == (4,)


def test_the_export_says_what_it_is(exported):
    meta = json.loads(exported["out"]["metadata"].item())
    assert meta["class_names"] == CLASSES
    assert meta["preparation"]["temporal"]["flow"] == "tvl1"
    assert meta["preparation"]["temporal"]["short_side"] == 40
    assert meta["models"]["temporal"]["stream"] == "temporal"
    assert meta["working_sizes"] == [[40, 53]]
    assert meta["test_segments"] == {"spatial": SEGMENTS, "temporal": SEGMENTS}


def test_working_sizes_round_as_prep():
    # 320x240 -> 341x256 and 1920x1080 -> 455x256, as mat_effnet.ops.video.resized_size.
    assert saved_model_export.working_sizes(256, ("4:3", "16:9", "3:4", "8:6")) == [
        (256, 341), (256, 455), (341, 256)]


def test_a_dis_model_is_refused(tmp_path, exported):
    dis = dict(PREP, flow="dis", flow_implementation="opencv")
    path = str(tmp_path / "dis.keras")
    _calibrated("temporal", 3, preparation=dis).save(path)
    with pytest.raises(saved_model_export.ExportError, match="dis flow.*not a TF op"):
        saved_model_export.export(exported["paths"]["spatial"], path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_broken_model_file_is_one_line_and_exit_2(tmp_path, exported):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(open(exported["paths"]["temporal"], "rb").read()[:5000])
    r = subprocess.run([sys.executable, "-m", "experiments.export",
                        f"--spatial_model={exported['paths']['spatial']}",
                        f"--temporal_model={broken}", f"--output_dir={tmp_path / 'out'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("mat-effnet-export: error: ") and str(broken) in lines[-1]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out")


def test_tflite_streams_are_builtin_only_and_agree():
    # Calibrated on noise and probed with noise: scores that are not saturated.
    keras.utils.set_random_seed(3)
    model = _calibrated("spatial", 3)
    clips = np.random.default_rng(7).integers(0, 256, (6, 1, 25, 32, 32, 3), dtype=np.uint8)
    # A spread of 1 across these 25-segment clips (calibrated on 3 segments,
    # the mean over 25 tokens leaves the softmax saturated).
    logits = keras.Model(model.input, model.get_layer("logits").output)
    spread = np.std([logits(c.astype("float32")).numpy()[0] for c in clips], axis=0).mean()
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel / spread, bias])
    want = np.stack([model(c.astype("float32"), training=False).numpy()[0] for c in clips])
    assert want.max() < 0.99  # not saturated: a score change can show
    files = {}
    for variant in tflite_export.VARIANTS:
        files[variant] = data = tflite_export.convert(model, 25, variant)
        assert tflite_export.flex_ops(data) == []
        got = np.stack([tflite_export.run(data, c) for c in clips])
        assert np.isfinite(got).all() and np.allclose(got.sum(1), 1.0, atol=1e-4)
        if variant == "float32":
            assert np.abs(got - want).max() <= 1e-3
            assert (got.argmax(1) == want.argmax(1)).all()
    # int8 stores the weights in a quarter of the bytes. Its scores are not
    # compared here: on a random untrained network a weight rounding moves
    # the softmax arbitrarily far (measured up to 0.53), which says nothing
    # about a trained one; the benchmark reports its agreement.
    assert len(files["int8"]) < 0.4 * len(files["float32"])


def test_flex_ops_are_found():
    """`flex_ops` does find a select-TF op (else the builtin check could not fail)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def f(x):
        return tf.math.cumprod(x)  # no TFLite builtin: FlexCumprod

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.SELECT_TF_OPS]
    assert tflite_export.flex_ops(converter.convert()) == ["FlexCumprod"]
    with pytest.raises(Exception):  # and builtins only refuses it
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.convert()


def test_tvl1_converts_to_tflite_and_matches_the_keras_flow():
    """Builtins only, and fed by name the flow is the Keras TV-L1's (the issue's
    4.76 px probe had fed the frames swapped: that check is here too)."""
    from data_prep import known_flow
    from mat_effnet.ops import tvl1

    prev, nxt, truth = known_flow.known_flow_pair("translation", 32, 40, seed=1, magnitude=2.0)
    data = tflite_export.convert_flow(32, 40)
    assert tflite_export.flex_ops(data) == []
    got = tflite_export.run_flow(data, prev, nxt)
    want = tvl1.batch_tvl1()(prev[None], nxt[None])[0]
    assert known_flow.endpoint_error(got, want) < 0.01
    assert known_flow.endpoint_error(got, truth) < 0.5
    swapped = tflite_export.run_flow(data, nxt, prev)
    assert known_flow.endpoint_error(swapped, -want) < known_flow.endpoint_error(swapped, want)
