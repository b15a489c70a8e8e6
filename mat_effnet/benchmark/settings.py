"""The settings of ``mat-effnet-benchmark``, defined once.

One frozen dataclass per benchmark section, nested in `BenchmarkSettings`,
as `mat_effnet.training.config.TrainConfig` nests the training settings: each field holds its default and help text
(`mat_effnet.common.flagdefs.setting`), the binary derives its absl flags from the
fields (`mat_effnet.common.flagdefs`), and every section function takes its own
section's dataclass. Field names are unique across sections, so the flags
keep today's flat names (``--tvl1_pairs``, ``--prep_frames`` ...).

    BenchmarkSettings
      run:       RunSettings        which sections, seed, where the results go
      clip:      ClipSettings       the clip shape shared by pipeline, training, inference
      flow:      FlowSettings       optical flow: speed, accuracy, roofline
      prep:      PrepSettings       data preparation speed, size and memory
      pipeline:  PipelineSettings   the tf.data input pipeline alone
      training:  TrainStepSettings  the train step and its share of peak FLOP/s
      inference: InferenceSettings  the fused model and predict's latency

The defaults are the full run. `QUICK` holds the ``--quick`` run's values in
one place: fewer pairs, videos, frames and iterations, never another figure
definition (340x256 flow, 224 px, K = 3, L = 10, 25 test segments, batch 8,
a 5-minute long video).

Nothing here imports TensorFlow, so ``mat-effnet-benchmark --help`` is fast.
"""

from __future__ import annotations

import dataclasses

from mat_effnet.training import config
from mat_effnet.common.flagdefs import setting
from mat_effnet.common.errors import bad_argument

SECTIONS = ("flow", "prep", "pipeline", "training", "inference")
# mat_effnet.ops.optical_flow.ALGORITHMS / IMPLEMENTATIONS, restated so that this module
# stays free of OpenCV and TensorFlow; tests/test_benchmark.py pins them equal.
FLOW_ALGORITHMS = ("tvl1", "dis", "none")
FLOW_IMPLEMENTATIONS = ("opencv", "keras")


def _at_least(section, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value < minimum:
            raise bad_argument(name, value, f"must be >= {minimum}")


def _int_tuple(section, name: str) -> None:
    """A list flag arrives as strings: store ints, and name the flag if one is not."""
    values = getattr(section, name)
    try:
        ints = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise bad_argument(name, ",".join(map(str, values)), "expected integers") from None
    if not ints or min(ints) < 1:
        raise bad_argument(name, ",".join(map(str, ints)), "expected integers >= 1")
    object.__setattr__(section, name, ints)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Which sections run, with which seed, and where the results go."""

    sections: tuple = setting(SECTIONS, f"Sections to run: {', '.join(SECTIONS)}.")
    quick: bool = setting(False, "Smaller sizes and fewer iterations (a few minutes on 2 CPU "
                                 "cores); every figure records its settings.")
    seed: int = setting(0, "Seed of the generated data and models.")
    output: str = setting("benchmark.json", "Where the JSON document is written.")
    markdown: str | None = setting(None, "Also write the table as Markdown to this file.")
    work_dir: str | None = setting(None, "Scratch folder for generated videos and records "
                                         "(default: a temporary folder, deleted afterwards).")

    def __post_init__(self):
        sections = tuple(self.sections)
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise bad_argument("sections", ",".join(unknown),
                               f"unknown; known: {', '.join(SECTIONS)}")
        object.__setattr__(self, "sections", sections)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """The clip every model-facing section uses (paper Sect. 4.2; TSN's 25 test segments)."""

    image_size: int = setting(224, "Crop size of the pipeline, training and inference figures.")
    num_segments: int = setting(3, "Training segments per clip (K).")
    flow_length: int = setting(10, "Flow fields per segment (L).")
    test_segments: int = setting(25, "Test-time segments per clip.")
    backbone: str = setting("efficientnet_b0", "Backbone of the timed models.",
                            choices=config.BACKBONES)

    def __post_init__(self):
        _at_least(self, 1, "image_size", "num_segments", "flow_length", "test_segments")


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """Optical flow at 340x256: speed, accuracy to known flow, roofline."""

    flow_height: int = setting(256, "Frame height of the flow figures.")
    flow_width: int = setting(340, "Frame width of the flow figures.")
    tvl1_pairs: int = setting(20, "OpenCV TV-L1 pairs timed (1 worker; and per pool worker); "
                                  "the 1-worker run covers the whole accuracy set at least once.")
    dis_pairs: int = setting(200, "DIS pairs timed (1 worker; and per pool worker).")
    flow_workers: int | None = setting(None, "Processes of the all-cores figures "
                                             "(default: os.cpu_count()).")
    keras_batches: tuple = setting((1, 8, 32), "Batch sizes of the Keras TV-L1 figures.")
    keras_pairs: int = setting(32, "Keras TV-L1 pairs timed per batch size (at least one batch).")

    def __post_init__(self):
        _at_least(self, 16, "flow_height", "flow_width")  # data_prep.known_flow's minimum
        _at_least(self, 1, "tvl1_pairs", "dis_pairs", "flow_workers", "keras_pairs")
        _int_tuple(self, "keras_batches")


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    """`data_prep.builder.build` on a generated set, and peak memory on a long video."""

    prep_videos_per_class: int = setting(2, "Generated videos per class (6 classes).")
    prep_frames: int = setting(32, "Frames per generated video.")
    prep_height: int = setting(240, "Height of the generated videos.")
    prep_width: int = setting(320, "Width of the generated videos.")
    prep_flow: str = setting("tvl1", "Flow algorithm of the prep figures.", choices=FLOW_ALGORITHMS)
    prep_flow_implementation: str = setting("opencv", "Flow implementation of the prep figures.",
                                            choices=FLOW_IMPLEMENTATIONS)
    prep_short_side: int = setting(256, "Short side the prep figures store frames at.")
    prep_workers: int = setting(2, "Workers of the speed-up figure (against 1).")
    long_seconds: float = setting(300.0, "Length of the long video of the peak-memory figure.")
    long_height: int = setting(120, "Height of the long video.")
    long_width: int = setting(160, "Width of the long video.")
    long_flow: str = setting("dis", "Flow algorithm of the peak-memory figure.",
                             choices=FLOW_ALGORITHMS)
    short_seconds: float = setting(10.0, "Length of the short video prepared beside the long one.")

    def __post_init__(self):
        _at_least(self, 1, "prep_videos_per_class", "prep_workers")
        _at_least(self, 2, "prep_frames")
        _at_least(self, 16, "prep_height", "prep_width", "long_height", "long_width")
        _at_least(self, 0, "prep_short_side")
        for name in ("long_seconds", "short_seconds"):
            if not getattr(self, name) > 0:
                raise bad_argument(name, getattr(self, name), "must be > 0")
        if self.prep_flow_implementation == "keras" and self.prep_flow != "tvl1":
            raise bad_argument("prep_flow_implementation", "keras",
                               f"only prep_flow=tvl1 has a keras implementation, "
                               f"not {self.prep_flow}")


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The tf.data input pipeline alone, per stream and mode."""

    pipeline_videos_per_class: int = setting(2, "Generated videos per class of the records.")
    pipeline_frames: int = setting(100, "Frames per generated video.")
    pipeline_short_side: int = setting(256, "Short side of the records (256: frames 340x256).")
    pipeline_batch: int = setting(8, "Training-mode batch size, in clips.")
    pipeline_train_batches: int = setting(10, "Minimum training-mode batches timed.")
    pipeline_test_clips: int = setting(20, "Minimum test-mode clips timed.")
    pipeline_min_seconds: float = setting(5.0, "Minimum time per figure, so prefetched batches "
                                               "do not inflate a fast pipeline's rate.")
    pipeline_rounds: int = setting(3, "Rounds of the bound, the pipeline and its levers measured "
                                      "back to back; the median round is reported.")
    pipeline_bound_clips: int = setting(48, "Clips whose JPEGs the decode-only bound decodes.")
    pipeline_levers: bool = setting(True, "Also measure the new pipeline with each lever off.")

    def __post_init__(self):
        _at_least(self, 1, "pipeline_videos_per_class", "pipeline_batch",
                  "pipeline_train_batches", "pipeline_test_clips", "pipeline_rounds",
                  "pipeline_bound_clips")
        _at_least(self, 2, "pipeline_frames")
        _at_least(self, 16, "pipeline_short_side")
        _at_least(self, 0, "pipeline_min_seconds")


@dataclasses.dataclass(frozen=True)
class TrainStepSettings:
    """Forward+backward on a fixed in-memory batch, and its share of the device's peak."""

    train_batch: int | None = setting(None, "Clips per train step (default: 8 on CPU, 16 on GPU).")
    train_steps: int = setting(5, "Train steps timed (after one untimed warm-up step).")
    # mat-effnet-demo trains at 48 px with L = 5 (experiments/demo.py).
    train_small_size: int = setting(48, "Also time the step at this crop size, as the demo "
                                         "trains (0: not).")
    train_small_flow_length: int = setting(5, "Flow fields per segment (L) at that size.")

    def __post_init__(self):
        _at_least(self, 1, "train_batch", "train_steps", "train_small_flow_length")
        _at_least(self, 0, "train_small_size")


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """The fused two-stream model, and `inference.predict_video`'s latency by part."""

    infer_clips: int = setting(5, "Fused-model clips timed.")
    predict_seconds: float = setting(10.0, "Length of the predict video.")
    predict_height: int = setting(240, "Height of the predict video (UCF101's 320x240).")
    predict_width: int = setting(320, "Width of the predict video.")
    predict_flow: str = setting("tvl1", "Flow algorithm of the predict figures.",
                                choices=FLOW_ALGORITHMS)
    predict_flow_implementation: str = setting("opencv", "Flow implementation of the predict "
                                                         "figures.", choices=FLOW_IMPLEMENTATIONS)
    predict_short_side: int = setting(256, "Short side predict prepares the video at.")
    # Prediction at scale: predict_flow and predict_short_side apply.
    at_scale: bool = setting(True, "Also time prediction at scale: many videos against the "
                                   "single-video CLI loop, and the timeline at two lengths.")
    scale_videos: int = setting(6, "Videos of the many-video figure.")
    scale_video_seconds: float = setting(4.0, "Length of each of those videos.")
    scale_workers: int = setting(2, "Decoding workers of the many-video figure.")
    scale_cli_videos: int = setting(3, "Of those, how many the single-video CLI loop runs "
                                       "(each run pays the start-up).")
    timeline_short_s: float = setting(10.0, "The short video of the timeline figures.")
    timeline_long_s: float = setting(600.0, "The long video of the timeline figures.")
    timeline_window_s: float = setting(10.0, "Window of the timeline figures.")
    timeline_stride_s: float = setting(10.0, "Stride of the timeline figures.")

    def __post_init__(self):
        _at_least(self, 1, "infer_clips", "scale_videos", "scale_workers", "scale_cli_videos")
        for name in ("scale_video_seconds", "timeline_short_s", "timeline_long_s",
                     "timeline_window_s", "timeline_stride_s"):
            if not getattr(self, name) > 0:
                raise bad_argument(name, getattr(self, name), "must be > 0")
        _at_least(self, 16, "predict_height", "predict_width")
        _at_least(self, 0, "predict_short_side")
        if not self.predict_seconds > 0:
            raise bad_argument("predict_seconds", self.predict_seconds, "must be > 0")
        if self.predict_flow_implementation == "keras" and self.predict_flow != "tvl1":
            raise bad_argument("predict_flow_implementation", "keras",
                               f"only predict_flow=tvl1 has a keras implementation, "
                               f"not {self.predict_flow}")


# The --quick run: minutes on 2 CPU cores. Prep uses TV-L1 at short side 64
# and predict uses DIS (TV-L1 at 256 costs ~1 s per pair on one core). The
# Keras TV-L1 still runs each batch size once: XLA compiles it per batch
# shape (about 1.5 min each on 2 busy cores), which quick mode cannot shrink.
QUICK = dict(
    quick=True,
    tvl1_pairs=3, dis_pairs=60, keras_pairs=8,
    prep_videos_per_class=1, prep_frames=16, prep_height=120, prep_width=160, prep_short_side=64,
    pipeline_videos_per_class=1, pipeline_frames=40, pipeline_train_batches=4,
    pipeline_test_clips=6, pipeline_min_seconds=2.0, pipeline_rounds=1, pipeline_levers=False,
    train_steps=2,
    infer_clips=2, predict_flow="dis",
    scale_videos=3, scale_video_seconds=2.0, scale_cli_videos=1, timeline_short_s=4.0,
    timeline_long_s=40.0, timeline_window_s=4.0, timeline_stride_s=4.0,
)


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """One benchmark run: a section per benchmark section, validated once."""

    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    clip: ClipSettings = dataclasses.field(default_factory=ClipSettings)
    flow: FlowSettings = dataclasses.field(default_factory=FlowSettings)
    prep: PrepSettings = dataclasses.field(default_factory=PrepSettings)
    pipeline: PipelineSettings = dataclasses.field(default_factory=PipelineSettings)
    training: TrainStepSettings = dataclasses.field(default_factory=TrainStepSettings)
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)

    @classmethod
    def from_flat(cls, **values) -> "BenchmarkSettings":
        """Settings from flat field names (as the flags name them); the rest default."""
        return config.nest(cls, values, "a benchmark setting")

    @classmethod
    def quick_run(cls, **overrides) -> "BenchmarkSettings":
        """The ``--quick`` settings (`QUICK`), with ``overrides`` on top."""
        return cls.from_flat(**{**QUICK, **overrides})

    def flat(self) -> dict:
        return config.flat(self)

    def to_dict(self) -> dict:
        """Nested and JSON-ready (the document's ``settings``)."""
        return config.to_dict(self)
