"""The UCF101 tree: ``UCF-101/<Class>/*.avi`` plus ``ucfTrainTestlist/``.

The lists are the official ones (classInd.txt, trainlist0N.txt,
testlist0N.txt for splits N = 1..3); the splits are ``train`` and ``test``.
UCF101 is one of the paper's two benchmarks (Sect. 4.1). With ``frames``
(`data_prep.layouts.FrameFolders`) the videos are frame folders and no
``UCF-101/<Class>`` folder needs to exist.
"""

from __future__ import annotations

import os

from data_prep.layouts import (
    Collector, FrameFolders, Layout, LayoutError, REASON_ESCAPES, join_rel, normalize_rel, one_line,
    read_lines, strip_ext,
)

_UCF_VIDEO_DIR = "UCF-101"
_UCF_LIST_DIR = "ucfTrainTestlist"


def load(root: str, split: int, frames: FrameFolders | None = None) -> Layout:
    """The UCF101 layout under ``root`` with official split ``split`` (1..3)."""
    # Accept the folder holding UCF-101/ and ucfTrainTestlist/, the UCF-101
    # folder itself with the lists beside it, or the lists inside UCF-101/.
    list_candidates = [os.path.join(root, _UCF_LIST_DIR),
                       os.path.join(os.path.dirname(root), _UCF_LIST_DIR),
                       os.path.join(root, _UCF_VIDEO_DIR, _UCF_LIST_DIR)]
    list_dir = next((d for d in list_candidates if os.path.isfile(os.path.join(d, "classInd.txt"))), None)
    if list_dir is None:
        raise LayoutError(one_line(f"ucf101 layout not found under {root}: expected "
                                   f"{_UCF_VIDEO_DIR}/ and {_UCF_LIST_DIR}/classInd.txt"))
    classes = _read_class_ind(os.path.join(list_dir, "classInd.txt"))

    video_root = None if frames is None else frames.video_root()
    for cand in (os.path.join(root, _UCF_VIDEO_DIR), root):
        if video_root is not None:
            break
        if os.path.isdir(cand) and any(os.path.isdir(os.path.join(cand, c)) for c in classes):
            video_root = cand
            break
    if video_root is None:
        raise LayoutError(one_line(f"ucf101 videos not found under {root}: expected "
                                   f"{_UCF_VIDEO_DIR}/<Class>/ folders named as in classInd.txt"))

    list_files = [("train", f"trainlist{split:02d}.txt"), ("test", f"testlist{split:02d}.txt")]
    for _, fname in list_files:
        if not os.path.isfile(os.path.join(list_dir, fname)):
            raise LayoutError(one_line(f"ucf101 split {split} not found: expected {os.path.join(list_dir, fname)}"))

    out = Collector("ucf101", classes, ("train", "test"))
    for split_name, fname in list_files:
        for lineno, line in read_lines(os.path.join(list_dir, fname)):
            _ucf_entry(out, video_root, split_name, fname, lineno, line, frames)
    return out.finish(root)


def _read_class_ind(path: str) -> list[str]:
    by_index: dict[int, str] = {}
    for lineno, line in read_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in by_index:
            raise LayoutError(one_line(f"{path} line {lineno}: expected '<index> <ClassName>', got {line!r}"))
        by_index[int(parts[0])] = parts[1].strip()
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise LayoutError(one_line(f"{path}: class indices must be 1..N without gaps"))
    return [by_index[i] for i in range(1, len(by_index) + 1)]


def _ucf_entry(out: Collector, video_root: str, split_name: str, fname: str,
               lineno: int, line: str, frames: FrameFolders | None) -> None:
    parts = line.rsplit(None, 1)
    listed_label = None
    if len(parts) == 2 and parts[1].isdigit():
        raw, listed_label = parts[0], int(parts[1])
    else:
        raw = line  # testlists carry no label
    rel = normalize_rel(raw)
    if rel is None:
        out.fail(strip_ext(raw.replace("\\", "/")), raw, REASON_ESCAPES)
        return
    video_id = strip_ext(rel)
    path = join_rel(video_root, rel)
    if "/" not in rel:
        out.fail(video_id, path, f"no class folder in path in {fname} line {lineno}")
        return
    class_name = rel.split("/", 1)[0]
    if class_name not in out.label_of:
        out.fail(video_id, path, f"unknown class {class_name!r} in {fname} line {lineno}")
        return
    # The folder decides the class; a listed label is only a consistency check
    # so a corrupted list cannot silently mislabel a video.
    if listed_label is not None and listed_label != out.label_of[class_name] + 1:
        out.fail(video_id, path, f"label {listed_label} in {fname} line {lineno} "
                                 f"disagrees with class folder {class_name!r}")
        return
    out.add_listed(video_id, path, class_name, split_name, fname, frames)
