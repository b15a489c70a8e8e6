"""The GPU check's measurements, in JAX-only code: TV-L1, the train step, one clip's prediction.

Used by `mat_effnet.benchmark.device`, which runs them on a machine with JAX
and Keras but no TensorFlow, so nothing here may import it, directly or
through `mat_effnet.records`, `mat_effnet.data.input_pipeline`, `mat_effnet.training.train_step`
or `mat_effnet.ops.optical_flow` (tests/test_benchmark_device.py runs the module with
``import tensorflow`` failing). What runs is `mat_effnet.ops.tvl1` (keras.ops),
`mat_effnet.modeling.models` (keras), `mat_effnet.ops.quantize`,
`mat_effnet.ops.image_ops`, `mat_effnet.evaluation.clip_prediction` and
`mat_effnet.data.views` (keras.ops) and the numpy-only `data_prep.known_flow`.

* `tvl1`: `mat_effnet.ops.tvl1.batch_tvl1` on B pairs of the known-flow accuracy
  mix (`data_prep.known_flow.accuracy_set`) solved in one compiled call;
  pairs/s, the inner iterations its epsilon-stop ran (``last_stats``), and
  the mean end-point error against the known flow as a check on the device's
  numerics.
* `train_step`: one MAT-EffNet stream (paper Sect. 3.3: backbone per segment,
  Fc, 2-head attention, classifier) built by `mat_effnet.modeling.models.build_stream`,
  trained by a `jax.jit`-compiled stateless step (SGD with momentum 0.9 and
  weight decay 5e-4, as Sect. 4.2 and `mat_effnet.training.trainer`), float32 or
  Keras's ``mixed_bfloat16`` policy. FLOPs are counted analytically
  (`forward_flops_per_image`); the peak comes from
  `mat_effnet.benchmark.machine.GPU_PEAKS` by device name.
* `predict_clip`: one clip from frames to fused scores with the flow inside,
  by the export's clip path and the one clip prediction
  (`mat_effnet.evaluation.clip_prediction`): RGB -> grey -> TV-L1 -> quantize ->
  both streams -> late average fusion (Sect. 3.3, Fig. 1), first call
  (compiles included) and warm. Without TensorFlow it has no JPEG round trip,
  and says so in its figure (``jpeg_round_trip``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from mat_effnet.benchmark.report import Stopwatch, rate
from mat_effnet.ops import quantize

# Published multiply-adds of a forward pass at 224 x 224 RGB: EfficientNet-B0
# 0.39 G (Tan & Le 2019, Table 2); ResNet-18/34/50 1.8 / 3.6 / 3.8 G (He et
# al. 2016, Table 1, which counts multiply-adds as "FLOPs").
PUBLISHED_MACS_224 = {"efficientnet_b0": 0.39e9, "resnet18": 1.8e9, "resnet34": 3.6e9,
                      "resnet50": 3.8e9}
# The stem convolution (kernel side, filters, stride 2) is the only layer whose
# cost depends on the input channels: a 2L-channel flow input adds its share.
_STEM = {"efficientnet_b0": (3, 32), "resnet18": (7, 64), "resnet34": (7, 64),
         "resnet50": (7, 64)}
# Prep's default flow bound (`EncodeSettings.flow_bound`), restated because
# mat_effnet.encoding imports OpenCV; tests/test_benchmark_device.py pins both equal.
FLOW_BOUND = 20.0
# A training step is forward + backward, the backward twice the forward.
TRAIN_FLOPS_PER_FORWARD = 3.0


def forward_flops_per_image(backbone: str, image_size: int, channels: int) -> float | None:
    """Forward FLOPs (2 per multiply-add) of one image through the backbone, analytically.

    The published 224-px RGB count scaled by (image_size / 224)^2, plus the
    stem's extra input channels: (channels - 3) x k^2 x filters x
    ceil(image_size / 2)^2 multiply-adds. The head (Fc 512, attention over a
    few tokens, classifier) is under 0.1 % and left out. None for a backbone
    without a published count.
    """
    macs = PUBLISHED_MACS_224.get(backbone)
    if macs is None:
        return None
    k, filters = _STEM[backbone]
    out_side = math.ceil(image_size / 2)
    macs = macs * (image_size / 224.0) ** 2 + (channels - 3) * k * k * filters * out_side ** 2
    return 2.0 * macs


def peak_flops(device_kind: str, policy: str) -> dict:
    """The data-sheet peak for this device and precision: ``{"flops", "precision", "how"}``.

    float32 is priced at the FP32 peak (the TF32 peak is given beside it:
    XLA on Ampere and newer may run float32 convolutions in TF32);
    mixed_bfloat16 at the dense BF16 tensor-core peak. ``flops`` is None for a
    device not in `machine.GPU_PEAKS` (a CPU included).
    """
    from mat_effnet.benchmark import machine

    peaks = machine.gpu_peak_flops(device_kind)
    precision = "bf16" if policy == "mixed_bfloat16" else "fp32"
    if peaks is None or precision not in peaks:
        return {"flops": None, "precision": precision,
                "how": f"no {precision.upper()} peak for {device_kind!r} in machine.GPU_PEAKS"}
    return {"flops": peaks[precision], "precision": precision, "tf32_flops": peaks.get("tf32"),
            "how": f"data-sheet dense {precision.upper()} peak of {peaks['matched']} "
                   "(mat_effnet.benchmark.machine.GPU_PEAKS)"}


def _block(tree):
    import jax

    return jax.block_until_ready(tree)


# ---------------------------------------------------------------------------
# TV-L1

def tvl1_inputs(batch: int, height: int, width: int, seed: int):
    """``batch`` known-flow pairs (the accuracy mix, repeated): prev, next, flow, mask."""
    from data_prep import known_flow

    mix = known_flow.accuracy_set(height, width, seed=seed, with_masks=True)
    items = [mix[i % len(mix)] for i in range(batch)]
    return (np.stack([it[1] for it in items]), np.stack([it[2] for it in items]),
            np.stack([it[3] for it in items]), np.stack([it[4] for it in items]))


def tvl1(flow_fn, batch: int, height: int, width: int, calls: int, seed: int) -> dict:
    """Pairs/s of ``flow_fn`` (a `batch_tvl1` fn, whole batch per call) on ``batch`` pairs."""
    from data_prep import known_flow

    prev, nxt, truth, mask = tvl1_inputs(batch, height, width, seed)
    with Stopwatch() as first:
        out = flow_fn(prev, nxt)  # compiles this (B, H, W); numpy out, so synchronous
    iters = np.asarray(flow_fn.last_stats["iterations"])  # (B, scales, warps)
    with Stopwatch() as sw:
        for _ in range(calls):
            flow_fn(prev, nxt)
    params = flow_fn.params
    per_pair = iters.sum(axis=(1, 2))
    return {
        "pairs_per_s": rate(calls * batch, sw.seconds),
        "seconds": sw.seconds, "first_call_s": first.seconds,
        "iterations": {
            "mean_per_warp_by_scale": iters.mean(axis=(0, 2)).round(2).tolist(),
            "mean_per_pair": float(per_pair.mean()), "min_per_pair": int(per_pair.min()),
            "max_per_pair": int(per_pair.max()),
            "worst_case_per_pair": int(iters.shape[1] * params.warps
                                       * params.inner_iterations * params.outer_iterations),
            "what": "inner iterations the epsilon-stop ran (batch_tvl1's last_stats), "
                    "per scale finest first"},
        "epe_px": float(np.mean([known_flow.endpoint_error(o, t, m)
                                 for o, t, m in zip(out, truth, mask)])),
    }


# ---------------------------------------------------------------------------
# The train step

def _sgd():
    import keras

    return keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, weight_decay=5e-4)


def train_step(stream: str, policy: str, batch: int, steps: int, *, image_size: int,
               num_segments: int, flow_length: int, num_classes: int, backbone: str,
               seed: int) -> dict:
    """Images/s of a jitted stateless train step of one stream on a fixed on-device batch."""
    import jax
    import keras

    from mat_effnet.modeling import models

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = models.build_stream(num_classes, stream, num_segments=num_segments,
                                    image_size=image_size, flow_length=flow_length,
                                    backbone=backbone, weights=None)
        channels = model.spec.channels  # 3, or 2L interleaved flow
        optimizer = _sgd()
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        def loss_and_state(tv, ntv, x, y):
            y_pred, ntv = model.stateless_call(tv, ntv, x, training=True)
            return loss_fn(y, y_pred), ntv

        grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

        def step(tv, ntv, ov, x, y):
            (loss, ntv), grads = grad_fn(tv, ntv, x, y)
            tv, ov = optimizer.stateless_apply(ov, grads, tv)
            return tv, ntv, ov, loss

        # Donation lets the updated weights reuse the old buffers; the CPU
        # backend ignores it with a warning, so only ask where it helps.
        donate = (0, 1, 2) if jax.default_backend() != "cpu" else ()
        step = jax.jit(step, donate_argnums=donate)
        rng = np.random.default_rng(seed)
        x = jax.device_put(rng.uniform(0, 255, (batch, num_segments, image_size, image_size,
                                                channels)).astype("float32"))
        y = jax.device_put(rng.integers(0, num_classes, (batch,)).astype("int32"))
        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables],
                 [v.value for v in optimizer.variables])
        with Stopwatch() as first:  # compile + one step: the warm-up, not timed
            *state, loss = step(*state, x, y)
            _block(loss)
        with Stopwatch() as sw:
            for _ in range(steps):
                *state, loss = step(*state, x, y)
            _block((state, loss))
        loss = float(loss)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    images = steps * batch * num_segments
    return {"images_per_s": rate(images, sw.seconds), "seconds": sw.seconds,
            "first_call_s": first.seconds, "channels": channels, "last_loss": loss,
            "loss_finite": bool(np.isfinite(loss))}


# ---------------------------------------------------------------------------
# One clip, frames to scores

def clip_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth random texture panning 1 px right per frame."""
    rng = np.random.default_rng(seed)
    tex = rng.uniform(0, 255, (height + 9, width + num_frames + 9, 3))
    # A 9x9 box blur by cumulative sums: gradients TV-L1 can follow.
    for axis in (0, 1):
        c = np.cumsum(tex, axis=axis)
        tex = (np.take(c, np.arange(9, c.shape[axis]), axis=axis)
               - np.take(c, np.arange(c.shape[axis] - 9), axis=axis)) / 9.0
    tex = (tex - tex.min()) / max(np.ptp(tex), 1e-6) * 255.0
    return np.stack([tex[:height, num_frames - t:num_frames - t + width]
                     for t in range(num_frames)]).astype(np.uint8)


#: Why the GPU check's clip has no JPEG round trip, said in its output.
NO_JPEG_WHY = ("the GPU check runs without TensorFlow, whose JPEG codec prep's round trip "
               "uses; frames and flow go to the streams as computed")


class ClipPredictor:
    """Frames of one clip -> fused class scores, with TV-L1 inside (all on the Keras backend).

    The clip path of `mat_effnet.serving.saved_model_export` on frames already
    at the prepared size: grey levels (`mat_effnet.ops.image_ops.rgb_to_grey`),
    TV-L1 for the flow fields the test positions read
    (`mat_effnet.evaluation.clip_prediction.StreamPredictor.fields_needed`, solved
    ``flow_batch`` pairs per compiled call), quantization
    (`mat_effnet.ops.quantize.quantize_flow`), each stream's
    `StreamPredictor` (TSN's test positions, the centre views, the model,
    compiled by ``predict_on_batch``) and the 1:1 late fusion. One thing
    differs: no JPEG round trip of frames and flow (`NO_JPEG_WHY`).
    """

    def __init__(self, spatial, temporal, flow_fn, *, segments: int, flow_batch: int):
        from mat_effnet.evaluation.clip_prediction import StreamPredictor

        self.spatial = StreamPredictor(spatial, segments, predict=spatial.predict_on_batch,
                                       stream="spatial")
        self.temporal = StreamPredictor(temporal, segments, predict=temporal.predict_on_batch,
                                        stream="temporal")
        self.flow_fn, self.flow_batch = flow_fn, flow_batch

    def __call__(self, frames: np.ndarray) -> dict:
        from keras import ops

        from mat_effnet.ops import image_ops

        times = {}
        t0 = time.perf_counter()
        g = ops.convert_to_numpy(image_ops.rgb_to_grey(frames))
        times["grey_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        needed = self.temporal.fields_needed(len(frames))
        fields = np.concatenate([self.flow_fn(g[needed[i:i + self.flow_batch]],
                                              g[needed[i:i + self.flow_batch] + 1])
                                 for i in range(0, len(needed), self.flow_batch)])
        times["flow_s"] = time.perf_counter() - t
        t = time.perf_counter()
        flow = np.full((len(frames) - 1,) + fields.shape[1:], 128, np.uint8)  # unread: no motion
        flow[needed] = quantize.quantize_flow(fields, FLOW_BOUND)
        times["quantize_s"] = time.perf_counter() - t
        t = time.perf_counter()
        p_s = ops.convert_to_numpy(self.spatial(frames))
        p_t = ops.convert_to_numpy(self.temporal(flow))
        times["models_s"] = time.perf_counter() - t
        fused = (p_s + p_t) / 2.0  # the paper's 1:1 late average fusion
        times["total_s"] = time.perf_counter() - t0
        return {"times": times, "scores": fused, "top_class": int(fused.argmax()),
                "pairs": int(len(needed))}


def predict_clip(flow_fn, *, segments: int, flow_length: int, image_size: int,
                 flow_batch: int, height: int, width: int, num_classes: int, backbone: str,
                 seed: int) -> dict:
    """First-call and warm latency of `ClipPredictor` on one generated clip."""
    import keras

    from mat_effnet.modeling import models

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(seed)
    with Stopwatch() as build:
        streams = [models.build_stream(num_classes, stream, num_segments=segments,
                                       image_size=image_size, flow_length=flow_length,
                                       backbone=backbone, weights=None)
                   for stream in ("spatial", "temporal")]
    predictor = ClipPredictor(*streams, flow_fn, segments=segments, flow_batch=flow_batch)
    frames = clip_frames(segments * (flow_length + 1), height, width, seed)
    first = predictor(frames)
    warm = predictor(frames)
    keras.backend.clear_session()
    return {"first": first["times"], "warm": warm["times"], "build_models_s": build.seconds,
            "frames": int(len(frames)), "pairs": warm["pairs"],
            "jpeg_round_trip": False, "jpeg_round_trip_why": NO_JPEG_WHY,
            "same_scores": bool(np.allclose(first["scores"], warm["scores"], atol=1e-6)),
            "score_sum": float(np.sum(warm["scores"]))}
