"""Tests of the MAT-EffNet model code.

Paper: Zhou et al., Multimedia Systems 2022, Sect. 3.2-3.3 (stream, attention,
late fusion), Sect. 4.2-4.3 and Tables 1-3 (backbones, ablation rows).

Kept small for 2 shared CPU cores: 32-64 px inputs (parameter counts do not
depend on the image size), few classes where the count does not matter.
Randomly initialised EfficientNet-B0 shrinks its activations to ~1e-5 in
inference mode (BN moving variance 1), which would make every probability
1/C and every equality test vacuous, so the value tests first "calibrate"
the BN moving statistics with one training-mode pass at momentum 0.
"""

import functools
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from mat_effnet.modeling import backbones as B  # noqa: E402
from mat_effnet.modeling import layers as mlayers  # noqa: E402
from mat_effnet.modeling import models as M  # noqa: E402
from mat_effnet.modeling import pretrained as P  # noqa: E402
from mat_effnet.modeling import resnet as R  # noqa: E402

# ---------------------------------------------------------------------------
# golden numbers
# ---------------------------------------------------------------------------
CLASSES = 101  # UCF101
FLOW_L = 10  # 2L = 20 flow channels

#: Backbone without top (input normalisation included), RGB and 20-ch flow.
BACKBONE_PARAMS = {
    ("efficientnet_b0", 3): 4_049_571,   # keras.applications EfficientNetB0
    ("efficientnet_b0", 20): 4_054_501,
    ("resnet50", 3): 23_587_712,         # keras.applications ResNet50
    ("resnet50", 20): 23_641_024,
    ("resnet18", 3): 11_186_112,         # torchvision 11,176,512 + BN stats
    ("resnet18", 20): 11_239_424,
    ("resnet34", 3): 21_301_696,         # torchvision 21,284,672 + BN stats
    ("resnet34", 20): 21_355_008,
}
#: Whole stream, 101 classes, L = 10: (backbone, stream, attention) -> params.
STREAM_PARAMS = {
    ("efficientnet_b0", "spatial", True): 5_807_880,
    ("efficientnet_b0", "spatial", False): 4_757_256,
    ("efficientnet_b0", "temporal", True): 5_812_810,
    ("efficientnet_b0", "temporal", False): 4_762_186,
    ("resnet50", "spatial", True): 25_739_237,
    ("resnet50", "spatial", False): 24_688_613,
    ("resnet50", "temporal", True): 25_792_549,
    ("resnet50", "temporal", False): 24_741_925,
    ("resnet18", "spatial", True): 12_551_205,
    ("resnet18", "spatial", False): 11_500_581,
    ("resnet18", "temporal", True): 12_604_517,
    ("resnet18", "temporal", False): 11_553_893,
    ("resnet34", "spatial", True): 22_666_789,
    ("resnet34", "spatial", False): 21_616_165,
    ("resnet34", "temporal", True): 22_720_101,
    ("resnet34", "temporal", False): 21_669_477,
}
# (stem kernel size, stem filters) -- the only backbone weights that depend
# on the number of input channels.
STEM = {"efficientnet_b0": (3, 32), "resnet50": (7, 64), "resnet18": (7, 64),
        "resnet34": (7, 64)}
# 2 heads x key_dim 256: Q, K, V projections 512 -> 2x256 (+ bias) and the
# output projection 2x256 -> 512 (+ bias): 4 x (512*512 + 512).
MHA_PARAMS = 4 * (512 * 512 + 512)


def head_params(feature_dim, classes, attention):
    fc = feature_dim * 512 + 512
    classifier = 512 * classes + classes
    return fc + (MHA_PARAMS if attention else 0) + classifier


def backbone_params_from_rgb(backbone, channels):
    """RGB count + the stem kernel's extra input channels (+ EfficientNet's
    Normalization mean and variance per extra channel)."""
    k, filters = STEM[backbone]
    extra = (channels - 3) * k * k * filters
    if backbone == "efficientnet_b0":
        extra += 2 * (channels - 3)
    return BACKBONE_PARAMS[(backbone, 3)] + extra


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def clip(model, batch=2, seed=0):
    shape = (batch,) + tuple(model.input_shape[1:])
    return np.random.RandomState(seed).uniform(0, 255, shape).astype("float32")


def calibrate(model, seed=1):
    """Moving BN statistics := statistics of one random batch, then scale the
    classifier so the logits have a spread of 0.5 (no saturated one-hot softmax,
    which would make the equality tests below vacuous)."""
    M.set_bn_momentum(model, 0.0)
    x = clip(model, 4, seed)
    model(x, training=True)
    logits = keras.Model(model.input, model.get_layer("logits").output)(x)
    kernel, bias = model.get_layer("logits").get_weights()
    spread = float(np.std(logits.numpy()))
    model.get_layer("logits").set_weights([kernel / (2.0 * spread), bias * 0.0])
    return model


def randomize(model, seed):
    """Give every learned layer distinct random values (positive, so BN
    variances stay valid) -- a stand-in for pretrained weights."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if layer.weights and not isinstance(
            layer, (keras.layers.Normalization, mlayers.ChannelStandardization)
        ):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32")
                 for w in layer.weights]
            )
    return model


def weighted(model):
    return {
        l.name: l.get_weights()
        for l in model.layers
        if l.weights and not isinstance(
            l, (keras.layers.Normalization, mlayers.ChannelStandardization))
    }


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@functools.lru_cache(maxsize=None)
def stream_101(backbone, stream, attention):
    return M.build_stream(CLASSES, stream, backbone=backbone, attention=attention,
                          image_size=32, num_segments=2, flow_length=FLOW_L)


@pytest.fixture(scope="module")
def eff_flow():
    """EfficientNet-B0 temporal stream with attention, L = 2, 3 segments."""
    # Seeded: the value tests need a fixed model, not a fresh random draw
    # (an unseeded draw occasionally gave a saturated softmax).
    keras.utils.set_random_seed(7)
    # Calibrated on the clips test_stream_output_is_a_softmax predicts
    # (clip(..., 3) is the first 3 of clip(..., 4) for the same seed), so
    # their logits have the calibrated spread.
    return calibrate(M.build_stream(5, "temporal", num_segments=3,
                                    image_size=32, flow_length=2), seed=0)


@pytest.fixture(scope="module")
def r18_pair():
    """Small calibrated ResNet-18 spatial (no attention) / temporal streams."""
    keras.utils.set_random_seed(8)
    spatial = calibrate(M.build_stream(4, "spatial", backbone="resnet18",
                                       attention=False, num_segments=3,
                                       image_size=32))
    temporal = calibrate(M.build_stream(4, "temporal", backbone="resnet18",
                                        num_segments=3, image_size=32,
                                        flow_length=1))
    return spatial, temporal


# ---------------------------------------------------------------------------
# parameter counts
# ---------------------------------------------------------------------------
def test_golden_counts_follow_from_arithmetic():
    # torchvision's ResNet-18/34 minus their 512*1000+1000 fc, plus Keras's
    # BN moving mean/variance (2 per BN channel: 4,800 / 8,512 channels).
    assert BACKBONE_PARAMS[("resnet18", 3)] == 11_689_512 - 513_000 + 2 * 4_800
    assert BACKBONE_PARAMS[("resnet34", 3)] == 21_797_672 - 513_000 + 2 * 8_512
    for (backbone, channels), count in BACKBONE_PARAMS.items():
        assert count == backbone_params_from_rgb(backbone, channels)
    for (backbone, stream, attention), count in STREAM_PARAMS.items():
        channels = 3 if stream == "spatial" else 2 * FLOW_L
        assert count == BACKBONE_PARAMS[(backbone, channels)] + head_params(
            B.FEATURE_DIM[backbone], CLASSES, attention)


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("stream", B.STREAMS)
@pytest.mark.parametrize("backbone", B.BACKBONES)
def test_stream_parameter_counts(backbone, stream, attention):
    model = stream_101(backbone, stream, attention)
    channels = 3 if stream == "spatial" else 2 * FLOW_L
    assert model.count_params() == STREAM_PARAMS[(backbone, stream, attention)]
    assert model.get_layer("backbone").count_params() == BACKBONE_PARAMS[
        (backbone, channels)]
    assert model.get_layer("fc").count_params() == B.FEATURE_DIM[backbone] * 512 + 512
    assert model.get_layer("logits").count_params() == 512 * CLASSES + CLASSES
    if attention:
        assert model.get_layer("attention").count_params() == MHA_PARAMS
    else:
        assert "attention" not in [l.name for l in model.layers]


def test_resnet18_34_match_he_et_al_with_top():
    # With the 1000-way top the trainable counts are He et al.'s/torchvision's.
    for builder, trainable, bn_channels, adds in (
        (R.ResNet18, 11_689_512, 4_800, 8), (R.ResNet34, 21_797_672, 8_512, 16)
    ):
        model = builder(include_top=True, input_shape=(64, 64, 3))
        n_trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        n_frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
        assert (n_trainable, n_frozen) == (trainable, 2 * bn_channels)
        names = [l.name for l in model.layers]
        assert sum(isinstance(l, keras.layers.Add) for l in model.layers) == adds
        # Projection shortcuts exactly where the shape changes.
        assert sorted(n for n in names if n.endswith("_0_conv")) == [
            "conv3_block1_0_conv", "conv4_block1_0_conv", "conv5_block1_0_conv"]
        conv1 = model.get_layer("conv1_conv")
        assert conv1.kernel.shape == (7, 7, 3, 64) and conv1.strides == (2, 2)
        assert not conv1.use_bias
        assert model.get_layer("pool1_pool").pool_size == (3, 3)
        # Overall stride 32.
        assert R.ResNet18(input_shape=(64, 96, 3)).output_shape == (None, 2, 3, 512)


# ---------------------------------------------------------------------------
# input normalisation (raw 0..255 in)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("stream", B.STREAMS)
@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet50", "resnet18"])
def test_input_normalisation_values(backbone, stream):
    bb = stream_101(backbone, stream, True).get_layer("backbone")
    channels = bb.input_shape[-1]
    x = np.random.RandomState(3).uniform(0, 255, (2, 32, 32, channels)).astype(
        "float32")
    name = ("input_normalization" if backbone == "efficientnet_b0"
            else "input_standardization")
    got = keras.Model(bb.input, bb.get_layer(name).output)(x).numpy()
    if stream == "temporal":
        expected = (x - 127.5) if backbone == "resnet50" else (x - 127.5) / 127.5
    elif backbone == "resnet50":
        expected = keras.applications.resnet50.preprocess_input(x.copy())
    else:
        expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
            [0.229, 0.224, 0.225])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------
def test_fold_and_token_layers_order_and_config():
    x = np.arange(2 * 3 * 2 * 2 * 4, dtype="float32").reshape(2, 3, 2, 2, 4)
    folded = mlayers.FoldSegments()(x).numpy()
    assert folded.shape == (6, 2, 2, 4)
    for b in range(2):
        for s in range(3):
            np.testing.assert_array_equal(folded[b * 3 + s], x[b, s])
    to_tokens = mlayers.SegmentsToTokens(3)
    pooled = folded.mean(axis=(1, 2))
    np.testing.assert_array_equal(to_tokens(pooled).numpy(), x.mean(axis=(2, 3)))
    spatial = to_tokens(folded).numpy()
    assert spatial.shape == (2, 12, 4)
    for b, s, i, j in [(0, 0, 0, 1), (1, 2, 1, 0), (1, 1, 1, 1)]:
        np.testing.assert_array_equal(spatial[b, s * 4 + i * 2 + j], x[b, s, i, j])
    clone = mlayers.SegmentsToTokens.from_config(to_tokens.get_config())
    assert clone.num_segments == 3
    fusion = mlayers.LateFusion((1.0, 3.0))
    assert fusion.get_config()["fusion_weights"] == [0.25, 0.75]
    std = mlayers.ChannelStandardization([1.0, 2.0, 3.0], [1.0, 2.0, 4.0],
                                         reverse_channels=True)
    y = std(np.array([[10.0, 20.0, 30.0]], "float32")).numpy()
    np.testing.assert_allclose(y, [[29.0, 9.0, 1.75]])  # (30-1)/1, (20-2)/2, (10-3)/4
    assert mlayers.ChannelStandardization.from_config(std.get_config()).std == [
        1.0, 2.0, 4.0]


# ---------------------------------------------------------------------------
# stream outputs and attention
# ---------------------------------------------------------------------------
def test_stream_output_is_a_softmax(eff_flow):
    assert eff_flow.input.name == "flow"
    assert eff_flow.input_shape == (None, 3, 32, 32, 4)
    p = eff_flow.predict(clip(eff_flow, 3), verbose=0)
    assert p.shape == (3, 5) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # Neither the degenerate 1/C nor a saturated one-hot.
    assert p.min() >= 0 and 0.05 < np.ptp(p) and p.max() < 0.99
    assert eff_flow.get_layer("dropout").rate == 0.2
    mha = eff_flow.get_layer("attention")
    assert (mha.num_heads, mha.key_dim) == (2, 256)
    assert eff_flow.get_layer("fc").units == 512


def test_attention_scores_match_a_manual_computation(eff_flow):
    x = clip(eff_flow, 2, seed=5)
    out = M.build_attention_model(eff_flow).predict(x, verbose=0)
    scores, probs = out["attention_scores"], out["probabilities"]
    assert scores.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, eff_flow.predict(x, verbose=0), atol=1e-6)
    # Eq. 3-5 by hand from the Fc tokens: softmax(QK^T / sqrt(256)) V W_O,
    # then the mean over tokens and the classifier.
    tokens = keras.Model(eff_flow.input, eff_flow.get_layer("fc").output)(x).numpy()
    wq, bq, wk, bk, wv, bv, wo, bo = eff_flow.get_layer("attention").get_weights()
    q = np.einsum("btd,dnh->btnh", tokens, wq) + bq
    k = np.einsum("btd,dnh->btnh", tokens, wk) + bk
    v = np.einsum("btd,dnh->btnh", tokens, wv) + bv
    a = softmax(np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(256.0))
    np.testing.assert_allclose(scores, a, atol=1e-4)
    attended = np.einsum("bnts,bsnh->btnh", a, v)
    attended = np.einsum("btnh,nhd->btd", attended, wo) + bo
    w, b = eff_flow.get_layer("logits").get_weights()
    np.testing.assert_allclose(probs, softmax(attended.mean(axis=1) @ w + b),
                               atol=1e-4)


def test_no_attention_head_is_mean_of_fc(r18_pair):
    spatial, _ = r18_pair
    x = clip(spatial, 2, seed=6)
    feats = keras.Model(spatial.input, spatial.get_layer("tokens").output)(x).numpy()
    assert feats.shape == (2, 3, 512)
    wf, bf = spatial.get_layer("fc").get_weights()
    w, b = spatial.get_layer("logits").get_weights()
    expected = softmax((feats @ wf + bf).mean(axis=1) @ w + b)
    np.testing.assert_allclose(spatial.predict(x, verbose=0), expected, atol=1e-5)


def test_segment_order_does_not_matter(eff_flow, r18_pair):
    # No positional encoding: self-attention is permutation-equivariant over
    # the tokens and the token mean is invariant, so both variants give the
    # same output for any segment order.
    spatial_no_attention, _ = r18_pair
    for model in (eff_flow, spatial_no_attention):
        x = clip(model, 2, seed=7)
        p = model.predict(x, verbose=0)
        np.testing.assert_allclose(model.predict(x[:, [2, 0, 1]], verbose=0), p,
                                   atol=1e-5)
        changed = x.copy()
        changed[:, 1] = 255.0 - changed[:, 1]
        assert np.abs(model.predict(changed, verbose=0) - p).max() > 1e-3


def test_spatial_tokens():
    model = calibrate(M.build_stream(3, "spatial", backbone="resnet18",
                                     num_segments=3, image_size=64,
                                     attention_tokens="spatial"))
    assert M.attention_token_grid(model) == (3, 2, 2)
    assert "avg_pool" not in [l.name for l in model.layers]
    x = clip(model, 2, seed=8)
    out = M.build_attention_model(model).predict(x, verbose=0)
    assert out["attention_scores"].shape == (2, 2, 12, 12)
    np.testing.assert_allclose(out["attention_scores"].sum(-1), 1.0, atol=1e-5)
    # The tokens layer's input is the backbone's node in this (outer) graph.
    fmap = keras.Model(model.input, model.get_layer("tokens").input)(x).numpy()
    tokens = keras.Model(model.input, model.get_layer("tokens").output)(x).numpy()
    np.testing.assert_allclose(tokens, fmap.reshape(2, 12, 512), atol=1e-6)
    np.testing.assert_allclose(
        model.predict(x[:, [1, 2, 0]], verbose=0), out["probabilities"], atol=1e-5)


# ---------------------------------------------------------------------------
# weights: cross-modality initialisation, files, "imagenet"
# ---------------------------------------------------------------------------
def assert_cross_modal_copy(target_backbone, source_backbone, channels):
    """Every learned layer equal; the stem kernel, if the channel count
    differs, equal to the RGB mean repeated ``channels`` times."""
    src, tgt = weighted(source_backbone), weighted(target_backbone)
    assert set(src) == set(tgt) and len(tgt) > 20
    stem = "stem_conv" if "stem_conv" in tgt else "conv1_conv"
    for name, values in src.items():
        for s, t in zip(values, tgt[name]):
            if name == stem and s.ndim == 4 and channels != s.shape[2]:
                expected = np.repeat(s.mean(axis=2, keepdims=True), channels, 2)
                assert t.shape[2] == channels
                np.testing.assert_allclose(t, expected, rtol=1e-6)
            else:
                np.testing.assert_array_equal(t, s)


def test_cross_modality_init_from_weights_file(tmp_path):
    rgb = randomize(M.build_backbone("efficientnet_b0", 3, 32), seed=11)
    path = str(tmp_path / "rgb_backbone.weights.h5")
    rgb.save_weights(path)
    flow = M.build_stream(5, "temporal", image_size=32, flow_length=2,
                          num_segments=2, weights=path)
    backbone = flow.get_layer("backbone")
    assert_cross_modal_copy(backbone, rgb, channels=4)
    # Flow statistics, not ImageNet's RGB ones.
    norm = backbone.get_layer("input_normalization")
    np.testing.assert_allclose(norm.adapt_mean.numpy(), [0.5] * 4)
    np.testing.assert_allclose(norm.adapt_variance.numpy(), [0.25] * 4)
    # The spatial stream copies the same file unchanged, stem included.
    spatial = M.build_stream(5, "spatial", image_size=32, num_segments=2,
                             weights=path)
    sw, rw = weighted(spatial.get_layer("backbone")), weighted(rgb)
    for name in rw:
        for a, b in zip(sw[name], rw[name]):
            np.testing.assert_array_equal(a, b)


def test_cross_modality_init_function_from_keras_stream(tmp_path):
    rgb_stream = M.build_stream(3, "spatial", backbone="resnet18", image_size=32,
                                num_segments=2)
    randomize(rgb_stream.get_layer("backbone"), seed=12)
    path = str(tmp_path / "rgb_stream.keras")
    rgb_stream.save(path)
    flow = M.build_stream(3, "temporal", backbone="resnet18", image_size=32,
                          num_segments=2, flow_length=3)
    head_before = flow.get_layer("fc").get_weights()
    assert P.cross_modality_init(flow, path) is flow
    assert_cross_modal_copy(flow.get_layer("backbone"),
                            rgb_stream.get_layer("backbone"), channels=6)
    for a, b in zip(flow.get_layer("fc").get_weights(), head_before):
        np.testing.assert_array_equal(a, b)  # the head is not touched
    # A keras.Model works as a source too, and a flow source is refused.
    P.cross_modality_init(flow.get_layer("backbone"), rgb_stream)
    with pytest.raises(ValueError, match="rgb_weights_source.*3-channel"):
        P.cross_modality_init(flow, flow)


def test_imagenet_weights_go_through_keras_loader(tmp_path, monkeypatch):
    # Replace only the file Keras would download with a random stand-in, so
    # this exercises keras.applications' own weights="imagenet" code path
    # whether or not the network is reachable.
    from keras.src.utils import file_utils

    source = randomize(keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3)), seed=13)
    stand_in = str(tmp_path / "efficientnetb0_notop.h5")
    source.save(stand_in)
    requested = []

    def fake_get_file(fname=None, origin=None, **kwargs):
        requested.append(fname)
        return stand_in

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    flow = M.build_stream(5, "temporal", image_size=32, flow_length=2,
                          num_segments=2, weights="imagenet")
    assert requested == ["efficientnetb0_notop.h5"]
    assert_cross_modal_copy(flow.get_layer("backbone"), source, channels=4)
    rgb = M.build_backbone("efficientnet_b0", 3, 32, weights="imagenet")
    assert_cross_modal_copy(rgb, source, channels=3)
    # Offline users pass the cached Keras file itself (legacy .h5 format).
    assert_cross_modal_copy(
        M.build_backbone("efficientnet_b0", 3, 32, weights=stand_in), source, 3)
    norm = rgb.get_layer("input_normalization")
    np.testing.assert_allclose(norm.adapt_mean.numpy(), [0.485, 0.456, 0.406],
                               rtol=1e-6)
    np.testing.assert_allclose(norm.adapt_variance.numpy(),
                               np.square([0.229, 0.224, 0.225]), rtol=1e-6)


# ---------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------
all_layers = M._all_layers  # every layer, nested models included


def test_save_load_and_export_give_identical_predictions(eff_flow, tmp_path):
    assert not any(type(l).__name__ == "Lambda" for l in all_layers(eff_flow))
    x = clip(eff_flow, 2, seed=9)
    expected = eff_flow.predict(x, verbose=0)
    path = str(tmp_path / "flow.keras")
    eff_flow.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert {l.momentum for l in all_layers(loaded)
            if isinstance(l, keras.layers.BatchNormalization)} == {0.0}
    scores = M.build_attention_model(loaded).predict(x, verbose=0)
    np.testing.assert_allclose(scores["probabilities"], expected, atol=1e-6)
    export_dir = str(tmp_path / "flow_savedmodel")
    eff_flow.export(export_dir, verbose=False)
    # Keep a reference: the restored object owns the variables `serve` reads.
    restored = tf.saved_model.load(export_dir)
    served = restored.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_bn_momentum_override_survives_saving(tmp_path):
    model = M.build_stream(3, "spatial", backbone="resnet18", image_size=32,
                           num_segments=1, bn_momentum=0.7)
    bns = [l for l in all_layers(model)
           if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 20 and {l.momentum for l in bns} == {0.7}
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert {l.momentum for l in all_layers(loaded)
            if isinstance(l, keras.layers.BatchNormalization)} == {0.7}


def test_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = M.build_stream(3, "spatial", backbone="resnet18", image_size=32,
                               num_segments=2)
        p = model(clip(model)).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# two-stream fusion
# ---------------------------------------------------------------------------
def test_two_stream_is_the_weighted_average(r18_pair, tmp_path):
    spatial, temporal = r18_pair
    rgb, flow = clip(spatial, 2, seed=1), clip(temporal, 2, seed=2)
    ps, pt = spatial.predict(rgb, verbose=0), temporal.predict(flow, verbose=0)
    assert np.abs(ps - pt).max() > 1e-2  # the fusion weights are observable
    model = M.build_two_stream(spatial, temporal)
    assert [t.name for t in model.inputs] == ["rgb", "flow"]
    fused = model.predict({"rgb": rgb, "flow": flow}, verbose=0)
    np.testing.assert_allclose(fused, 0.5 * ps + 0.5 * pt, atol=1e-6)
    np.testing.assert_allclose(model.predict([rgb, flow], verbose=0), fused,
                               atol=1e-6)
    weighted_model = M.build_two_stream(spatial, temporal, (1.0, 3.0),
                                        name="weighted")
    np.testing.assert_allclose(weighted_model.predict([rgb, flow], verbose=0),
                               0.25 * ps + 0.75 * pt, atol=1e-6)
    path = str(tmp_path / "two_stream.keras")
    weighted_model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict([rgb, flow], verbose=0),
                               0.25 * ps + 0.75 * pt, atol=1e-6)


def test_build_mat_effnet_from_config():
    model = M.build_mat_effnet(3, backbone="resnet18", image_size=32,
                               num_segments=2, flow_length=2, bn_momentum=0.9)
    assert [t.name for t in model.inputs] == ["rgb", "flow"]
    assert model.input_shape == [(None, 2, 32, 32, 3), (None, 2, 32, 32, 4)]
    assert model.get_layer("fusion").fusion_weights == [0.5, 0.5]
    p = model.predict([np.zeros((1, 2, 32, 32, 3)), np.zeros((1, 2, 32, 32, 4))],
                      verbose=0)
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="resnet101"), "backbone must be one of.*efficientnet_b0"),
    (dict(flow_length=0), "flow_length must be an integer >= 1"),
    (dict(num_classes=1), "num_classes must be an integer >= 2"),
    (dict(num_segments=0), "num_segments must be an integer >= 1"),
    (dict(stream="audio"), "stream must be one of 'spatial', 'temporal'"),
    (dict(attention_tokens="pixel"), "attention_tokens must be one of"),
    (dict(image_size=16), "image_size must be"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (dict(bn_momentum=1.5), "bn_momentum must be None or a number"),
    (dict(attention="yes"), "attention must be True or False"),
    (dict(backbone="resnet18", weights="imagenet"),
     "weights='imagenet' is not available for backbone='resnet18'.*local"),
    (dict(weights="/nonexistent/rgb.weights.h5"), "weights: no such file"),
    (dict(weights=3), "weights must be None, 'imagenet'"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(num_classes=5, stream="spatial", image_size=32, num_segments=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.build_stream(**args)


def test_weights_of_another_architecture_or_channel_count(tmp_path, r18_pair):
    r18_file = str(tmp_path / "r18.weights.h5")
    M.build_backbone("resnet18", 3, 32).save_weights(r18_file)
    with pytest.raises(ValueError, match="weights: .* resnet34 backbone"):
        M.build_stream(3, backbone="resnet34", image_size=32, weights=r18_file)
    # ResNet-18's layer names are a subset of ResNet-34's: still refused.
    r34 = M.build_backbone("resnet34", 3, 32)
    with pytest.raises(ValueError, match="weights: .*not a 'resnet18'"):
        M.build_backbone("resnet18", 3, 32, weights=r34)
    # A 2-channel flow stream (L = 1) is neither RGB nor 6 channels (L = 3).
    _, temporal = r18_pair
    flow_file = str(tmp_path / "flow.keras")
    temporal.save(flow_file)
    with pytest.raises(ValueError, match="weights: .*2 input channels.*3 \\(RGB"):
        M.build_stream(3, "temporal", backbone="resnet18", image_size=32,
                       flow_length=3, weights=flow_file)


def test_bad_fusion_and_attention_requests(r18_pair):
    spatial, temporal = r18_pair
    with pytest.raises(ValueError, match="fusion weights must be non-negative"):
        M.build_two_stream(spatial, temporal, (1.0, -1.0))
    with pytest.raises(ValueError, match="fusion_weights must be a pair"):
        M.build_two_stream(spatial, temporal, (1.0, 1.0, 1.0))
    other = M.build_stream(7, "temporal", backbone="resnet18", image_size=32,
                           num_segments=3, flow_length=1)
    with pytest.raises(ValueError, match="same classes"):
        M.build_two_stream(spatial, other)
    with pytest.raises(ValueError, match="no 'attention' layer"):
        M.build_attention_model(spatial)
