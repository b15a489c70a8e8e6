"""The settings of a preparation run: `PrepConfig`, defined and validated once.

What `data_prep.builder.build` writes and how it runs (paper Sect. 4.2:
RGB frames and TV-L1 flow, as in TSN) is decided here; every driver
(`data_prep.builder`, `data_prep.beam_pipeline`) and the flow scheduler
(`mat_effnet.encoding.flow_batches`) read it from this module, which imports none of
them, so the settings sit below everything that uses them.
"""

from __future__ import annotations

import dataclasses

from data_prep import rawframes
from mat_effnet import records
from mat_effnet.encoding import encode, flow_batches
from mat_effnet.common.errors import bad_argument

# flow_implementation="auto": `data_prep.builder.prepare` picks one before any work.
AUTO = "auto"
# flow_implementation of imported flow (`data_prep.frames_import`): made elsewhere.
IMPORTED = "imported"

_ENCODE_FIELDS = tuple(f.name for f in dataclasses.fields(encode.EncodeSettings))
_DEFAULT = encode.EncodeSettings()


@dataclasses.dataclass
class PrepConfig:
    """Everything that decides what `build` writes, and how it runs.

    The fields named like `encode.EncodeSettings`'s (short_side, flow,
    flow_implementation, flow_bound, jpeg_quality, chunk_frames) take their
    defaults from it; `encoding` returns them as one `EncodeSettings`.
    flow_implementation may also be "auto": `data_prep.builder.prepare`
    replaces it (in place) with `data_prep.builder.auto_flow_implementation`'s
    choice before any work.
    flow_batch: pairs per call of the Keras TV-L1 (None: its default).
    flow_devices: flow processes for the Keras TV-L1 (None: one per GPU;
        without a GPU, one per worker).
    frames_root / frames_layout: import (`data_prep.frames_import`): the
        videos are frame folders there, in that layout
        (`data_prep.rawframes`); nothing is decoded or computed. Their flow
        was quantized with ±frames_bound and frames_rounding (None: the
        conventions file beside the frames, else denseflow's); ``flow``
        then names the algorithm that made it ("tvl1" unless told).
    schema_version: the record layout (`mat_effnet.records`): 2, frame-
        addressable groups with an index per shard (clips read only their
        frames), or 1, one Example per video (streams whole records; the
        layout TFDS reads).
    """

    dataset: str
    data_root: str
    out_dir: str
    split: int = 1
    split_file: str | None = None
    flow: str = _DEFAULT.flow
    flow_bound: float = _DEFAULT.flow_bound
    short_side: int = _DEFAULT.short_side
    jpeg_quality: int = _DEFAULT.jpeg_quality
    workers: int = 1
    videos_per_shard: int = 32
    chunk_frames: int = _DEFAULT.chunk_frames
    name: str | None = None
    progress_seconds: float = 10.0
    flow_implementation: str = _DEFAULT.flow_implementation
    flow_batch: int | None = None
    flow_devices: int | None = None
    schema_version: int = records.SCHEMA_VERSION
    frames_root: str | None = None
    frames_layout: str = "rawframes"
    frames_bound: float | None = None
    frames_rounding: str | None = None
    # A video that yields fewer than this fraction of the frames its
    # container announces is listed under the metadata's warnings, or with
    # strict_decode under failures (a damaged file that decodes only in part).
    min_decoded_fraction: float = 0.9
    strict_decode: bool = False
    # Seconds one video may take before its process is killed and the video
    # listed as failed (`data_prep.watchdog`); None: no limit.
    video_timeout_s: float | None = None
    # Before the run, check every finished shard (size, SHA-256) and remove the
    # damaged ones so they are made again (`data_prep.repair`).
    rebuild_damaged: bool = False

    def flow_schedule(self) -> flow_batches.FlowSchedule:
        """How `mat_effnet.encoding.flow_batches` computes this run's flow."""
        return flow_batches.FlowSchedule(self.flow, self.flow_implementation, self.flow_bound,
                                         self.flow_batch, self.flow_devices, self.workers)

    @property
    def encoding(self) -> encode.EncodeSettings:
        """The settings that decide a video's bytes (validated on creation)."""
        if self.flow_implementation == AUTO:
            raise bad_argument("flow_implementation", AUTO, "not resolved yet (see prepare)")
        return encode.EncodeSettings(**{name: getattr(self, name) for name in _ENCODE_FIELDS})

    def validate(self) -> None:
        """Raises MatEffNetError (``name=value: why``) for any bad value, before work."""
        if self.flow_implementation == AUTO:
            dataclasses.replace(self, flow_implementation=_DEFAULT.flow_implementation).encoding
        else:
            self.encoding  # noqa: B018  # validates
        if self.workers < 1:
            raise bad_argument("workers", self.workers, "must be >= 1")
        if self.videos_per_shard < 1:
            raise bad_argument("videos_per_shard", self.videos_per_shard, "must be >= 1")
        if self.flow_batch is not None and self.flow_batch < 1:
            raise bad_argument("flow_batch", self.flow_batch, "must be >= 1")
        if self.flow_devices is not None and self.flow_devices < 1:
            raise bad_argument("flow_devices", self.flow_devices, "must be >= 1")
        if self.frames_layout not in rawframes.LAYOUTS:
            raise bad_argument("frames_layout", self.frames_layout,
                               f"expected one of {', '.join(rawframes.LAYOUTS)}")
        if self.frames_bound is not None and not self.frames_bound > 0:
            raise bad_argument("frames_bound", self.frames_bound, "must be > 0")
        if self.frames_rounding is not None and self.frames_rounding not in rawframes.ROUNDINGS:
            raise bad_argument("frames_rounding", self.frames_rounding,
                               f"expected one of {', '.join(rawframes.ROUNDINGS)}")
        if not 0.0 <= self.min_decoded_fraction <= 1.0:
            raise bad_argument("min_decoded_fraction", self.min_decoded_fraction,
                               "must be between 0 and 1")
        if self.video_timeout_s is not None and self.video_timeout_s <= 0:
            raise bad_argument("video_timeout_s", self.video_timeout_s, "must be > 0")
        if self.schema_version not in records.SCHEMA_VERSIONS:
            raise bad_argument("schema_version", self.schema_version,
                               f"must be one of {records.SCHEMA_VERSIONS}")

    @property
    def dataset_name(self) -> str:
        return self.name or self.dataset

    def settings(self) -> dict:
        """The settings that change the bytes written (checked on resume).

        An import adds where its flow came from: ``flow_source`` (the frame
        layout), ``flow_rounding`` (the stored codes' rounding: the source's,
        or ``half_up`` when re-quantized) and the source's bound and
        rounding; ``flow_implementation`` is ``imported``; ``jpeg_quality`` is
        None when the RGB bytes are copied (the source's quality is unknown). A run from videos
        has none of these keys (computed here, rounded half up).
        """
        out = {
            "dataset": self.dataset, "split": self.split, "split_file": self.split_file,
            **self.encoding.to_dict(), "videos_per_shard": self.videos_per_shard,
            "name": self.dataset_name, "schema_version": self.schema_version,
            # Only strict decoding changes what is written (a short video left out).
            **({"strict_decode": True, "min_decoded_fraction": self.min_decoded_fraction}
               if self.strict_decode else {}),
        }
        if self.frames_root is not None:
            bound, rounding = self.frames_quantization
            requantized = bound != self.flow_bound
            # RGB copied (no short_side): its quality is the source's, unknown.
            if self.short_side == 0:
                out["jpeg_quality"] = None
            out.update(flow_implementation=IMPORTED, flow_source=self.frames_layout,
                       flow_rounding="half_up" if requantized else rounding,
                       frames_bound=bound, frames_rounding=rounding)
        return out

    @property
    def frames_quantization(self) -> tuple[float, str]:
        """(bound, rounding) of the imported flow: the flags, the conventions file, denseflow's."""
        bound, rounding, _ = self.frames_conventions()
        return bound, rounding

    def frames_conventions(self) -> tuple[float, str, dict]:
        """(bound, rounding, where each came from: 'flags', 'file' or 'assumed' (denseflow's)).

        Raises `data_prep.rawframes.ConventionsError` for a conventions file
        that is there but cannot be read or parsed.
        """
        found = rawframes.read_conventions(self.frames_root) if self.frames_root else {}
        source = {}
        if self.frames_bound is not None:
            bound, source["bound"] = self.frames_bound, "flags"
        elif "bound" in found:
            bound, source["bound"] = found["bound"], "file"
        else:
            bound, source["bound"] = rawframes.DENSEFLOW_BOUND, "assumed"
        if self.frames_rounding:
            rounding, source["rounding"] = self.frames_rounding, "flags"
        elif "rounding" in found:
            rounding, source["rounding"] = found["rounding"], "file"
        else:
            rounding, source["rounding"] = rawframes.DENSEFLOW_ROUNDING, "assumed"
        return float(bound), rounding, source
