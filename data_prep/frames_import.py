"""One folder of extracted frames -> the records `mat_effnet.encoding.encode` gives a video: the import.

``mat-effnet-prep --frames_root=DIR --frames_layout=rawframes|twostreamfusion``
trains on frames and TV-L1 flow people already have (TSN / mmaction2
rawframes written by denseflow, or the precomputed UCF101 flow of
twostreamfusion; names and conventions in `data_prep.rawframes`) instead of
recomputing the flow (paper Sect. 4.2: TV-L1 as in TSN). No video is
decoded and no flow computed:

* Frames keep their stored size unless ``short_side`` is set (> 0 and
  different from the stored short side). RGB is copied byte for byte when
  the size is kept, else decoded, resized as `mat_effnet.ops.video` resizes and
  re-encoded at ``jpeg_quality``.
* Flow codes are copied when the size is kept and the source bound equals
  ``flow_bound``. Otherwise each component is decoded, dequantized with the
  source's bound and rounding (`mat_effnet.ops.quantize.dequantize_flow`), resized
  with its vectors scaled by the resize factor of its axis, and re-quantized
  half up at ``flow_bound`` (`mat_effnet.ops.quantize.quantize_flow`).
* Counts follow `data_prep.rawframes.align` (T images, T - 1 or T fields
  -> T frames, T - 1 flows); records are chunked as `encode.encode_video`
  chunks (``chunk_frames``; the pair straddling two chunks is not stored).
* A video's fps is the conventions file's when `data_prep.frames_export`
  wrote the folder, else `mat_effnet.ops.video.DEFAULT_FPS`.

Bad input -- a missing folder, a missing or unreadable frame, a count
mismatch, mixed frame sizes -- raises `mat_effnet.ops.video.VideoError` with the
reason, which the builder lists as it lists a bad video file; the run goes
on and resumes like any other (`data_prep.work_files`). A frame that cannot
be read for the machine's reason (an I/O error, a lost mount) raises
`mat_effnet.common.faults.MachineFault`: the run stops, nothing is recorded.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import cv2
import numpy as np

from data_prep import rawframes
from mat_effnet.ops import video
from mat_effnet import records
from mat_effnet.ops import quantize
from mat_effnet.common import faults

# JPEG markers that start a frame header (SOF0..SOF15 less DHT, JPG, DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header without decoding it; None if it is not one.

    Reading the header only keeps the import at file-copy speed; a file
    that is not a JPEG, or is cut before its header, is unreadable.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return (h, w) if h > 0 and w > 0 else None
        i += 2 + length
    return None


@functools.lru_cache(maxsize=8)
def _fps_table(root: str) -> dict:
    return dict(rawframes.read_conventions(root).get("fps") or {})


def _read(path: str) -> tuple[bytes, tuple[int, int]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        # A disk's I/O error or a lost mount is the machine's, not this frame's.
        faults.raise_if_machine(e)
        data = b""
    size = jpeg_size(data)
    if size is None:
        raise rawframes.FramesError(f"{rawframes.REASON_UNREADABLE} {os.path.basename(path)}")
    return data, size


def _decode(data: bytes, path: str, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise rawframes.FramesError(f"{rawframes.REASON_UNREADABLE} {os.path.basename(path)}")
    return image


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # As mat_effnet.ops.video resizes decoded frames: area when shrinking, bilinear otherwise.
    shrinking = width * height < image.shape[1] * image.shape[0]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def import_video(rgb_folder: str, cfg, *, video_id: str, label: int = 0, class_name: str = "",
                 stats: dict | None = None) -> Iterator[records.VideoRecord]:
    """Yields the records of one frame folder (``cfg``: a `PrepConfig` with ``frames_root``).

    Raises `mat_effnet.ops.video.VideoError` (path = the folder) for the bad
    inputs of the module docstring. ``stats`` is filled as
    `mat_effnet.encoding.encode.encode_video` fills it.
    """
    try:
        yield from _import(rgb_folder, cfg, video_id, label, class_name,
                           stats if stats is not None else {})
    except rawframes.FramesError as e:
        raise video.VideoError(rgb_folder, e.reason) from None


def _import(rgb_folder, cfg, video_id, label, class_name, stats):
    with_flow = cfg.flow != "none"
    rgb_paths, fx_paths, fy_paths = rawframes.list_video(cfg.frames_root, cfg.frames_layout,
                                                         rgb_folder, with_flow)
    if with_flow:
        total, _ = rawframes.align(len(rgb_paths), len(fx_paths), len(fy_paths))
    else:
        total = len(rgb_paths)
    if total < 2:
        raise rawframes.FramesError(video.REASON_ONE_FRAME)
    src_bound, src_rounding = cfg.frames_quantization
    fps = float(_fps_table(cfg.frames_root).get(video_id, video.DEFAULT_FPS))

    # The stored size, from the first frame; every other must match it.
    first, (h, w) = _read(rgb_paths[0])
    out_w, out_h = video.resized_size(w, h, cfg.short_side)
    resize = (out_w, out_h) != (w, h)
    requantize = resize or src_bound != cfg.flow_bound
    stats.update(frames=0, records=0, rgb_bytes=0, flow_bytes=0, fps=fps,
                 height=int(out_h), width=int(out_w))

    def rgb_bytes(i):
        data, size = (first, (h, w)) if i == 0 else _read(rgb_paths[i])
        if size != (h, w):
            raise rawframes.FramesError(f"{rawframes.REASON_SIZES}: {size[0]}x{size[1]} in "
                                        f"{os.path.basename(rgb_paths[i])}, {h}x{w} in the first")
        if not resize:
            return data
        return _jpeg(_resize(_decode(data, rgb_paths[i], cv2.IMREAD_COLOR), out_w, out_h),
                     cfg.jpeg_quality)

    def flow_bytes(i):
        out = []
        for paths, axis_scale in ((fx_paths, out_w / w), (fy_paths, out_h / h)):
            data, size = _read(paths[i])
            if size != (h, w):
                raise rawframes.FramesError(
                    f"{rawframes.REASON_SIZES}: {size[0]}x{size[1]} in "
                    f"{os.path.basename(paths[i])}, {h}x{w} in the images")
            if not requantize:
                out.append(data)
                continue
            q = _decode(data, paths[i], cv2.IMREAD_GRAYSCALE)
            v = quantize.dequantize_flow(q, src_bound, src_rounding)
            if resize:
                # A displacement of d source pixels is d * factor output pixels.
                v = _resize(v, out_w, out_h) * np.float32(axis_scale)
            out.append(_jpeg(quantize.quantize_flow(v, cfg.flow_bound), cfg.jpeg_quality))
        return out

    for chunk, offset in enumerate(range(0, total, cfg.chunk_frames)):
        n = min(cfg.chunk_frames, total - offset)
        if n < 2:  # a 1-frame tail has no flow; dropped as encode_video drops it
            break
        rgb = [rgb_bytes(offset + i) for i in range(n)]
        fx, fy = [], []
        if with_flow:
            for i in range(n - 1):
                x, y = flow_bytes(offset + i)
                fx.append(x)
                fy.append(y)
        stats["frames"] += n
        stats["records"] += 1
        stats["rgb_bytes"] += sum(map(len, rgb))
        stats["flow_bytes"] += sum(map(len, fx)) + sum(map(len, fy))
        yield records.VideoRecord(
            video_id=video_id, label=label, class_name=class_name, fps=fps,
            height=int(out_h), width=int(out_w), rgb=rgb, flow_x=fx, flow_y=fy,
            chunk_index=chunk, frame_offset=offset)
