"""Two tiny streams trained to a clear margin on generated motion, for the export tests.

Four classes, each a smooth texture with its own tint moving its own way:
the spatial stream can only tell them apart by the tint, the temporal
stream only by the direction of the TV-L1 flow. Videos are prepared as
``mat-effnet-prep`` prepares them (`mat_effnet.encoding.encode` with the
Keras TV-L1, short side 40), their clips cut by the training pipeline's
`mat_effnet.data.clips.make_clip`, and each stream fitted on them with
Keras. A trained model has confident, input-driven scores, which is what
an export's accuracy has to be stated on: an untrained network's near-flat
softmax meets any tolerance and moves arbitrarily under weight rounding.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np

from data_prep import synthetic
from mat_effnet.modeling import models as M

CLASSES = ["Drift", "Jump", "Spin", "Wave"]
# class -> (tint of the texture in RGB, step in pixels per frame (dx, dy))
MOTION = {"Drift": ((1.0, 0.45, 0.45), (2, 0)), "Jump": ((0.45, 1.0, 0.45), (0, 2)),
          "Spin": ((0.45, 0.45, 1.0), (-2, 0)), "Wave": ((1.0, 1.0, 0.35), (0, -2))}
PREP = {"short_side": 40, "flow": "tvl1", "flow_implementation": "keras",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 2}
SMALL = dict(backbone="efficientnet_b0", image_size=32, num_segments=None, flow_length=2,
             key_dim=16, fc_units=32, class_names=CLASSES, dataset="ucf101")
MARGIN = 24  # texture beyond the frame on each side: 12 frames at 2 px


def motion_frames(cls: str, height: int, width: int, frames: int, seed: int) -> list:
    """RGB frames of class ``cls``: its tinted texture translating by its step."""
    tint, (dx, dy) = MOTION[cls]
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (height + 2 * MARGIN, width + 2 * MARGIN, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 1.5).astype(np.float32)
    big = np.clip(big * np.asarray(tint, np.float32), 0, 255).astype(np.uint8)
    return [big[MARGIN + dy * i:MARGIN + dy * i + height, MARGIN + dx * i:MARGIN + dx * i + width]
            for i in range(frames)]


def write_motion_video(path: str, cls: str, height: int, width: int, frames: int,
                       seed: int) -> str:
    synthetic.write_video(path, motion_frames(cls, height, width, frames, seed))
    return path


def stream_clips(stream: str, videos: list[str], *, draws: int, seed: int = 0) -> np.ndarray:
    """Training clips (K = 3) of each video, ``draws`` random crops each, no flips.

    No flips: a flipped "Drift" moves like "Spin" (TSN's flip suits real
    actions, not classes that are directions).
    """
    import tensorflow as tf

    from mat_effnet import records
    from mat_effnet.data import clips, sampling
    from mat_effnet.encoding import encode

    settings = encode.EncodeSettings(short_side=40, flow="tvl1", flow_implementation="keras")
    cfg = sampling.PipelineConfig(stream=stream, image_size=32, flow_length=2, training=True,
                                  flip=False, num_segments=3)
    out = []
    for v, path in enumerate(videos):
        record = next(iter(encode.encode_video(path, settings)))
        parsed = records.parse(tf.constant(records.serialize(record)))
        for d in range(draws):
            out.append(clips.make_clip(parsed, cfg, seed=seed * 100003 + v * 101 + d)[0].numpy())
    return np.stack(out)


def train_stream(stream: str, clips_: np.ndarray, labels: np.ndarray, *, epochs: int,
                 seed: int) -> keras.Model:
    """One stream fitted on ``clips_`` (uint8, (n, 3, 32, 32, C)) with Adam."""
    keras.utils.set_random_seed(seed)
    model = M.build_stream(len(CLASSES), stream, preparation=PREP, train_segments=3,
                           bn_momentum=0.9, **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=5.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(clips_.astype("float32"), labels, batch_size=8, epochs=epochs, shuffle=True,
              verbose=0)
    return model
