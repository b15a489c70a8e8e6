"""The field's frame-folder formats: names, quantization and frame counts, for writer and reader.

Two-stream networks (paper Sect. 3, Fig. 1; TV-L1 flow as in TSN, Sect. 4.2)
are mostly trained from folders of extracted frames, in one of two layouts.
Both are described here once; `data_prep.frames_export` writes them and
`data_prep.frames_import` reads them, so the two can never drift apart.

* ``rawframes`` -- TSN / mmaction2, written by denseflow
  (yjxiong/dense_flow, open-mmlab/denseflow) and read by mmaction2's
  ``RawframeDataset``: ``<root>/<class>/<video>/img_00001.jpg``,
  ``flow_x_00001.jpg``, ``flow_y_00001.jpg``. Facts taken from their sources:
  the names are ``<prefix>_%05d.jpg`` (dense_flow's ``writeImages``);
  ``RawframeDataset`` reads ``filename_tmpl='img_{:05}.jpg'`` (flow:
  ``'{}_{:05d}.jpg'`` with ``flow_x``/``flow_y``) from ``start_index=1``; its
  file lists hold ``<frame_dir> <total_frames> <label>`` lines, written by
  mmaction2's ``tools/data/build_file_list.py`` as
  ``<dataset>_{train,val}_split_<N>_rawframes.txt`` with the RGB image count
  and the 0-based class index. denseflow writes, for T images and step 1,
  T - 1 flow fields (``M = N - |step|`` in ``calc_optflows_imp``), field k
  being image k -> image k + 1. It quantizes each component with
  ``v > b ? 255 : v < -b ? 0 : cvRound(255 * (v + b) / (2 b))``
  (``convertFlowToImage``, bound ``-b=20`` in its README and in mmaction2's
  ``build_rawframes.py``) and encodes every JPEG with ``imencode(".jpg", ..)``
  without parameters: OpenCV's default quality, 95.
* ``twostreamfusion`` -- the precomputed UCF101 data of
  feichtenhofer/twostreamfusion (``ucf101_jpegs_256.zip``,
  ``ucf101_tvl1_flow.zip``), as the repositories that train on it read it
  (e.g. jeffreyyihuang/two-stream-action-recognition's motion loader):
  ``jpegs_256/<video>/frame000001.jpg`` and
  ``tvl1_flow/{u,v}/<video>/frame000001.jpg`` (``'frame' + str(i).zfill(6)``,
  from 1), ``<video>`` being the file stem ``v_<Class>_gXX_cXX`` without a
  class folder. Its bound and rounding are not stated in that code; the
  import takes them from flags (denseflow's by default).

Rounding conventions (`mat_effnet.ops.quantize.quantize_flow`'s ``rounding``,
which `mat_effnet.ops.quantize.dequantize_flow` inverts): ``cvround`` is denseflow's (OpenCV's
``cvRound``: round half to even); ``truncate`` is mmaction2's
``tools/misc/flow_extraction.py`` (clip to ±bound, add bound, scale by
255 / 2 bound, ``astype(uint8)``; it names its fields ``x_00001.jpg`` /
``y_00001.jpg`` through ``'{}_{:05d}.jpg'.format('x', i)``, which the
rawframes reader also accepts when no ``flow_x_`` files are there);
``half_up`` is this project's. They differ by at most one step (2 b / 255);
dequantization gives each code's centre value, so truncated codes are read
half a step higher.

Frame counts (`align`): a folder of T images and F flow fields (x and y
counts equal) gives T frames and T - 1 flows when F == T - 1 (denseflow)
or F == T (tools that write a field for the last frame too; that last
field is dropped, field k stays image k -> k + 1); anything else is a count
mismatch. Numbering may start at 1 (both layouts) or 0; it must be gapless.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re

from mat_effnet.common.errors import MatEffNetError
from mat_effnet.ops.quantize import ROUNDINGS, check_rounding  # noqa: F401 (the formats' roundings)

LAYOUTS = ("rawframes", "twostreamfusion")
#: denseflow's conventions: what `data_prep.frames_export` writes by default.
DENSEFLOW_BOUND = 20.0
DENSEFLOW_ROUNDING = "cvround"
DENSEFLOW_JPEG_QUALITY = 95  # OpenCV's IMWRITE_JPEG_QUALITY default
#: The name of the small JSON written beside exported frames.
CONVENTIONS_FILE = "mat_effnet_flow.json"

# Bad-input reasons, as `mat_effnet.ops.video`'s: a few words each.
REASON_NO_FOLDER = "frame folder missing"
REASON_NO_FRAMES = "no frames in folder"
REASON_MISSING_FRAME = "missing frame"
REASON_UNREADABLE = "unreadable frame"
REASON_COUNT = "frame count mismatch"
REASON_SIZES = "mixed frame sizes"


@dataclasses.dataclass(frozen=True)
class Naming:
    """Where one layout keeps a video's frames: folders and file-name patterns."""

    rgb_dir: str  # relative to the frames root; {video} is the video folder name
    flow_x_dir: str
    flow_y_dir: str
    rgb_prefix: str
    flow_x_prefix: str
    flow_y_prefix: str
    digits: int
    start_index: int = 1
    nested: bool = True  # the video folder keeps its class folder (video id) or not (stem)


NAMINGS = {
    "rawframes": Naming("{video}", "{video}", "{video}", "img_", "flow_x_", "flow_y_", 5),
    "twostreamfusion": Naming("jpegs_256/{video}", "tvl1_flow/u/{video}", "tvl1_flow/v/{video}",
                              "frame", "frame", "frame", 6, nested=False),
}


def check_layout(layout: str) -> Naming:
    if layout not in NAMINGS:
        raise ValueError(f"frames_layout={layout}: expected one of {', '.join(LAYOUTS)}")
    return NAMINGS[layout]


def video_folder(layout: str, video_id: str) -> str:
    """The folder name of a video in ``layout`` ('/'-separated, relative)."""
    return video_id if check_layout(layout).nested else posixpath.basename(video_id)


def folders(root: str, layout: str, video_id: str) -> tuple[str, str, str]:
    """(rgb, flow x, flow y) folders of ``video_id`` under ``root``."""
    naming = check_layout(layout)
    video = video_folder(layout, video_id)
    return tuple(os.path.join(root, *d.format(video=video).split("/"))
                 for d in (naming.rgb_dir, naming.flow_x_dir, naming.flow_y_dir))


def file_name(prefix: str, index: int, naming: Naming) -> str:
    """The name of frame ``index`` (0-based) as the layout numbers it."""
    return f"{prefix}{index + naming.start_index:0{naming.digits}d}.jpg"


# ---------------------------------------------------------------------------
# Reading a folder: the numbered files of one prefix, gapless
# ---------------------------------------------------------------------------

class FramesError(Exception):
    """A video's frames cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def numbered_files(folder: str, prefix: str, digits: int) -> list[str]:
    """The paths of ``<prefix>NNN.jpg`` in ``folder`` in number order; gaps raise FramesError.

    Numbering may start at 0 or 1 (tools differ); any other start, or a
    missing number, is a missing frame.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d{%d,})\.jpg$" % digits)
    found = {}
    with os.scandir(folder) as it:
        for e in it:
            m = pattern.match(e.name)
            if m:
                found[int(m.group(1))] = e.path
    if not found:
        return []
    first = min(found)
    if first not in (0, 1):
        raise FramesError(f"{REASON_MISSING_FRAME} {prefix}{1:0{digits}d}.jpg")
    for i in range(first, first + len(found)):
        if i not in found:
            raise FramesError(f"{REASON_MISSING_FRAME} {prefix}{i:0{digits}d}.jpg")
    return [found[i] for i in range(first, first + len(found))]


def flow_folders(root: str, layout: str, rgb_folder: str) -> tuple[str, str]:
    """The (flow x, flow y) folders that go with a video's RGB folder under ``root``."""
    naming = check_layout(layout)
    if naming.rgb_dir == naming.flow_x_dir == naming.flow_y_dir == "{video}":
        return rgb_folder, rgb_folder
    video = os.path.basename(os.path.normpath(rgb_folder))
    return tuple(os.path.join(root, *d.format(video=video).split("/"))
                 for d in (naming.flow_x_dir, naming.flow_y_dir))


def list_video(root: str, layout: str, rgb_folder: str, with_flow: bool):
    """(rgb paths, flow x paths, flow y paths) of one video; FramesError when unusable."""
    naming = check_layout(layout)
    dirs = (rgb_folder, *flow_folders(root, layout, rgb_folder))
    for d in dirs if with_flow else dirs[:1]:
        if not os.path.isdir(d):
            raise FramesError(f"{REASON_NO_FOLDER} {d}")
    rgb = numbered_files(dirs[0], naming.rgb_prefix, naming.digits)
    if not rgb:
        raise FramesError(REASON_NO_FRAMES)
    if not with_flow:
        return rgb, [], []
    fx = numbered_files(dirs[1], naming.flow_x_prefix, naming.digits)
    fy = numbered_files(dirs[2], naming.flow_y_prefix, naming.digits)
    if not fx and not fy and layout == "rawframes":  # flow_extraction.py's names
        fx = numbered_files(dirs[1], "x_", naming.digits)
        fy = numbered_files(dirs[2], "y_", naming.digits)
    return rgb, fx, fy


def align(num_rgb: int, num_x: int, num_y: int) -> tuple[int, int]:
    """(frames, flow fields) to use from a folder's counts; FramesError on a mismatch.

    The rule is the module docstring's: F == T - 1 or F == T (the extra last
    field dropped) gives T frames and T - 1 fields, field k = frame k -> k+1.
    """
    if num_x != num_y:
        raise FramesError(f"{REASON_COUNT}: {num_x} flow x and {num_y} flow y images")
    if num_x not in (num_rgb - 1, num_rgb):
        raise FramesError(f"{REASON_COUNT}: {num_rgb} images and {num_x} flow fields "
                          "(expected images - 1 or images)")
    return num_rgb, num_rgb - 1


class ConventionsError(MatEffNetError):
    """A conventions file that is there but cannot be read or parsed."""


def read_conventions(root: str) -> dict:
    """The conventions file beside exported frames (`data_prep.frames_export`); {} when none.

    A file that exists but cannot be read, or is not a JSON object, raises
    `ConventionsError` naming it: guessing denseflow's conventions for
    frames written otherwise would mis-dequantize every flow field.
    """
    path = os.path.join(root, CONVENTIONS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConventionsError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e}); "
                               "fix or remove it, or give --frames_bound and "
                               "--frames_rounding") from None
    try:
        found = json.loads(text)
    except ValueError as e:
        found = e
    if not isinstance(found, dict):
        why = f"not JSON ({found})" if isinstance(found, ValueError) else "not a JSON object"
        raise ConventionsError(f"{path}: {why}; fix or remove it, or give --frames_bound and "
                               "--frames_rounding")
    bound, rounding = found.get("bound", 1.0), found.get("rounding", ROUNDINGS[0])
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise ConventionsError(f"{path}: bound={bound!r} is not a positive number; fix it, or "
                               "give --frames_bound")
    if rounding not in ROUNDINGS:
        raise ConventionsError(f"{path}: rounding={rounding!r} is not one of "
                               f"{', '.join(ROUNDINGS)}; fix it, or give --frames_rounding")
    return found
