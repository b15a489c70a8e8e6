"""What every dataset reader shares: the layout types, the collector, path and list helpers.

A dataset tree, exactly as it ships, becomes a `Layout`: the class list
(index == 0-based label) and, per split, the videos with their labels.
The readers of the supported trees (`data_prep.layout_ucf101`,
`data_prep.layout_hmdb51`, `data_prep.layout_kinetics400`,
`data_prep.layout_folder`) build it with a `Collector` and the helpers
here; `data_prep.datasets.load_layout` picks the reader. This module
imports none of them.

Layouts never open the videos. With `FrameFolders` (``mat-effnet-prep
--frames_root``) a video id maps to its folder of extracted frames
(`data_prep.rawframes`) instead of a video file, and no video file needs
to exist: the class and split lists still come from the data root. Entries that cannot be used (listed but missing,
paths escaping the root, unknown classes, duplicates, malformed lines) are
skipped and reported in `Layout.failures`; problems that make the whole
layout unusable raise `LayoutError` with a one-line message before any video
is looked at.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from typing import Iterator

from data_prep import rawframes
from mat_effnet.common.errors import MatEffNetError

# Lower-case; matched case-insensitively. Order matters for Kinetics: when the
# same clip exists with several extensions, the earlier one wins.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")

REASON_ESCAPES = "path escapes data root"

_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:")


@dataclasses.dataclass(frozen=True)
class FrameFolders:
    """Videos are frame folders under ``root`` in ``layout`` (`data_prep.rawframes`)."""

    root: str
    layout: str

    def path(self, video_id: str) -> str:
        """The RGB frame folder of ``video_id``."""
        return rawframes.folders(self.root, self.layout, video_id)[0]

    def video_root(self) -> str:
        """The folder whose sub-folders are the videos' RGB folders."""
        return os.path.dirname(self.path("x"))


def locate(video_id: str, video_path: str, frames: FrameFolders | None) -> tuple[str, str | None]:
    """(path, reason it is unusable or None) of a listed video, as a file or a frame folder."""
    if frames is not None:
        path = frames.path(video_id)
        return path, None if os.path.isdir(path) else rawframes.REASON_NO_FOLDER
    return video_path, None if os.path.isfile(video_path) else "missing"


class LayoutError(MatEffNetError):
    """The data root does not hold a usable layout of the requested dataset."""


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One usable video of a split."""

    video_id: str  # unique within the dataset, '/'-separated, no extension
    path: str  # absolute path of the video file
    label: int  # 0-based index into Layout.classes
    class_name: str
    split: str  # "train" | "test" | "validation"


@dataclasses.dataclass(frozen=True)
class Failure:
    """One listed entry that was skipped, and why."""

    video_id: str
    path: str
    reason: str


@dataclasses.dataclass
class Layout:
    """Classes and per-split videos of one dataset tree."""

    dataset: str
    classes: list[str]
    splits: dict[str, list[VideoEntry]]
    failures: list[Failure]


def one_line(text: str) -> str:
    """``text`` with newlines escaped: messages stay one line whatever the paths hold."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def normalize_rel(raw: str) -> str | None:
    """`raw` as a normalized '/'-separated path relative to a root, or None
    when it is absolute or climbs above the root."""
    # Split lists written on Windows use backslashes.
    path = raw.replace("\\", "/")
    if path.startswith("/") or _WINDOWS_DRIVE_RE.match(path):
        return None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        return None
    return norm


def join_rel(root: str, rel: str) -> str:
    """``rel`` ('/'-separated) below ``root``, with the platform's separators."""
    return os.path.join(root, *rel.split("/"))


def strip_ext(rel: str) -> str:
    """A video id from a relative path: the path without its extension."""
    return posixpath.splitext(rel)[0]


def is_video_name(name: str) -> bool:
    """Whether a file name is a video (by extension), hidden files excluded."""
    # Names starting with '.' are hidden or macOS "._x.mp4" resource forks.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def read_lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of `path`;
    CRLF, a UTF-8 BOM and trailing spaces are tolerated."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LayoutError(one_line(f"cannot read {path}: {e.strerror or e}")) from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # never fails; names stay readable enough to report
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def sorted_subdirs(path: str) -> list[str]:
    """The non-hidden sub-folders of ``path``, sorted."""
    with os.scandir(path) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    # Sorted so results never depend on the filesystem's directory order.
    return sorted(names)


def walk_files(top: str) -> Iterator[tuple[str, str]]:
    """(directory, file name) for every file below `top`, in sorted order.

    Symlinked directories are followed (datasets are often assembled from
    links) but each real directory is visited once, so link loops end.
    """
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield dirpath, name


class Collector:
    """Accumulates entries and failures of one layout and builds the result."""

    def __init__(self, dataset: str, classes: list[str], split_names: tuple[str, ...]):
        self.dataset = dataset
        self.classes = classes
        self.label_of = {c: i for i, c in enumerate(classes)}
        self.splits: dict[str, list[VideoEntry]] = {s: [] for s in split_names}
        self.failures: list[Failure] = []
        self._source_of: dict[str, str] = {}

    def fail(self, video_id: str, path: str, reason: str) -> None:
        self.failures.append(Failure(video_id, path, reason))

    def add(self, video_id: str, path: str, class_name: str, split: str, source: str) -> None:
        first = self._source_of.get(video_id)
        if first is not None:
            # A second listing (same split or another one) would either
            # duplicate the video or leak it between train and test.
            self.fail(video_id, path, f"listed again in {source} (first in {first})")
            return
        self._source_of[video_id] = source
        self.splits.setdefault(split, []).append(
            VideoEntry(video_id, path, self.label_of[class_name], class_name, split))

    def add_listed(self, video_id: str, path: str, class_name: str, split: str, source: str,
                   frames: FrameFolders | None) -> None:
        """`add` a video a list file names, once its file (or frame folder) is found."""
        path, missing = locate(video_id, path, frames)
        if missing:
            self.fail(video_id, path, f"listed in {source} but {missing}")
            return
        self.add(video_id, path, class_name, split, source)

    def finish(self, root: str) -> Layout:
        if not any(self.splits.values()):
            detail = (f"{len(self.failures)} listed entries skipped, first: "
                      f"{self.failures[0].video_id}: {self.failures[0].reason}"
                      if self.failures else "nothing listed")
            raise LayoutError(one_line(f"{self.dataset} layout under {root} has no usable videos ({detail})"))
        splits = {s: sorted(v, key=lambda e: e.video_id) for s, v in self.splits.items()}
        return Layout(self.dataset, list(self.classes), splits, list(self.failures))
