"""The settings of the input pipeline and of the test protocol: `PipelineConfig`.

Plain values with no TensorFlow, so that prediction without TensorFlow (the
JAX GPU check) describes its clips with the same settings the tf.data
pipeline (`mat_effnet.data.sampling`, `mat_effnet.data.clips`) reads.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mat_effnet.common.errors import MatEffNetError

STREAMS = ("spatial", "temporal")
CROPS = (1, 3, 10)
CLIP_DTYPES = ("uint8", "float32")
# TSN's multi-scale crop scales (TSN's GroupMultiScaleCrop).
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclasses.dataclass
class PipelineConfig:
    """Everything the pipeline needs; plain values, validated on creation.

    stream: "spatial" (RGB, 3 channels) or "temporal" (stacked flow, 2L).
    num_segments: K, training segments per clip (TSN uses 3).
    image_size: S, side of the square crops fed to the model.
    flow_length: L, consecutive flow fields per segment (TSN uses 5-10).
    training: training sampling/augmentation, or test sampling/cropping.
    test_segments: N, positions per video at test time (TSN uses 25).
    crops: test-time views per position: 1 (centre), 3 or 10.
    multiscale: TSN's multi-scale crop in training (else plain random crop).
    flip: random horizontal flip with p = 0.5 in training.
    shuffle_buffer: record shuffle buffer, in clips (never the whole set);
        version-1 data only (version 2 reads a full permutation per epoch).
    seed: makes file order, record order and the clips' random draws
        reproducible; None draws fresh randomness.
    scales, max_distort, fixed_offsets: the multi-scale crop's parameters
        (TSN: scales (1, .875, .75, .66), max distortion 1, fixed offsets).
    align_to_flow: spatial stream only: sample positions from the temporal
        stream's valid range so rgb[p] and flow p..p+L-1 align per seed.
    clip_dtype: "uint8" (default: 4x fewer bytes through the host and the
        host-to-device copy) or "float32"; values are 0..255 either way.
    """

    stream: str
    num_segments: int = 3
    image_size: int = 224
    flow_length: int = 10
    training: bool = True
    test_segments: int = 25
    crops: int = 1
    multiscale: bool = False
    flip: bool = True
    shuffle_buffer: int = 64
    seed: int | None = None
    scales: Sequence[float] = TSN_SCALES
    max_distort: int = 1
    fixed_offsets: bool = True
    align_to_flow: bool = False
    clip_dtype: str = "uint8"

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise MatEffNetError(f"stream={self.stream!r}: expected one of {STREAMS}")
        if self.crops not in CROPS:
            raise MatEffNetError(f"crops={self.crops!r}: expected one of {CROPS}")
        if self.clip_dtype not in CLIP_DTYPES:
            raise MatEffNetError(f"clip_dtype={self.clip_dtype!r}: expected one of {CLIP_DTYPES}")
        for name, minimum in (("num_segments", 1), ("flow_length", 1), ("image_size", 8),
                              ("test_segments", 1), ("shuffle_buffer", 1), ("max_distort", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise MatEffNetError(f"{name}={value!r}: must be an integer >= {minimum}")
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales):
            raise MatEffNetError(f"scales={self.scales!r}: need at least one scale in (0, 1]")

    @property
    def channels(self) -> int:
        """Channels of one frame of a clip: 3 (RGB) or 2L (x/y flow interleaved)."""
        return 3 if self.stream == "spatial" else 2 * self.flow_length

    @property
    def views(self) -> int:
        """Crops per position: 1 in training, ``crops`` at test time."""
        return 1 if self.training else self.crops

    @property
    def segments(self) -> int:
        """Positions per clip: K in training, N at test time."""
        return self.num_segments if self.training else self.test_segments
