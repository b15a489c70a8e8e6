"""One video file -> its records: the single seam into the data preparation.

The two-stream network (paper Sect. 3, Fig. 1) reads RGB frames in its
spatial stream and stacked optical flow in its temporal stream (Sect. 4.2:
TV-L1 flow as in TSN). `encode_video(path, settings)` turns one video into
exactly those inputs, as records of `mat_effnet.records`: decode, resize the
short side, JPEG the RGB frames, compute flow between consecutive frames,
quantize it and JPEG the two components. The dataset builder, its Beam
runner and prediction all call it, so a clip seen at prediction time is
prepared exactly as the training data was.

`EncodeSettings` holds every setting that decides the bytes of a video's
records, defined and validated once here; `data_prep.prep_config.PrepConfig`,
``mat-effnet-prep``'s flags and the metadata of prepared data derive from it.

For batched flow (`mat_effnet.encoding.flow_batches`: flow computed in one process for
many videos), the same steps are also offered in two halves: `decode_video`
(frames -> RGB JPEGs and grayscale frames) and `assemble_records`
(quantized flow -> records). Both halves use the same helpers as
`encode_video`, so either route writes the same bytes for the same flow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from mat_effnet.ops import optical_flow as flow_lib
from mat_effnet.ops import video
from mat_effnet import records
from mat_effnet.common.flagdefs import setting
from mat_effnet.common.errors import bad_argument
from mat_effnet.ops import quantize


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """The settings that decide the bytes of a video's records.

    Each field's default and help text are defined here once; the flags of
    ``mat-effnet-prep`` are derived from them (`mat_effnet.common.flagdefs`).
    """

    short_side: int = setting(256, "Frames are resized so the short side is this (0: keep).")
    flow: str = setting("tvl1", "Optical flow: TV-L1 (the paper's), DIS (~100x faster on CPU) "
                        "or none.", choices=flow_lib.ALGORITHMS)
    flow_implementation: str = setting(
        "opencv", "TV-L1's implementation: opencv (one pair at a time per worker core) or "
        "keras (the same model compiled and batched, on the GPU when there is one). Other "
        "flows have only opencv.", choices=flow_lib.IMPLEMENTATIONS)
    flow_bound: float = setting(20.0, "Flow is clipped to +-bound pixels before quantization.")
    jpeg_quality: int = setting(90, "JPEG quality of RGB and flow frames.")
    # 1000 frames is 40 s at 25 fps, longer than nearly every UCF101 / HMDB51 /
    # Kinetics clip: one record (and the memory to build it) stays bounded.
    chunk_frames: int = setting(1000, "Longer videos are cut into records of this many frames.")

    def __post_init__(self):
        flow_lib.check_implementation(self.flow, self.flow_implementation)
        if not self.flow_bound > 0:
            raise bad_argument("flow_bound", self.flow_bound, "must be > 0")
        if self.short_side < 0:
            raise bad_argument("short_side", self.short_side, "must be >= 0 (0 keeps the size)")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad_argument("jpeg_quality", self.jpeg_quality, "must be in 1..100")
        if self.chunk_frames < 2:
            raise bad_argument("chunk_frames", self.chunk_frames, "must be >= 2")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncodeSettings":
        """The settings in ``d``; unknown keys (other settings of a run) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------
# Shared steps (both routes go through these, so their bytes agree)
# ---------------------------------------------------------------------------

def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _rgb_jpeg(frame: np.ndarray, quality: int) -> bytes:
    # OpenCV encodes BGR; frames are RGB, and TF's decode_jpeg returns RGB,
    # so swap here once.
    return _jpeg(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), quality)


def _flow_jpegs(quantized: np.ndarray, quality: int) -> tuple[list, list]:
    fx = [_jpeg(np.ascontiguousarray(q[..., 0]), quality) for q in quantized]
    fy = [_jpeg(np.ascontiguousarray(q[..., 1]), quality) for q in quantized]
    return fx, fy


def stored_jpegs(rgb: np.ndarray | None, flow: np.ndarray | None, quality: int) -> tuple:
    """One frame's JPEGs exactly as a record stores them: (rgb, flow_x, flow_y) bytes.

    ``rgb``: uint8 (H, W, 3); ``flow``: one quantized field, uint8 (H, W, 2);
    either may be None (its bytes are then None). The seam for
    `mat_effnet.serving.streaming`, which keeps a live stream's frames as the
    training data's records hold them without writing records.
    """
    image = None if rgb is None else _rgb_jpeg(rgb, quality)
    if flow is None:
        return image, None, None
    return (image, _jpeg(np.ascontiguousarray(flow[..., 0]), quality),
            _jpeg(np.ascontiguousarray(flow[..., 1]), quality))


def _count(stats: dict, rgb, fx, fy) -> None:
    stats["frames"] += len(rgb)
    stats["records"] += 1
    stats["rgb_bytes"] += sum(map(len, rgb))
    stats["flow_bytes"] += sum(map(len, fx)) + sum(map(len, fy))


def _start_stats(stats: dict | None, fps: float) -> dict:
    stats = stats if stats is not None else {}
    stats.update(frames=0, records=0, rgb_bytes=0, flow_bytes=0, fps=fps)
    return stats


def check_length(path: str, total: int) -> None:
    if total == 0:
        raise video.VideoError(path, video.REASON_NO_FRAMES)
    if total == 1:
        raise video.VideoError(path, video.REASON_ONE_FRAME)


# ---------------------------------------------------------------------------
# One call: video -> records
# ---------------------------------------------------------------------------

def encode_video(path: str, settings: EncodeSettings, *, video_id: str | None = None,
                 label: int = 0, class_name: str = "", stats: dict | None = None,
                 flow_fn: Callable | None = None) -> Iterator[records.VideoRecord]:
    """Decodes one video and yields its records (one per chunk), streaming.

    Frames are decoded one at a time; memory is bounded by one chunk's JPEGs
    plus one flow batch of grayscale frames. Flow is computed between
    consecutive frames *within* a chunk; the pair that straddles two chunks
    is not stored, which keeps every record self-contained
    (``num_frames - 1`` flow fields). A 1-frame tail is dropped.

    ``flow_fn`` is a batch flow function (`mat_effnet.ops.optical_flow.create_batch_flow`'s
    contract; its ``batch_size`` attribute, if any, says how many pairs to
    hand it per call); default: the one ``settings`` name. ``video_id``
    defaults to the file name. Raises `mat_effnet.ops.video.VideoError` for videos
    that cannot be used. ``stats``, if given, is filled with frame and byte
    counts, fps and the frame size.
    """
    path = os.fspath(path)
    info = video.probe(path)
    video_id = os.path.basename(path) if video_id is None else video_id
    total = yield from encode_frames(video.iter_frame_runs(path, settings.short_side), info.fps,
                                     settings, video_id=video_id, label=label,
                                     class_name=class_name, stats=stats, flow_fn=flow_fn)
    check_length(path, total)


def encode_frames(frame_runs: Iterable[tuple[int, np.ndarray]], fps: float,
                  settings: EncodeSettings, *, video_id: str, label: int = 0,
                  class_name: str = "", stats: dict | None = None,
                  flow_fn: Callable | None = None) -> Iterator[records.VideoRecord]:
    """`encode_video` on frames already decoded and resized: ``(run, RGB frame)`` pairs.

    ``run`` changes where frames were skipped (`mat_effnet.ops.video.iter_frame_runs`);
    frames of an array given by a caller are one run (``(0, frame)``), each
    resized with `mat_effnet.ops.video.resize_frame` as the decoder resizes.
    Returns (as the generator's value) the number of frames seen.
    """
    with_flow = settings.flow != "none"
    if with_flow and flow_fn is None:
        flow_fn = flow_lib.create_batch_flow(settings.flow, settings.flow_implementation)
    step = max(1, int(getattr(flow_fn, "batch_size", 1) or 1))
    stats = _start_stats(stats, fps)

    rgb: list = []
    fx: list = []
    fy: list = []
    grays: list = []  # this chunk's frames whose flow to the next is not computed yet
    chunk = offset = total = 0
    shape = None

    def run_flow():
        nonlocal grays
        if len(grays) >= 2:
            fields = flow_fn(np.stack(grays[:-1]), np.stack(grays[1:]))
            x, y = _flow_jpegs(quantize.quantize_flow(fields, settings.flow_bound), settings.jpeg_quality)
            fx.extend(x)
            fy.extend(y)
        grays = grays[-1:]

    def record():
        _count(stats, rgb, fx, fy)
        return records.VideoRecord(
            video_id=video_id, label=label, class_name=class_name, fps=fps,
            height=shape[0], width=shape[1], rgb=list(rgb), flow_x=list(fx), flow_y=list(fy),
            chunk_index=chunk, frame_offset=offset)

    stats["gaps"] = []
    run = 0
    for frame_run, frame in frame_runs:
        if frame_run != run:
            # Frames were skipped (a damaged region): flow across the jump
            # would be wrong, so the frames after it start a new chunk.
            stats["gaps"].append(total)
            run = frame_run
            if len(rgb) >= 2:  # a 1-frame run has no flow: dropped, as a tail is
                if with_flow:
                    run_flow()
                yield record()
                chunk, offset = chunk + 1, offset + len(rgb)
            rgb, fx, fy, grays = [], [], [], []
        if shape is None:
            shape = frame.shape[:2]
            stats.update(height=int(shape[0]), width=int(shape[1]))
        rgb.append(_rgb_jpeg(frame, settings.jpeg_quality))
        total += 1
        if with_flow:
            grays.append(flow_lib.to_gray(frame))
            if len(grays) > step:
                run_flow()
        if len(rgb) == settings.chunk_frames:
            if with_flow:
                run_flow()
            yield record()
            chunk, offset = chunk + 1, offset + len(rgb)
            rgb, fx, fy, grays = [], [], [], []
    if len(rgb) >= 2:
        if with_flow:
            run_flow()
        yield record()
    return total


# ---------------------------------------------------------------------------
# Two halves, for flow computed elsewhere (`mat_effnet.encoding.flow_batches`)
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class DecodedVideo:
    """A video decoded for flow computed elsewhere: per chunk, RGB JPEGs and gray frames.

    ``grays[c]`` is chunk c's (T, H, W) uint8 grayscale frames (None when
    the settings have no flow); flow is needed for its T - 1 consecutive pairs.
    """

    fps: float
    height: int
    width: int
    rgb: list  # per chunk: list of JPEG bytes
    grays: list  # per chunk: (T, H, W) uint8 array or None
    stats: dict

    @property
    def pairs(self) -> int:
        return sum(len(g) - 1 for g in self.grays if g is not None)


def decode_video(path: str, settings: EncodeSettings) -> DecodedVideo:
    """The first half of `encode_video`: decode, resize, JPEG; keep gray frames.

    Holds the whole video in memory (its JPEGs and gray frames), so it is
    for the short clips of action-recognition datasets; `encode_video`
    streams. Raises `mat_effnet.ops.video.VideoError` like `encode_video`.
    """
    path = os.fspath(path)
    info = video.probe(path)
    with_flow = settings.flow != "none"
    chunks_rgb: list = [[]]
    chunks_gray: list = [[]]
    total = run = 0
    shape = None
    gaps = []
    for frame_run, frame in video.iter_frame_runs(path, settings.short_side):
        if shape is None:
            shape = frame.shape[:2]
        if frame_run != run:  # after a damaged region: a new chunk, as encode_video
            gaps.append(total)
            run = frame_run
            if len(chunks_rgb[-1]) < 2:
                chunks_rgb.pop()
                chunks_gray.pop()
            chunks_rgb.append([])
            chunks_gray.append([])
        elif len(chunks_rgb[-1]) == settings.chunk_frames:
            chunks_rgb.append([])
            chunks_gray.append([])
        chunks_rgb[-1].append(_rgb_jpeg(frame, settings.jpeg_quality))
        if with_flow:
            chunks_gray[-1].append(flow_lib.to_gray(frame))
        total += 1
    check_length(path, total)
    if len(chunks_rgb[-1]) < 2:  # a 1-frame tail has no flow; drop it
        chunks_rgb.pop()
        chunks_gray.pop()
    grays = [np.stack(g) if with_flow else None for g in chunks_gray]
    stats = {"fps": info.fps, "height": int(shape[0]), "width": int(shape[1]), "gaps": gaps}
    return DecodedVideo(fps=info.fps, height=int(shape[0]), width=int(shape[1]),
                        rgb=chunks_rgb, grays=grays, stats=stats)


def assemble_records(decoded: DecodedVideo, quantized: list, settings: EncodeSettings, *,
                     video_id: str, label: int = 0, class_name: str = "",
                     stats: dict | None = None) -> Iterator[records.VideoRecord]:
    """The second half: JPEG the quantized flow and yield the records.

    ``quantized[c]`` is chunk c's (T - 1, H, W, 2) uint8 flow (`quantize`),
    or None when the settings have no flow. ``stats`` is filled as by
    `encode_video`.
    """
    stats = _start_stats(stats, decoded.fps)
    stats.update(height=decoded.height, width=decoded.width,
                 gaps=list(decoded.stats.get("gaps", [])))
    offset = 0
    for c, rgb in enumerate(decoded.rgb):
        fx, fy = ([], []) if quantized[c] is None else _flow_jpegs(quantized[c],
                                                                     settings.jpeg_quality)
        _count(stats, rgb, fx, fy)
        yield records.VideoRecord(
            video_id=video_id, label=label, class_name=class_name, fps=decoded.fps,
            height=decoded.height, width=decoded.width, rgb=rgb, flow_x=fx, flow_y=fy,
            chunk_index=c, frame_offset=offset)
        offset += len(rgb)
