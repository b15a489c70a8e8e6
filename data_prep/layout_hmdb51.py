"""The HMDB51 tree: ``<class>/*.avi`` plus ``testTrainMulti_7030_splits/``.

Each class has one list per split N = 1..3, ``<class>_test_splitN.txt``,
whose flag says train (1), test (2) or unused (0); the splits are
``train`` and ``test``. HMDB51 is one of the paper's two benchmarks
(Sect. 4.1). With ``frames`` (`data_prep.layouts.FrameFolders`) the
videos are frame folders and no video file needs to exist.
"""

from __future__ import annotations

import os
import re

from data_prep.layouts import (
    Collector, FrameFolders, Layout, LayoutError, REASON_ESCAPES, join_rel, normalize_rel, one_line,
    read_lines, sorted_subdirs, strip_ext,
)

_HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
_HMDB_SPLIT_RE = re.compile(r"^(.+)_test_split(\d+)\.txt$")
_HMDB_FLAGS = {"1": "train", "2": "test"}


def load(root: str, split: int, frames: FrameFolders | None = None) -> Layout:
    """The HMDB51 layout under ``root`` with official split ``split`` (1..3)."""
    split_dir = None
    for cand in [root] + [os.path.join(root, d) for d in sorted_subdirs(root)]:
        if os.path.isdir(os.path.join(cand, _HMDB_SPLIT_DIR)):
            split_dir = os.path.join(cand, _HMDB_SPLIT_DIR)
            break
    if split_dir is None:
        raise LayoutError(one_line(f"hmdb51 layout not found under {root}: expected "
                                   f"{_HMDB_SPLIT_DIR}/<class>_test_split{split}.txt"))
    split_files: dict[str, str] = {}
    with os.scandir(split_dir) as it:
        for e in it:
            m = _HMDB_SPLIT_RE.match(e.name)
            if m and int(m.group(2)) == split and e.is_file():
                split_files[m.group(1)] = e.name
    if not split_files:
        raise LayoutError(one_line(f"hmdb51 split {split} not found: expected "
                                   f"{split_dir}/<class>_test_split{split}.txt"))
    classes = sorted(split_files)

    # Videos sit in <root>/<class>/ or one level lower (e.g. hmdb51_org/);
    # take the candidate holding the most class folders, the root on ties.
    best, best_count = (None, 0) if frames is None else (frames.video_root(), 1)
    for cand in [root] + [os.path.join(root, d) for d in sorted_subdirs(root)]:
        if frames is not None:
            break
        count = sum(os.path.isdir(os.path.join(cand, c)) for c in classes)
        if count > best_count:
            best, best_count = cand, count
    if best is None:
        raise LayoutError(one_line(f"hmdb51 videos not found under {root}: expected <class>/ folders "
                                   f"named after the split files (e.g. {classes[0]}/)"))

    out = Collector("hmdb51", classes, ("train", "test"))
    for class_name in classes:
        fname = split_files[class_name]
        for lineno, line in read_lines(os.path.join(split_dir, fname)):
            _hmdb_entry(out, best, class_name, fname, lineno, line, frames)
    return out.finish(root)


def _hmdb_entry(out: Collector, video_root: str, class_name: str, fname: str,
                lineno: int, line: str, frames: FrameFolders | None) -> None:
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        out.fail(f"{class_name}/{line}", "", f"malformed line {lineno} in {fname}")
        return
    name, flag = parts
    if flag == "0":
        return  # unused in this split by design, not a failure
    rel = normalize_rel(f"{class_name}/{name}")
    if rel is None:
        out.fail(f"{class_name}/{strip_ext(name)}", name, REASON_ESCAPES)
        return
    video_id = strip_ext(rel)
    path = join_rel(video_root, rel)
    if flag not in _HMDB_FLAGS:
        out.fail(video_id, path, f"unexpected flag {flag!r} in {fname} line {lineno}")
        return
    if not rel.startswith(class_name + "/"):
        # Inside the root but another class's folder: the label would be wrong.
        out.fail(video_id, path, f"path leaves class folder {class_name!r} in {fname}")
        return
    out.add_listed(video_id, path, class_name, _HMDB_FLAGS[flag], fname, frames)
