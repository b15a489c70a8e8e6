"""The temporal path carries motion: flow fields in, their direction learned.

Issue 20: the demo's flow stream failed to learn right from down, so this
test guards the whole temporal input path end to end, on motion alone.
Three classes of videos whose flow is a patch of pure motion on a still
background, at a random place in every video: rightward (+x), downward
(+y) and upward (-y). The records are written as mat-effnet-prep writes
them (quantized with bound 20, JPEG), read back through the training
pipeline (random crops and horizontal flips, which negate x but must leave
y alone) and the test pipeline, and normalised by the temporal stream's
own input layer; a tiny CNN trained for a few epochs on them must then
tell the held-out videos apart. Down against up separates only if the flip
keeps the sign of y; right against the vertical classes only if the x and
y channels reach the model as x and y.
"""

import os

import cv2
import keras
import numpy as np
import tensorflow as tf

from mat_effnet.modeling import backbones, layers
from mat_effnet.data import input_pipeline
from mat_effnet import records
from mat_effnet.data.sampling import PipelineConfig
from mat_effnet.ops import quantize

H, W = 24, 32  # stored frame size
SIZE = 20  # crop size
FRAMES = 8  # 7 flow fields per video
FLOW_LENGTH = 2
BOUND = 20.0
MOTION_PX = 1.5  # as the demo's objects move at short side 64
CLASSES = ("right", "down", "up")
DIRECTIONS = {"right": (1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}


def _jpeg(plane):
    return cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _video(rng, label, video_id):
    """A record whose flow is MOTION_PX of one direction inside a 10 x 10 patch."""
    dx, dy = DIRECTIONS[CLASSES[label]]
    y0, x0 = rng.integers(0, H - 10), rng.integers(0, W - 10)
    # A slight drift of the whole frame per video, so that the still
    # background's level (128, or 127 once a flip has inverted x) tells
    # nothing about the class: only the patch does.
    drift_x, drift_y = rng.uniform(-0.4, 0.4, size=2)
    fx, fy = [], []
    for _ in range(FRAMES - 1):
        u, v = np.full((H, W), drift_x), np.full((H, W), drift_y)
        u[y0:y0 + 10, x0:x0 + 10] += MOTION_PX * dx
        v[y0:y0 + 10, x0:x0 + 10] += MOTION_PX * dy
        # Sub-pixel noise, as TV-L1 leaves on a still background.
        u += rng.normal(0.0, 0.1, u.shape)
        v += rng.normal(0.0, 0.1, v.shape)
        fx.append(_jpeg(quantize.quantize_flow(u, BOUND)))
        fy.append(_jpeg(quantize.quantize_flow(v, BOUND)))
    rgb = [_jpeg(np.full((H, W, 3), 128, np.uint8))] * FRAMES  # appearance says nothing
    return records.VideoRecord(video_id, label, CLASSES[label], 25.0, H, W, rgb, fx, fy)


def _write_dataset(root, per_class):
    rng = np.random.default_rng(0)
    shards = {}
    for split, n in per_class.items():
        videos = [_video(rng, label, f"{split}_{CLASSES[label]}_{k}")
                  for k in range(n) for label in range(len(CLASSES))]
        name = records.shard_filename("motion", split, 0, 1)
        records.write_shard(os.path.join(root, name), videos)
        shards[split] = [name]
    records.write_metadata(root, {"classes": list(CLASSES), "shards": shards,
                                  "flow": {"algorithm": "tvl1", "bound": BOUND}})
    return str(root)


def _tiny_flow_model():
    """The temporal stream's input normalisation, then a two-layer CNN."""
    channels = 2 * FLOW_LENGTH
    mean, std, reverse = backbones.backbone_spec("efficientnet_b0").input_statistics(channels)
    clips = keras.Input((None, SIZE, SIZE, channels), name="flow")
    frames = keras.layers.Lambda(lambda t: tf.reshape(t, (-1, SIZE, SIZE, channels)),
                                 name="fold")(clips)
    x = layers.ChannelStandardization(mean, std, reverse_channels=reverse,
                                      name="input_standardization")(frames)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    # Mean over the segments of each clip (TSN's consensus).
    x = keras.layers.Lambda(lambda t: tf.reduce_mean(tf.reshape(t[0], (tf.shape(t[1])[0], -1, 8)),
                                                     axis=1), name="consensus")([x, clips])
    out = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(clips, out)


def test_flow_direction_survives_the_pipeline_and_is_learned(tmp_path):
    keras.utils.set_random_seed(0)
    data = _write_dataset(tmp_path, {"train": 8, "test": 4})
    train_cfg = PipelineConfig(
        stream="temporal", num_segments=2, image_size=SIZE, flow_length=FLOW_LENGTH,
        training=True, flip=True, seed=0)
    test_cfg = PipelineConfig(
        stream="temporal", image_size=SIZE, flow_length=FLOW_LENGTH, training=False,
        test_segments=3, crops=1)
    train = input_pipeline.build_dataset(data, "train", train_cfg, 8, epochs=30)
    train = train.map(lambda clips, labels: (tf.cast(clips, tf.float32), labels))
    model = _tiny_flow_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss="sparse_categorical_crossentropy")
    model.fit(train, verbose=0)

    clips, labels = [], []
    for batch_clips, batch_labels in input_pipeline.build_dataset(data, "test", test_cfg, 12):
        clips.append(batch_clips.numpy()[:, 0].astype(np.float32))  # the one crop
        labels.append(batch_labels.numpy())
    clips, labels = np.concatenate(clips), np.concatenate(labels)
    assert np.bincount(labels).tolist() == [4, 4, 4]
    predicted = model.predict(clips, verbose=0).argmax(axis=1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, predicted), 1)
    # All 12 held-out videos: down and up are 2 of the 3 classes, so a flip
    # that negated y (or lost x) would cap this near 8/12.
    assert (predicted == labels).mean() >= 11 / 12, confusion
