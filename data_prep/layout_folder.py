"""Any tree of class folders: ``<class>/<video>``, split by a split file or a fixed rule.

Without a split file, each class's sorted files are split by
``test_fraction`` (the tail goes to ``test``); a split file lists
``<class>/<file> train|test|val`` lines instead. With ``frames``
(`data_prep.layouts.FrameFolders`) the class folders hold frame folders
(``<class>/<video>/``) instead of video files.
"""

from __future__ import annotations

import math
import os

from data_prep.layouts import (
    Collector, FrameFolders, Layout, LayoutError, REASON_ESCAPES, VIDEO_EXTENSIONS, is_video_name, join_rel,
    normalize_rel, one_line, read_lines, sorted_subdirs, strip_ext, walk_files,
)

_FOLDER_SPLIT_WORDS = {"train": "train", "test": "test", "val": "validation",
                       "validation": "validation"}


def load(root: str, split_file: str | None, test_fraction: float,
         frames: FrameFolders | None = None) -> Layout:
    """Class folders under ``root``, split by ``split_file`` or else ``test_fraction`` per class."""
    class_files: dict[str, list[str]] = {}
    if frames is not None:
        # Frame folders stand for the videos: <class>/<video>/ below their root.
        top = frames.video_root()
        for class_name in sorted_subdirs(top) if os.path.isdir(top) else []:
            videos = sorted_subdirs(os.path.join(top, class_name))
            if videos:
                class_files[class_name] = [f"{class_name}/{v}" for v in videos]
    for class_name in sorted_subdirs(root) if frames is None else []:
        class_dir = os.path.join(root, class_name)
        rels = []
        for dirpath, name in walk_files(class_dir):
            if is_video_name(name):
                sub = os.path.relpath(os.path.join(dirpath, name), root)
                rels.append(sub.replace(os.sep, "/"))
        # Folders without videos (annotations/, empty ones) are not classes.
        if rels:
            class_files[class_name] = sorted(rels)
    if not class_files:
        raise LayoutError(one_line(f"folder layout not found under {root}: expected <class>/<video> "
                                   f"subfolders with video files ({' '.join(VIDEO_EXTENSIONS)})"))
    classes = sorted(class_files)

    if split_file is not None:
        return _folder_from_split_file(root, classes, split_file, frames)

    out = Collector("folder", classes, ("train", "test"))
    for class_name in classes:
        rels = class_files[class_name]
        n_test = _folder_test_count(len(rels), test_fraction)
        for i, rel in enumerate(rels):
            # The test files are the tail of the sorted list: clips cut from the
            # same source usually share a name prefix and sort together, so a
            # contiguous block leaks fewer near-duplicates than every k-th file.
            split_name = "test" if i >= len(rels) - n_test else "train"
            video_id = rel if frames is not None else strip_ext(rel)
            path = frames.path(video_id) if frames is not None else join_rel(root, rel)
            out.add(video_id, path, class_name, split_name, "folder scan")
    return out.finish(root)


def _folder_test_count(n: int, test_fraction: float) -> int:
    if n < 2:
        return 0
    # Round half up explicitly: Python's round() sends 1.5 and 2.5 both to 2.
    n_test = math.floor(test_fraction * n + 0.5)
    return min(max(n_test, 1), n - 1)


def _folder_from_split_file(root: str, classes: list[str], split_file: str,
                            frames: FrameFolders | None) -> Layout:
    path = os.path.expanduser(os.fspath(split_file))
    if not os.path.isabs(path) and not os.path.isfile(path) and os.path.isfile(os.path.join(root, path)):
        path = os.path.join(root, path)  # a bare name is looked for in data_root too
    if not os.path.isfile(path):
        raise LayoutError(one_line(f"--split_file {split_file} does not exist"))
    fname = os.path.basename(path)
    lines = [(n, l) for n, l in read_lines(path) if not l.startswith("#")]
    used = {_FOLDER_SPLIT_WORDS.get(l.rsplit(None, 1)[-1].lower()) for _, l in lines}
    split_names = ("train", "test") + (("validation",) if "validation" in used else ())
    out = Collector("folder", classes, split_names)
    for lineno, line in lines:
        parts = line.rsplit(None, 1)
        split_name = _FOLDER_SPLIT_WORDS.get(parts[-1].lower()) if len(parts) == 2 else None
        if split_name is None:
            out.fail(line, "", f"malformed line {lineno} in {fname}: expected "
                                           "'<class>/<file> train|test'")
            continue
        raw = parts[0]
        rel = normalize_rel(raw)
        if rel is None:
            out.fail(strip_ext(raw.replace("\\", "/")), raw, REASON_ESCAPES)
            continue
        video_id, abs_path = strip_ext(rel), join_rel(root, rel)
        if "/" not in rel:
            out.fail(video_id, abs_path, f"no class folder in path in {fname} line {lineno}")
            continue
        class_name = rel.split("/", 1)[0]
        if class_name not in out.label_of:
            out.fail(video_id, abs_path, f"unknown class {class_name!r} in {fname} line {lineno}")
            continue
        out.add_listed(video_id, abs_path, class_name, split_name, fname, frames)
    return out.finish(root)
