"""Export figures: the SavedModel with TV-L1 inside against ``mat-effnet-predict``, and TFLite.

``python -m mat_effnet.benchmark.export_figures --output=export_bench.json`` builds two
EfficientNet-B0 + attention streams (paper Sect. 3.3, random weights: speed
does not depend on them), exports them (`mat_effnet.serving.saved_model_export`), and on one
generated video at UCF101's 320x240 times:

* the export itself and its size; loading it; its first call (XLA compiles
  TV-L1 for the working size) and warm calls;
* the warm graph by stage, each stage traced alone from the export's own
  pieces: resize, grey, TV-L1 over the pairs the positions read,
  quantization and JPEG, the two streams;
* `mat_effnet.serving.predict_video.predict_video` on the same file with the same models
  and the Keras TV-L1 (prep's path: decode, flow of every pair, JPEG, records);
* TFLite per stream, float32 and int8: size, latency per clip, and against
  the Keras model on held-out generated clips the top-1 agreement and the
  largest score difference.

It is a separate binary, not a section of ``mat-effnet-benchmark``: an export
traces TV-L1 several times over, minutes on a 2-core CPU, which the
benchmark's CI run cannot carry.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np


def _timed(fn, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def measure(work_dir: str, seconds: float = 4.0, short_side: int = 256, image_size: int = 224,
            segments: int = 25, flow_length: int = 10, tflite_clips: int = 8) -> dict:
    import cv2
    import tensorflow as tf

    from data_prep import synthetic
    from mat_effnet.evaluation import protocol
    from mat_effnet.serving import saved_model_export, prep_graph, predict_video, tflite_export
    from mat_effnet.modeling import models as M

    prep = {"short_side": short_side, "flow": "tvl1", "flow_implementation": "keras",
            "flow_bound": 20.0, "jpeg_quality": 90}
    classes = [f"class_{i}" for i in range(101)]
    paths = {}
    for stream in ("spatial", "temporal"):
        model = M.build_stream(101, stream, num_segments=None, image_size=image_size,
                               flow_length=flow_length, class_names=classes,
                               preparation=prep, weights=None)
        paths[stream] = os.path.join(work_dir, f"{stream}.keras")
        model.save(paths[stream])
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (400, 600, 3), np.uint8), (0, 0), 2.0)
    count = int(seconds * 25)
    frames = [scene[i // 2:i // 2 + 240, i:i + 320] for i in range(count)]
    video = os.path.join(work_dir, "clip.avi")
    synthetic.write_video(video, frames)
    decoded = np.stack(frames)
    out = {"settings": {"video": f"{count} frames 320x240 (25 fps)", "short_side": short_side,
                        "image_size": image_size, "segments": segments,
                        "flow_length": flow_length, "backbone": "efficientnet_b0 + attention",
                        "frame_sizes": ["4:3"], "crops": 1}}

    t = time.perf_counter()
    meta = saved_model_export.export(paths["spatial"], paths["temporal"], os.path.join(work_dir, "saved"),
                         saved_model_export.ExportSettings(num_segments=segments, frame_sizes=("4:3",)))
    out["export_s"] = time.perf_counter() - t
    out["export_bytes"] = meta["size_bytes"]
    t = time.perf_counter()
    serve = tf.saved_model.load(os.path.join(work_dir, "saved")).signatures["serving_default"]
    out["load_s"] = time.perf_counter() - t
    x = tf.constant(decoded)
    t = time.perf_counter()
    serve(frames=x)
    out["first_call_s"] = time.perf_counter() - t
    out["warm_call_s"] = _timed(lambda: serve(frames=x))

    # The stages, each traced from the export's own pieces (not loaded).
    serving, _ = saved_model_export.build(paths["spatial"], paths["temporal"],
                              saved_model_export.ExportSettings(num_segments=segments, frame_sizes=("4:3",)))

    def stage(fn, *args):
        f = tf.function(fn, autograph=False)
        return _timed(lambda: f(*args), repeat=2)

    resized = prep_graph.resize_short_side(x, short_side)
    grey = prep_graph.to_grey(resized)
    from mat_effnet.ops import quantize

    unique = serving.temporal.predictor.fields_needed(int(grey.shape[0]))
    prev, nxt = tf.gather(grey, unique), tf.gather(grey, unique + 1)
    flow = serving.flow(prev, nxt)
    out["stages_warm_s"] = {
        "resize": stage(lambda v: prep_graph.resize_short_side(v, short_side), x),
        "grey": stage(prep_graph.to_grey, resized),
        f"tvl1 ({int(tf.size(unique))} pairs of {count - 1})": stage(serving.flow, prev, nxt),
        "quantize+jpeg": stage(lambda f: prep_graph.jpeg_round_trip(
            tf.reshape(tf.transpose(quantize.quantize_flow(f, 20.0), [0, 3, 1, 2]),
                       [-1, flow.shape[1], flow.shape[2], 1]), 90), flow),
        "spatial stream (resize, jpeg, views, model)": stage(serving.spatial_scores, x),
    }
    models = {s: protocol.load_model(p) for s, p in paths.items()}
    resolved = predict_video.resolve({s: (paths[s], m) for s, m in models.items()},
                                 predict_video.PrepSettings())
    t = time.perf_counter()
    predict_video.predict_video(video, models["spatial"], models["temporal"], resolved.settings,
                            segments)
    out["predict_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pred = predict_video.predict_video(video, models["spatial"], models["temporal"],
                                   resolved.settings, segments)
    out["predict_warm_s"] = time.perf_counter() - t
    out["predict_parts_s"] = {k: v for k, v in pred.items() if k.endswith("_s")}

    table = {}
    for stream, model in models.items():
        c = int(model.inputs[0].shape[-1])
        clips = [cv2.GaussianBlur(rng.integers(0, 256, (segments * image_size, image_size, c),
                                               np.uint8), (0, 0), 1.5)
                 .reshape(1, segments, image_size, image_size, c) for _ in range(tflite_clips)]
        want = np.stack([model(cl.astype("float32"), training=False).numpy()[0] for cl in clips])
        for variant in tflite_export.VARIANTS:
            data = tflite_export.convert(model, segments, variant)
            got = np.stack([tflite_export.run(data, cl) for cl in clips])
            latency = _timed(lambda: tflite_export.run(data, clips[0]), repeat=2)
            table[f"{stream}.{variant}"] = {
                "bytes": len(data), "latency_s_per_clip": latency,
                "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
                "max_abs_score_diff": float(np.abs(got - want).max()),
                "flex_ops": tflite_export.flex_ops(data)}
    out["tflite"] = table
    return out


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mat_effnet.benchmark.export_figures")
    parser.add_argument("--output", default="export_bench.json")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--short_side", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(tmp, args.seconds, args.short_side, args.image_size)
    from mat_effnet.common import atomic

    atomic.write_json(args.output, out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
