"""A saved model says what it is.

Stream and two-stream models carry their identity in their own Keras config:
architecture, class names, dataset and the preparation settings of their
training data. Tested: the round trip through ``.keras`` with safe_mode, the
checks on the way in, models saved before (plain Functional, no identity),
evaluation refusing data prepared differently, and the shipped-model
experiment of the issue (predict from copied ``.keras`` files alone).
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.evaluation import protocol, fusion
from mat_effnet.serving import predict_video
from mat_effnet.modeling import backbones as B
from mat_effnet.modeling import model_identity as I
from mat_effnet.modeling import models as M
from mat_effnet.modeling import stream_spec as S
from mat_effnet.common.errors import MatEffNetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["ApplyEyeMakeup", "Archery", "Basketball"]
PREP = {"short_side": 40, "flow": "dis", "flow_implementation": "opencv",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 1}
SMALL = dict(backbone="resnet18", image_size=32, num_segments=None, flow_length=2)


def _stream(stream, **kw):
    args = dict(SMALL, class_names=CLASSES, dataset="ucf101", preparation=PREP,
                train_segments=3)
    args.update(kw)
    return M.build_stream(len(CLASSES), stream, **args)


def _clip(model, seed=0, segments=2):
    shape = (2, segments) + tuple(model.input_shape[2:])
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def _config(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def _with_module(path, module, out):
    """A copy of the .keras file at ``path`` whose config names ``module``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(dict(json.loads(data), module=module)).encode()
            dst.writestr(item, data)
    return str(out)


@pytest.fixture(scope="module")
def pair():
    keras.utils.set_random_seed(5)
    return _stream("spatial"), _stream("temporal")


# ---------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------
def test_stream_identity_survives_save_and_safe_load(pair, tmp_path):
    spatial, _ = pair
    ident = I.identity(spatial)
    assert ident.kind == "stream" and ident.stream == "spatial"
    assert (ident.backbone, ident.attention, ident.attention_tokens) == ("resnet18", True,
                                                                          "segment")
    assert ident.image_size == (32, 32) and ident.num_segments is None
    assert ident.flow_length is None and ident.train_segments == 3
    assert ident.class_names == tuple(CLASSES) and ident.dataset == "ucf101"
    assert ident.preparation == PREP and ident.inferred == ()

    path = str(tmp_path / "spatial.keras")
    spatial.save(path)
    config = _config(path)
    assert config["class_name"] == "StreamModel"
    assert config["config"]["identity"]["class_names"] == CLASSES
    # The graph is saved (a subclass that lost it would fail with KeyError: 'layers').
    assert "layers" in config["config"]
    assert '"weights"' not in json.dumps(config)  # never "imagenet" (a download on load)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is I.StreamModel
    assert I.identity(loaded) == ident
    # Files saved before the split name the module mat_effnet.models; they load
    # through the registered name, which therefore must never change.
    assert config["registered_name"] == "mat_effnet>StreamModel"
    old = keras.models.load_model(_with_module(path, "mat_effnet.models", tmp_path / "old.keras"),
                                  safe_mode=True)
    assert type(old) is I.StreamModel and I.identity(old) == ident
    x = _clip(spatial)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), spatial.predict(x, verbose=0),
                               atol=1e-6)


def test_temporal_identity_and_imagenet_weights_not_saved(tmp_path, monkeypatch):
    # weights= initialises the backbone only; it is no part of the identity.
    source = str(tmp_path / "rgb.weights.h5")
    M.build_backbone("resnet18", 3, 32).save_weights(source)
    temporal = _stream("temporal", weights=source, flow_length=3)
    ident = I.identity(temporal)
    assert (ident.stream, ident.flow_length) == ("temporal", 3)
    path = str(tmp_path / "t.keras")
    temporal.save(path)
    assert "rgb.weights.h5" not in json.dumps(_config(path))
    assert I.identity(keras.models.load_model(path, safe_mode=True)) == ident


def test_two_stream_identity(pair, tmp_path):
    spatial, temporal = pair
    two = M.build_two_stream(spatial, temporal, (1.0, 3.0))
    path = str(tmp_path / "two.keras")
    two.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is I.TwoStreamModel
    ident = I.identity(loaded)
    assert ident.kind == "two_stream" and ident.fusion_weights == (0.25, 0.75)
    assert ident.class_names == tuple(CLASSES) and ident.dataset == "ucf101"
    assert ident.streams["spatial"] == I.identity(spatial)
    assert ident.streams["temporal"].flow_length == 2
    rgb, flow = _clip(spatial, 1), _clip(temporal, 2)
    expected = 0.25 * spatial.predict(rgb, verbose=0) + 0.75 * temporal.predict(flow, verbose=0)
    np.testing.assert_allclose(loaded.predict([rgb, flow], verbose=0), expected, atol=1e-6)
    # The same identity through the JSON form that score files carry.
    assert json.loads(json.dumps(ident.to_dict()))["streams"]["temporal"]["stream"] == "temporal"


def test_two_stream_refuses_streams_that_disagree(pair):
    spatial, temporal = pair
    other = _stream("temporal", class_names=["a", "b", "c"])
    with pytest.raises(MatEffNetError, match=r"class_names \['a', 'b', 'c'\] differ from the "
                                             r"spatial stream's \['ApplyEyeMakeup'"):
        M.build_two_stream(spatial, other)
    with pytest.raises(MatEffNetError, match="dataset 'hmdb51' differ"):
        M.build_two_stream(spatial, _stream("temporal", dataset="hmdb51"))
    with pytest.raises(MatEffNetError, match="spatial_model='temporal_stream': is a temporal"):
        M.build_two_stream(temporal, spatial)


def test_spec_round_trips_through_keras(tmp_path):
    # Head sizes off the defaults, so a reader falling back to them would fail.
    spec = S.StreamSpec(num_classes=3, stream="temporal", backbone="resnet18", num_heads=3,
                        key_dim=16, fc_units=24, flow_length=2, image_size=32,
                        num_segments=None, train_segments=3, class_names=CLASSES,
                        dataset="ucf101", preparation=PREP)
    assert S.StreamSpec.from_dict(spec.to_dict()) == spec
    model = M.build_from_spec(spec, dropout=0.5, bn_momentum=0.9)
    assert model.spec is spec and I.identity(model) is spec
    attention = model.get_layer("attention")
    assert (attention.num_heads, attention.key_dim, model.get_layer("fc").units) == (3, 16, 24)
    assert model.input_shape == (None, None, 32, 32, 4) and model.inputs[0].name == "flow"
    path = str(tmp_path / "spec.keras")
    model.save(path)
    saved = _config(path)["config"]["identity"]
    assert saved == spec.to_dict() and saved["version"] == S.IDENTITY_VERSION
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is I.StreamModel and loaded.spec == spec
    # What the keyword front builds is the same spec.
    assert M.build_stream(3, "temporal", backbone="resnet18", num_heads=3, key_dim=16,
                          fc_units=24, flow_length=2, image_size=32, num_segments=None,
                          train_segments=3, class_names=CLASSES, dataset="ucf101",
                          preparation=PREP).spec == spec


def test_build_from_spec_checks_nothing_again():
    # The spec was checked when made: building it never returns to checks.py.
    from mat_effnet.common import checks

    spec = S.StreamSpec(num_classes=3, stream="temporal", backbone="resnet18", flow_length=1,
                        image_size=32, num_segments=2)
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == checks.__file__:
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        model = M.build_from_spec(spec, bn_momentum=0.9)
    finally:
        sys.setprofile(None)
    assert calls == [] and model.spec == spec
    # The same profile does see the checks where they are made.
    sys.setprofile(profile)
    try:
        S.StreamSpec(num_classes=3)
    finally:
        sys.setprofile(None)
    assert "check_int" in calls


def test_spec_is_checked_once_and_normalised():
    spec = S.StreamSpec(num_classes=3, backbone="resnet18", flow_length=4, image_size=40)
    # A spatial stream has no flow; sizes are (height, width).
    assert (spec.flow_length, spec.image_size, spec.channels) == (None, (40, 40), 3)
    assert S.StreamSpec(num_classes=3, backbone="resnet34").image_size == (168, 168)
    for kwargs, match in ((dict(num_heads=0), "num_heads must be an integer >= 1"),
                          (dict(fc_units=2.5), "fc_units must be an integer >= 1"),
                          (dict(stream="temporal", flow_length=0), "flow_length must be"),
                          (dict(attention=1), "attention must be True or False"),
                          (dict(dataset=""), "dataset='': must be a non-empty string")):
        with pytest.raises(MatEffNetError, match=match):
            S.StreamSpec(num_classes=3, **kwargs)


def test_identities_saved_before_the_spec_still_load(tmp_path):
    # Version 1 had no head sizes; unknown keys are ignored.
    v1 = {"version": 1, "kind": "stream", "stream": "temporal", "backbone": "resnet18",
          "attention": True, "attention_tokens": "segment", "flow_length": 2,
          "image_size": [32, 32], "num_segments": None, "num_classes": 3,
          "train_segments": 3, "class_names": CLASSES, "dataset": "ucf101",
          "preparation": PREP, "from_the_future": 1}
    spec = S.StreamSpec.from_dict(v1)
    assert (spec.num_heads, spec.key_dim, spec.fc_units) == (2, 256, 512)
    assert spec.image_size == (32, 32) and spec.class_names == tuple(CLASSES)
    # A version-1 file of a model with other head sizes: they are read off its layers.
    model = _stream("temporal", num_heads=4, key_dim=8, fc_units=16)
    path = str(tmp_path / "new.keras")
    model.save(path)
    old = str(tmp_path / "v1.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                ident = config["config"]["identity"]
                for key in ("num_heads", "key_dim", "fc_units"):
                    del ident[key]
                ident["version"] = 1
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(old, safe_mode=True)
    assert loaded.spec == model.spec and loaded.spec.num_heads == 4


def test_with_identity_sets_only_what_is_given_and_checks_it(pair):
    model = M.build_stream(3, "spatial", **SMALL)
    ident = I.identity(model)
    assert (ident.class_names, ident.dataset, ident.preparation) == (None, None, None)
    I.with_identity(model, dataset="hmdb51")
    assert I.identity(model).dataset == "hmdb51" and I.identity(model).class_names is None
    # Unknown preparation keys (other settings of a prep run) are dropped.
    I.with_identity(model, preparation=dict(PREP, chunk_frames=1000, videos_per_shard=6))
    assert I.identity(model).preparation == PREP
    with pytest.raises(MatEffNetError, match=r"class_names=\['a', 'b'\]: 2 names for a model "
                                             "of 3 classes"):
        I.with_identity(model, class_names=["a", "b"])
    with pytest.raises(MatEffNetError, match="a name appears twice"):
        I.with_identity(model, class_names=["a", "b", "a"])
    with pytest.raises(MatEffNetError, match=r"preparation\['short_side'\]='big': must be int"):
        I.with_identity(model, preparation={"short_side": "big"})
    with pytest.raises(MatEffNetError, match="train_segments must be an integer >= 1"):
        I.with_identity(model, train_segments=0)
    with pytest.raises(MatEffNetError, match="not a stream model built by"):
        I.with_identity(keras.Sequential([keras.layers.Dense(2)]), dataset="x")
    # training_kwargs() reproduces an identity on a twin (e.g. a float32 copy).
    twin = M.build_stream(3, "spatial", **SMALL)
    I.with_identity(twin, **I.identity(model).training_kwargs())
    assert I.identity(twin) == I.identity(model)


def test_data_identity_from_metadata():
    meta = {"classes": CLASSES, "name": "ucf101", "schema_version": 1, "num_classes": 3,
            "settings": {"flow": "tvl1", "flow_bound": 15.0, "short_side": 128,
                         "jpeg_quality": 80, "chunk_frames": 1000, "dataset": "ucf101"}}
    got = S.data_identity(meta)
    # Metadata from before flow_implementation existed: OpenCV computed all flow.
    assert got == {"class_names": CLASSES, "dataset": "ucf101",
                   "preparation": {"flow": "tvl1", "flow_bound": 15.0, "short_side": 128,
                                   "jpeg_quality": 80, "flow_implementation": "opencv",
                                   "schema_version": 1}}
    meta["settings"]["flow_implementation"] = "keras"
    assert S.data_identity(meta)["preparation"]["flow_implementation"] == "keras"


def test_backbone_table_is_the_one_source():
    assert B.BACKBONES == ("efficientnet_b0", "resnet50", "resnet18", "resnet34")
    assert B.PAPER_INPUT_SIZE == {"efficientnet_b0": 224, "resnet50": 224, "resnet18": 112,
                                  "resnet34": 168}
    assert B.FEATURE_DIM == {"efficientnet_b0": 1280, "resnet50": 2048, "resnet18": 512,
                             "resnet34": 512}
    spec = B.backbone_spec("resnet50")
    assert spec.rgb_reverse_channels and spec.flow_std == 1.0
    with pytest.raises(ValueError, match="backbone must be one of"):
        B.backbone_spec("vgg16")
    # image_size=None is the table's paper size.
    model = M.build_stream(3, "spatial", backbone="resnet18", num_segments=1)
    assert I.identity(model).image_size == (112, 112)


# ---------------------------------------------------------------------------
# models saved before identities
# ---------------------------------------------------------------------------
def _legacy(model):
    """A plain Functional model of the same layers: what mat-effnet saved before."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


def test_models_saved_before_still_load_and_say_so_once(pair, tmp_path, capsys):
    _, temporal = pair
    path = str(tmp_path / "old.keras")
    _legacy(temporal).save(path)
    assert _config(path)["class_name"] == "Functional"
    loaded = keras.models.load_model(path, safe_mode=True)
    capsys.readouterr()
    ident = I.identity(loaded)
    ident_again = I.identity(loaded)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "saved without its identity" in err
    assert ident == ident_again
    assert (ident.stream, ident.backbone, ident.flow_length) == ("temporal", "resnet18", 2)
    assert ident.image_size == (32, 32) and ident.num_classes == 3 and ident.attention
    assert ident.class_names is None and ident.preparation is None
    assert "stream" in ident.inferred and "class_names" not in ident.inferred
    spec = protocol.stream_spec(loaded)
    assert (spec.stream, spec.image_size, spec.flow_length, spec.num_segments) == (
        "temporal", (32, 32), 2, None)
    x = _clip(temporal)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), temporal.predict(x, verbose=0),
                               atol=1e-6)


# ---------------------------------------------------------------------------
# evaluation against the data's preparation
# ---------------------------------------------------------------------------
def _meta(**settings):
    base = dict(flow="dis", flow_bound=20.0, short_side=40, jpeg_quality=90,
                flow_implementation="opencv")
    base.update(settings)
    return {"classes": list(CLASSES), "num_classes": 3, "name": "ucf101",
            "schema_version": 1, "settings": base}


def test_eval_refuses_data_prepared_differently(pair):
    spatial, temporal = pair
    t = I.identity(temporal)
    assert protocol.check_data(t, _meta(), "/d") == []
    with pytest.raises(protocol.EvalError,
                       match=r"/d: prepared with flow='tvl1' but the model was trained on data "
                             r"prepared with flow='dis'"):
        protocol.check_data(t, _meta(flow="tvl1"), "/d")
    with pytest.raises(protocol.EvalError, match=r"flow_bound=15.0 .* flow_bound=20.0"):
        protocol.check_data(t, _meta(flow_bound=15.0), "/d")
    other = _meta()
    other["classes"] = ["ApplyEyeMakeup", "Basketball", "Archery"]
    with pytest.raises(protocol.EvalError,
                       match=r"/d: class 1 is 'Basketball' but the model's class 1 is 'Archery'"):
        protocol.check_data(I.identity(spatial), other, "/d")
    # The spatial stream does not see the flow: another flow is no reason to refuse.
    assert protocol.check_data(I.identity(spatial), _meta(flow="tvl1"), "/d") == []


def test_eval_notes_another_implementation_of_the_same_flow():
    model = M.build_stream(3, "temporal", **SMALL, preparation=dict(PREP, flow="tvl1"))
    notes = protocol.check_data(I.identity(model),
                                  _meta(flow="tvl1", flow_implementation="keras"), "/d")
    assert notes == ["flow_implementation: /d was prepared with 'keras', the model's "
                     "training data with 'opencv' (allowed)"]


def test_eval_writes_the_identity_into_the_scores(data_dir, tmp_path):
    from mat_effnet import records

    meta = records.read_metadata(data_dir)
    model = M.build_stream(meta["num_classes"], "temporal", backbone="resnet18", image_size=32,
                           num_segments=None, flow_length=2, **S.data_identity(meta))
    path = str(tmp_path / "temporal.keras")
    model.save(path)
    out = tmp_path / "t.npz"
    r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={data_dir}",
                        f"--model={path}", "--num_segments=2", f"--output={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = fusion.load_scores(str(out))
    assert scores.model_identity == I.identity(model).to_dict()
    assert scores.model_identity["class_names"] == list(scores.class_names)

    # Data prepared with another flow algorithm: one clear line naming both.
    other = M.build_stream(meta["num_classes"], "temporal", backbone="resnet18", image_size=32,
                           num_segments=None, flow_length=2,
                           **dict(S.data_identity(meta),
                                  preparation=dict(PREP, flow="tvl1")))
    path = str(tmp_path / "tvl1.keras")
    other.save(path)
    r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={data_dir}",
                        f"--model={path}", "--num_segments=2", f"--output={tmp_path / 'x.npz'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "prepared with flow='dis' but the model was trained on data prepared with " \
           "flow='tvl1'" in r.stderr
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------
# the shipped-model experiment
# ---------------------------------------------------------------------------
def test_predict_from_copied_keras_files_alone(pair, tmp_path):
    spatial, temporal = pair
    trained = tmp_path / "run"
    trained.mkdir()
    for stream, model in (("spatial", spatial), ("temporal", temporal)):
        model.save(str(trained / f"{stream}.keras"))
    # What a user ships: the .keras files, no train_config.json, no data.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("spatial.keras", "temporal.keras"):
        shutil.copy(trained / name, shipped / name)
    shutil.rmtree(trained)
    video = str(tmp_path / "clip.avi")
    synthetic.write_video(video, synthetic.render_clip(
        synthetic.CLASSES[0], np.random.default_rng(3), num_frames=10, height=48, width=64))

    r = subprocess.run([sys.executable, "-m", "experiments.predict", f"--video={video}",
                        f"--spatial_model={shipped / 'spatial.keras'}",
                        f"--temporal_model={shipped / 'temporal.keras'}",
                        "--num_segments=2", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning" not in r.stderr  # nothing had to be guessed
    pred = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(t["class"] for t in pred["top"]) == sorted(CLASSES)
    assert pred["class_names_source"] == "model"
    for stream in ("spatial", "temporal"):
        used = pred["preparation"][stream]
        assert used["source"] == "model"
        assert (used["short_side"], used["flow"], used["flow_bound"],
                used["flow_implementation"]) == (40, "dis", 20.0, "opencv")
        assert pred["models"][stream]["class_names"] == CLASSES

    # The same numbers as the library with those settings written out.
    settings = predict_video.PrepSettings(short_side=40, flow="dis", flow_bound=20.0)
    res = predict_video.predict_video(video, spatial, temporal, settings, num_segments=2)
    top = {t["class"]: t["probability"] for t in pred["top"]}
    np.testing.assert_allclose([top[c] for c in CLASSES], res["fused"], atol=1e-5)


def test_predict_with_an_old_model_warns_and_uses_the_fallback(pair, tmp_path, capsys):
    spatial, _ = pair
    old = _legacy(spatial)
    default = predict_video.PrepSettings(short_side=32, flow="dis")
    capsys.readouterr()
    resolved = predict_video.resolve({"spatial": (str(tmp_path / "old.keras"), old)}, default)
    err = capsys.readouterr().err
    assert resolved.settings["spatial"] == default and resolved.sources["spatial"] == "defaults"
    assert resolved.class_names is None and resolved.class_names_source == "unknown"
    # One line for this model (identity() said once that it has none).
    ours = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(ours) == 2 and "saved without its identity" in ours[0], err
    assert "old.keras: the model does not carry its preparation settings (using " in ours[1]
    assert "or its class names (showing class indices)" in ours[1]
    # Asked again: nothing more is said.
    predict_video.resolve({"spatial": (str(tmp_path / "old.keras"), old)}, default)
    assert "warning" not in capsys.readouterr().err


def test_imported_flow_is_part_of_the_identity_and_predict_computes_it_with_tvl1(capsys):
    """Issue 18: a model trained on imported frame folders says so, and predict
    computes the same algorithm itself, with a note (never silently)."""
    imported = dict(PREP, flow="tvl1", flow_implementation="imported",
                    flow_source="rawframes", flow_rounding="cvround", short_side=0)
    meta = {"settings": imported, "classes": CLASSES, "name": "ucf101",
            "frame_size": {"stored_short_side": 48}}
    ident = S.data_identity(meta)
    assert ident["preparation"]["flow_source"] == "rawframes"
    assert ident["preparation"]["flow_rounding"] == "cvround"
    assert ident["preparation"]["short_side"] == 48  # the size the records hold
    model = _stream("temporal", preparation=ident["preparation"])
    assert I.identity(model).preparation["flow_source"] == "rawframes"
    settings = predict_video.from_preparation(I.identity(model).preparation,
                                          predict_video.PrepSettings())
    assert (settings.flow, settings.flow_implementation, settings.short_side) == \
        ("tvl1", "opencv", 48)
    assert "imported (rawframes, rounding cvround)" in capsys.readouterr().err
    with pytest.raises(MatEffNetError, match="farneback flow"):
        predict_video.from_preparation(dict(imported, flow="farneback"), predict_video.PrepSettings())
