"""``python -m mat_effnet.benchmark.device``: the GPU check, for a machine with JAX and no TensorFlow.

    KERAS_BACKEND=jax python -m mat_effnet.benchmark.device [--budget_s=500]
        [--output=device.json] [--tiny] [--tvl1_batches=1,8,32,64 ...]

The GPU machines this targets have JAX, Keras (carried as
wheels), numpy, absl and OpenCV without contrib, and no TensorFlow, so this
binary and everything it imports is TensorFlow-free: the measurements are in
`mat_effnet.benchmark.device_measure` (TV-L1 in keras.ops, the streams of
`mat_effnet.modeling.models`, known-flow pairs). It measures

* TV-L1 (`mat_effnet.ops.tvl1`) pairs/s at 340x256, one compiled call per batch
  of 1/8/32/64 pairs, with the iterations its epsilon-stop ran;
* the B0 + attention train step of both streams (paper Sect. 3.3; spatial 3
  channels, temporal 2L), batch 16 and 64 clips of K = 3 segments, float32
  and mixed bfloat16, in images/s and as a fraction of the device's peak;
* one clip's prediction with the flow inside, first call and warm.

Device time there is short (about 10 minutes a run), so the run is planned:
the figures go smallest first (each kind's smallest size, then the larger
ones, so a cut keeps one figure of every kind); before each one the
estimated time (the last figure of its kind, scaled by the work; a prior for
the first of a kind) is checked against ``--budget_s``, counted from when
this module is loaded (JAX's and Keras's imports included). A figure that does not fit is skipped and says so, and
``--output`` is rewritten atomically after every figure, so a run killed at
any point leaves a valid document. ``--tiny`` runs every part at toy sizes
(`TINY`) to check the path end to end (1-2 minutes on a 2-core CPU, most of
it compiling).
"""

from __future__ import annotations

import dataclasses
import sys
import time

_START = time.monotonic()  # the budget counts from here: imports included

from mat_effnet.common.flagdefs import setting  # noqa: E402 -- after the clock
from mat_effnet.common.errors import bad_argument  # noqa: E402

PROG = "python -m mat_effnet.benchmark.device"
SCHEMA = "mat-effnet-device/1"
STREAMS = ("spatial", "temporal")
POLICIES = ("float32", "mixed_bfloat16")
# Seconds assumed for the first figure of a kind (mostly XLA compilation),
# before any figure of that kind has been measured: (full sizes, --tiny).
PRIOR_S = {"tvl1": (60.0, 10.0), "train": (120.0, 20.0), "predict": (120.0, 20.0)}


def _positive(s, *names):
    for name in names:
        if getattr(s, name) < 1:
            raise bad_argument(name, getattr(s, name), "must be >= 1")


def _ints(s, name):
    try:
        values = tuple(int(v) for v in getattr(s, name))
    except (TypeError, ValueError):
        raise bad_argument(name, ",".join(map(str, getattr(s, name))), "expected integers") \
            from None
    if not values or min(values) < 1:
        raise bad_argument(name, ",".join(map(str, values)), "expected integers >= 1")
    object.__setattr__(s, name, values)


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    """Every setting of the device run, defined once (the flags derive from the fields)."""

    budget_s: float | None = setting(None, "Seconds from the start the run must end within; "
                                           "figures that would not fit are skipped.")
    output: str = setting("device.json", "The JSON document, rewritten after every figure.")
    tiny: bool = setting(False, "Toy sizes for every part (TINY): checks the path, not speed.")
    seed: int = setting(0, "Seed of the generated inputs and models.")
    tvl1_height: int = setting(256, "Frame height of the TV-L1 figures.")
    tvl1_width: int = setting(340, "Frame width of the TV-L1 figures.")
    tvl1_batches: tuple = setting((1, 8, 32, 64), "Pairs per compiled TV-L1 call, one figure each.")
    tvl1_calls: int = setting(3, "Timed TV-L1 calls per batch size, after one untimed call.")
    train_batches: tuple = setting((16, 64), "Clips per train step, one figure each.")
    train_configs: tuple = setting(
        tuple(f"{s}:{p}" for s in STREAMS for p in POLICIES),
        "stream:policy pairs of the train-step figures (policy: float32, mixed_bfloat16).")
    train_steps: int = setting(5, "Timed train steps, after one untimed (compiling) step.")
    image_size: int = setting(224, "Model input size (paper Sect. 4.2).")
    num_segments: int = setting(3, "Segments per training clip (K).")
    flow_length: int = setting(10, "Flow fields per segment (L): the temporal stream's 2L channels.")
    num_classes: int = setting(101, "Classes of the models (UCF101's 101).")
    backbone: str = setting("efficientnet_b0", "Backbone of the models.",
                            choices=("efficientnet_b0", "resnet18", "resnet34", "resnet50"))
    predict_segments: int = setting(25, "Segments of the predicted clip (TSN's 25 at test).")
    predict_flow_batch: int = setting(50, "TV-L1 pairs per compiled call in the prediction.")

    def __post_init__(self):
        _positive(self, "tvl1_calls", "train_steps", "num_segments", "flow_length",
                  "predict_segments", "predict_flow_batch")
        if self.tvl1_height < 16 or self.tvl1_width < 16:
            raise bad_argument("tvl1_height", self.tvl1_height, "frames need sides >= 16")
        if min(self.tvl1_height, self.tvl1_width) < self.image_size:
            raise bad_argument("image_size", self.image_size,
                               "the prediction crops it from the TV-L1 frames: must be <= "
                               f"{min(self.tvl1_height, self.tvl1_width)}")
        if self.num_classes < 2:
            raise bad_argument("num_classes", self.num_classes, "must be >= 2")
        if self.budget_s is not None and not self.budget_s > 0:
            raise bad_argument("budget_s", self.budget_s, "must be > 0 (or unset: no limit)")
        _ints(self, "tvl1_batches")
        _ints(self, "train_batches")
        configs = tuple(str(c) for c in self.train_configs)
        for c in configs:
            stream, _, policy = c.partition(":")
            if stream not in STREAMS or policy not in POLICIES:
                raise bad_argument("train_configs", c, f"expected stream:policy with stream in "
                                   f"{STREAMS} and policy in {POLICIES}")
        object.__setattr__(self, "train_configs", configs)


# --tiny: every part once at toy sizes. One stream per policy (both streams
# and both policies still run): each train-step compile costs 10-40 s on a
# busy 2-core CPU.
TINY = dict(tiny=True, tvl1_height=32, tvl1_width=40, tvl1_batches=(1, 2), tvl1_calls=1,
            train_batches=(2,), train_configs=("spatial:float32", "temporal:mixed_bfloat16"),
            train_steps=2, image_size=32, num_segments=2, flow_length=1, num_classes=5,
            predict_segments=2, predict_flow_batch=2)


# ---------------------------------------------------------------------------
# The plan and the budget

@dataclasses.dataclass
class Planned:
    """One measurement: its figure name, kind, how much work, and how to run it."""

    name: str
    kind: str            # "tvl1", "train" or "predict": estimates come from the same kind
    work: float          # pairs, or train FLOPs per step: estimates scale with it
    settings: dict
    run: object = dataclasses.field(repr=False, default=None)  # () -> dict of results


def elapsed() -> float:
    return time.monotonic() - _START


def estimate_s(item: Planned, done: list, tiny: bool) -> tuple[float, str]:
    """Seconds ``item`` is expected to take, and how that was estimated.

    The last measured figure of the same kind: its fixed part again (model
    building, compiling, the untimed call: wall time minus the timed part),
    plus its timed part scaled by the work ratio. Before any, the kind's
    prior (`PRIOR_S`).
    """
    same = [d for d in done if d["kind"] == item.kind]
    if not same:
        return PRIOR_S[item.kind][1 if tiny else 0], "prior for the first figure of its kind"
    last = same[-1]
    scaled = last["timed_s"] * item.work / max(last["work"], 1e-12)
    return last["fixed_s"] + scaled, f"from {last['name']}, timed part scaled by work"


def run_plan(plan: list, budget_s: float | None, tiny: bool, on_figure, clock=elapsed) -> dict:
    """Runs ``plan`` in order under the budget; ``on_figure(name, figure)`` after each.

    Returns ``{"skipped": [names], "errors": {name: message}}``. A figure
    whose estimate does not fit in what is left is skipped (value None,
    ``skipped: true`` and why); later, cheaper figures of another kind are
    still tried. A figure that fails is recorded with its error, and the run
    goes on. ``item.run()`` returns the figure's fields, ``seconds`` (its
    timed part) among them.
    """
    done, skipped, errors = [], [], {}
    for item in plan:
        est, how = estimate_s(item, done, tiny)
        now = clock()
        if budget_s is not None and now + est > budget_s:
            skipped.append(item.name)
            on_figure(item.name, {"value": None, "skipped": True, "settings": item.settings,
                                  "why": f"budget: {now:.0f} s gone + {est:.0f} s estimated "
                                         f"({how}) > --budget_s={budget_s:g}",
                                  "estimate_s": est})
            continue
        start = clock()
        try:
            result = item.run()
        except Exception as e:  # noqa: BLE001 -- one failed figure (an OOM, say) is a row
            errors[item.name] = f"{type(e).__name__}: {e}"[:2000]
            on_figure(item.name, {"value": None, "settings": item.settings,
                                  "why": errors[item.name], "estimate_s": est})
            continue
        took = clock() - start
        timed = min(float(result["seconds"]), took)
        done.append({"name": item.name, "kind": item.kind, "work": item.work,
                     "fixed_s": took - timed, "timed_s": timed})
        on_figure(item.name, dict(result, estimate_s=est, wall_s=took))
    return {"skipped": skipped, "errors": errors}


def build_plan(s: DeviceSettings, device_kind: str) -> list:
    """The figures in run order: each kind's smallest size first, then the larger ones."""
    from mat_effnet.benchmark import device_measure as dm

    state: dict = {}

    def flow_fn():
        # One batch_tvl1 for the run: its compiled (B, H, W) shapes are shared
        # by the TV-L1 figures and the prediction. chunk=0: a batch is one call.
        if "flow" not in state:
            from mat_effnet.ops import tvl1
            state["flow"] = tvl1.batch_tvl1(chunk=0)
        return state["flow"]

    def tvl1_item(batch):
        settings = {"height": s.tvl1_height, "width": s.tvl1_width, "batch_size": batch,
                    "calls": s.tvl1_calls, "params": "mat_effnet.ops.tvl1.TVL1Params() "
                    "(OpenCV's defaults)", "chunk": "whole batch per compiled call",
                    "pairs": "data_prep.known_flow.accuracy_set, repeated to fill the batch",
                    "includes": "the copy of the flow to the host (batch_tvl1 returns numpy)"}

        def run():
            r = dm.tvl1(flow_fn(), batch, s.tvl1_height, s.tvl1_width, s.tvl1_calls, s.seed)
            return dict(r, value=r.pop("pairs_per_s"), unit="pairs/s")
        return Planned(f"tvl1.b{batch}.pairs_per_s", "tvl1", float(batch), settings, run)

    def train_item(config, batch):
        stream, _, policy = config.partition(":")
        channels = 3 if stream == "spatial" else 2 * s.flow_length
        fwd = dm.forward_flops_per_image(s.backbone, s.image_size, channels)
        images = batch * s.num_segments
        peak = dm.peak_flops(device_kind, policy)
        settings = {"stream": stream, "policy": policy, "backbone": s.backbone,
                    "attention": True, "image_size": s.image_size, "channels": channels,
                    "segments_per_clip": s.num_segments, "batch_size_clips": batch,
                    "images_per_step": images, "steps": s.train_steps, "classes": s.num_classes,
                    "step": "jax.jit stateless step: model.stateless_call, value_and_grad, "
                            "SGD(momentum 0.9, weight decay 5e-4).stateless_apply; fixed "
                            "on-device batch; one untimed compiling step",
                    "forward_flops_per_image": fwd,
                    "flops_count": "published multiply-adds at 224 x (size/224)^2 + the stem's "
                                   "extra channels, x2 FLOPs; train step = 3 x forward",
                    "peak_flops": peak["flops"], "peak_precision": peak["precision"],
                    "peak_how": peak["how"]}

        def run():
            r = dm.train_step(stream, policy, batch, s.train_steps, image_size=s.image_size,
                              num_segments=s.num_segments, flow_length=s.flow_length,
                              num_classes=s.num_classes, backbone=s.backbone, seed=s.seed)
            achieved = None if fwd is None else r["images_per_s"] * dm.TRAIN_FLOPS_PER_FORWARD * fwd
            out = dict(r, value=r.pop("images_per_s"), unit="images/s", achieved_flops=achieved,
                       fraction_of_peak=None if achieved is None or not peak["flops"]
                       else achieved / peak["flops"])
            if achieved is not None and peak.get("tf32_flops") and policy == "float32":
                out["fraction_of_tf32_peak"] = achieved / peak["tf32_flops"]
            return out
        work = images * (fwd or 1.0)
        return Planned(f"train.{stream}.{policy}.b{batch}.images_per_s", "train", work,
                       settings, run)

    def predict_item():
        settings = {"segments": s.predict_segments, "flow_length": s.flow_length,
                    "frames": s.predict_segments * (s.flow_length + 1), "frame_size":
                    f"{s.tvl1_width}x{s.tvl1_height}", "image_size": s.image_size,
                    "flow_batch": s.predict_flow_batch, "backbone": s.backbone,
                    "policy": "float32", "path": "frames -> grey -> TV-L1 of the fields the "
                    "test positions read -> quantize (bound 20) -> each stream's "
                    "clip prediction (test views, predict_on_batch) -> 1:1 fusion; "
                    "no JPEG round trip"}

        def run():
            r = dm.predict_clip(flow_fn(), segments=s.predict_segments,
                                flow_length=s.flow_length, image_size=s.image_size,
                                flow_batch=s.predict_flow_batch, height=s.tvl1_height,
                                width=s.tvl1_width, num_classes=s.num_classes,
                                backbone=s.backbone, seed=s.seed)
            return dict(r, value=r["warm"]["total_s"], unit="s (warm)",
                        seconds=r["warm"]["total_s"], first_call_s=r["first"]["total_s"])
        return Planned("predict.clip.latency_s", "predict",
                       float(s.predict_segments * s.flow_length), settings, run)

    small_b, large_b = s.tvl1_batches[:2], s.tvl1_batches[2:]
    small_t, large_t = s.train_batches[:1], s.train_batches[1:]
    plan = [tvl1_item(b) for b in small_b]
    plan += [train_item(c, b) for b in small_t for c in s.train_configs]
    plan.append(predict_item())
    plan += [tvl1_item(b) for b in large_b]
    plan += [train_item(c, b) for b in large_t for c in s.train_configs]
    return plan


def device_facts() -> dict:
    """The device and the versions: what every figure was measured on."""
    import platform

    import jax
    import keras
    import numpy as np

    devices = jax.devices()
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "keras": keras.__version__, "numpy": np.__version__}
    try:
        import jaxlib
        versions["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    try:
        import cv2
        versions["opencv"] = cv2.__version__
    except ImportError:
        pass
    return {"device_kind": devices[0].device_kind, "platform": devices[0].platform,
            "device_count": len(devices), "jax_backend": jax.default_backend(),
            "keras_backend": keras.backend.backend(), "versions": versions,
            "host": platform.node()}


def run_device(s: DeviceSettings, command: str = PROG, log=lambda msg: None) -> dict:
    """Measures every planned figure under the budget; rewrites ``s.output`` after each."""
    import keras

    from mat_effnet.benchmark import report
    from mat_effnet.common.errors import MatEffNetError

    if keras.backend.backend() != "jax":
        raise MatEffNetError(f"KERAS_BACKEND={keras.backend.backend()}: this check runs on "
                             "jax (set KERAS_BACKEND=jax before Python starts)")
    facts = device_facts()
    machine = f"{facts['device_kind']} ({facts['platform']}, {facts['device_count']} device(s))"
    plan = build_plan(s, facts["device_kind"])
    doc = {"schema": SCHEMA, "command": command, "tiny": s.tiny, "budget_s": s.budget_s,
           "device": facts, "settings": dataclasses.asdict(s),
           "plan": [p.name for p in plan], "figures": {}, "skipped": [], "errors": {},
           "complete": False, "elapsed_s": elapsed()}
    report.write_json(s.output, doc)

    def on_figure(name, fig):
        item = next(p for p in plan if p.name == name)
        fig = dict(fig, settings=fig.get("settings", item.settings), machine=machine,
                   section=item.kind)
        fig.setdefault("unit", "n/a")
        doc["figures"][name] = fig
        if fig.get("skipped"):
            doc["skipped"].append(name)
        elif fig.get("value") is None:
            doc["errors"][name] = fig.get("why")
        doc["elapsed_s"] = elapsed()
        report.write_json(s.output, doc)
        log(f"{elapsed():7.1f} s  {name}: "
            + (fig["why"] if fig.get("value") is None else f"{fig['value']:.4g} {fig['unit']}"))

    run_plan(plan, s.budget_s, s.tiny, on_figure)
    doc["complete"] = not doc["skipped"] and not doc["errors"]
    doc["tensorflow_imported"] = "tensorflow" in sys.modules
    doc["elapsed_s"] = elapsed()
    report.write_json(s.output, doc)
    return doc


def _main(argv):
    from absl import flags

    from mat_effnet.common import flagdefs
    from mat_effnet.common.errors import MatEffNetError

    if len(argv) > 1:
        raise MatEffNetError(f"unexpected arguments {argv[1:]}")
    given = flagdefs.flat_values(DeviceSettings)
    if given["tiny"]:
        given = {**TINY, **{k: v for k, v in given.items() if flags.FLAGS[k].present}}
    s = DeviceSettings(**given)
    doc = run_device(s, " ".join([PROG] + sys.argv[1:]),
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"written: {s.output} ({len(doc['figures'])} figures, {len(doc['skipped'])} "
          f"skipped, {len(doc['errors'])} failed, {doc['elapsed_s']:.0f} s)")
    return 1 if doc["errors"] else 0


def run():
    from mat_effnet.common import cli, flagdefs

    flagdefs.define_flags(DeviceSettings)
    cli.run(_main, PROG, uses_tensorflow=False)


if __name__ == "__main__":
    run()
