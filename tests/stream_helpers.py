"""Shared by the prediction-at-scale tests: tiny saved models and lossless videos.

Videos are written with FFV1 (lossless, bgr0) in Matroska through PyAV,
with each frame's own presentation time, so a test can give frames uneven
timestamps (a variable-frame-rate file) and cut a window out of a video
without re-encoding losses (what OpenCV decodes is exactly what was
written).
"""

import fractions

import keras
import numpy as np

from data_prep import synthetic
from mat_effnet.modeling import models as M

CLASSES = ["RedSquareRight", "PurpleCrossSpin", "BlueSquareRight"]
# DIS for speed; short side 40 keeps a frame 53x40.
PREP = {"short_side": 40, "flow": "dis", "flow_implementation": "opencv",
        "flow_bound": 20.0, "jpeg_quality": 90, "schema_version": 1}
SMALL = dict(backbone="resnet18", image_size=32, num_segments=None, flow_length=2)


def stream_models(seed: int = 3, prep=None):
    keras.utils.set_random_seed(seed)
    return tuple(M.build_stream(len(CLASSES), s, class_names=CLASSES, dataset="ucf101",
                                preparation=prep or PREP, train_segments=3, **SMALL)
                 for s in ("spatial", "temporal"))


def save_models(tmp_path, prep=None):
    spatial, temporal = stream_models(prep=prep)
    paths = (str(tmp_path / "spatial.keras"), str(tmp_path / "temporal.keras"))
    spatial.save(paths[0])
    temporal.save(paths[1])
    return paths


def write_lossless(path, frames, times_s) -> str:
    """Writes RGB uint8 frames shown at ``times_s`` (seconds, increasing) as FFV1 in .mkv."""
    import av

    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=1000)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "bgr0"
        stream.time_base = stream.codec_context.time_base = tb
        for frame, t in zip(frames, times_s):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts, vf.time_base = int(round(t * 1000)), tb
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def two_actions(n: int = 24, height: int = 40, width: int = 56, seed: int = 0):
    """A video whose action changes halfway: RedSquareRight, then PurpleCrossSpin."""
    rng = np.random.default_rng(seed)
    return (synthetic.render_clip("RedSquareRight", rng, n, height, width)
            + synthetic.render_clip("PurpleCrossSpin", rng, n, height, width))
