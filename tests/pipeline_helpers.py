"""Shared by the input-pipeline tests (test_sampling, test_clips, test_input_pipeline).

Frames encode their index in their pixel values (RGB frame i is a flat gray
level 10 + 7i, flow_x i is 20 + 7i, flow_y i is 23 + 7i), so a clip tells
which frames it was built from; content checks compare against the same
JPEG bytes decoded by TensorFlow, so they can be exact.
"""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from mat_effnet import records
from mat_effnet.data.clips import make_clip

H, W, S = 40, 48, 32


def _jpeg(array):
    return cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _rgb_level(i):
    return 10 + 7 * i


def _x_level(i):
    return 20 + 7 * i


def _y_level(i):
    return 23 + 7 * i


def _record(t, h=H, w=W, flow=True, video_id="v", label=0, rgb=None, fx=None, fy=None):
    """A record of t frames; default frames are flat levels encoding the index."""
    rgb = rgb or [_jpeg(np.full((h, w, 3), _rgb_level(i), np.uint8)) for i in range(t)]
    if flow:
        fx = fx or [_jpeg(np.full((h, w), _x_level(i), np.uint8)) for i in range(t - 1)]
        fy = fy or [_jpeg(np.full((h, w), _y_level(i), np.uint8)) for i in range(t - 1)]
    else:
        fx = fy = []
    return records.VideoRecord(video_id, label, f"c{label}", 25.0, h, w, rgb, fx, fy)


def _parse(rec):
    return records.parse(tf.constant(records.serialize(rec)))


def _decoded(jpeg, channels):
    return tf.io.decode_jpeg(jpeg, channels=channels).numpy().astype(np.float32)


def _clip_fn(cfg):
    """make_clip traced as a graph, as tf.data runs it."""

    @tf.function
    def fn(serialized, seed):
        return make_clip(records.parse(serialized), cfg, seed)

    def run(rec, seed):
        clip, label = (v.numpy() for v in fn(tf.constant(records.serialize(rec)),
                                             tf.constant([seed, 7], tf.int64)))
        assert clip.dtype == np.dtype(cfg.clip_dtype)  # uint8 unless asked otherwise
        return clip, label

    return run


def _flat_index(image, level_fn, n=64):
    """The frame index whose flat level ``image`` shows (within JPEG's ±1)."""
    image = np.asarray(image, np.float32)  # uint8 clips: no wrap-around below
    mean = float(image.mean())
    idx = int(round((mean - level_fn(0)) / 7))
    assert 0 <= idx < n
    assert np.abs(image - level_fn(idx)).max() <= 1, (mean, idx)
    return idx


def _mirror_flow(view):
    """Expected flip of flow frames (..., H, W, 2L): mirror, x -> 255 - x."""
    out = np.asarray(view, np.float32)[..., ::-1, :].copy()
    out[..., 0::2] = 255.0 - out[..., 0::2]
    return out


def _gradient(h, w, shift, horizontal=True):
    ramp = np.arange(w if horizontal else h, dtype=np.float32) * (180.0 / max(w, h))
    img = ramp[None, :] if horizontal else ramp[:, None]
    return np.broadcast_to(img + shift, (h, w)).astype(np.uint8)


def _noise_frames(n, h=H, w=W, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels == 3 else (h, w)
    return [_jpeg(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def _smooth_noise(h, w, channels, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, channels), dtype=np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, channels)
    noise = rng.integers(0, 40, (h, w, channels), dtype=np.uint8)
    img = cv2.add(big, noise).reshape(h, w, channels)  # saturating: detail on a smooth field
    return img if channels == 3 else img[..., 0]


def _write_dataset(root, flow="tvl1", n_train=5, n_test=5, version=records.SCHEMA_VERSION):
    os.makedirs(root, exist_ok=True)
    shards = {}
    for split, n in (("train", n_train), ("test", n_test)):
        names = []
        for s, ids in enumerate((range(0, n, 2), range(1, n, 2))):
            name = records.shard_filename("toy", split, s, 2)
            records.write_shard(os.path.join(root, name), [
                _record(6 + i, video_id=f"{split}{i}", label=i % 3, flow=flow != "none")
                for i in ids], version)
            names.append(name)
        shards[split] = names
    records.write_metadata(root, {"classes": ["a", "b", "c"], "shards": shards,
                                  "flow": {"algorithm": flow, "bound": 20.0}}, version)
    return str(root)


VERSIONS = pytest.mark.parametrize("version", records.SCHEMA_VERSIONS)
