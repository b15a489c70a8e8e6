"""The Kinetics-400 tree: the annotation CSVs plus clips named after their rows.

``train.csv`` / ``validate.csv`` (or ``val.csv``) / ``test.csv`` in the
root or in ``annotations/``, and clips named
``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere below the root; the
splits are ``train``, ``validation`` and ``test`` when that CSV carries
labels. With ``frames`` (`data_prep.layouts.FrameFolders`) the clips are
frame folders named after their rows, anywhere below the layout's video
folder, and no video file needs to exist.
"""

from __future__ import annotations

import csv
import math
import os

from data_prep.layouts import (
    Collector, FrameFolders, Layout, LayoutError, VIDEO_EXTENSIONS, is_video_name, one_line, walk_files,
)

REASON_CLIP_MISSING = "clip missing"


def load(root: str, frames: FrameFolders | None = None) -> Layout:
    """The Kinetics-400 layout under ``root`` (splits from the CSVs found)."""
    csv_dir = next((d for d in (root, os.path.join(root, "annotations"))
                    if os.path.isfile(os.path.join(d, "train.csv"))), None)
    if csv_dir is None:
        raise LayoutError(one_line(f"kinetics400 layout not found under {root}: expected train.csv "
                                   "(with validate.csv) in it or in annotations/"))
    sources = [("train", "train.csv")]
    val_name = next((n for n in ("validate.csv", "val.csv")
                     if os.path.isfile(os.path.join(csv_dir, n))), None)
    if val_name is not None:
        sources.append(("validation", val_name))

    rows = {s: _read_kinetics_csv(os.path.join(csv_dir, n), need_label=True) for s, n in sources}
    classes = sorted({r[1] for r in rows["train"] if r[1]})
    if not classes:
        raise LayoutError(one_line(f"{os.path.join(csv_dir, 'train.csv')} has no labelled rows"))
    if os.path.isfile(os.path.join(csv_dir, "test.csv")):
        test_rows = _read_kinetics_csv(os.path.join(csv_dir, "test.csv"), need_label=False)
        # The original test.csv ships without labels; it is only a split when
        # labels were added.
        if any(r[1] for r in test_rows):
            sources.append(("test", "test.csv"))
            rows["test"] = test_rows

    index = _clip_index(root) if frames is None else _folder_index(frames.video_root())
    out = Collector("kinetics400", classes, tuple(s for s, _ in sources))
    for split_name, fname in sources:
        for lineno, label, yid, start, end in rows[split_name]:
            _kinetics_entry(out, index, split_name, fname, lineno, label, yid, start, end)
    return out.finish(root)


def _read_kinetics_csv(path: str, need_label: bool) -> list[tuple[int, str, str, str, str]]:
    """(line number, label, youtube_id, time_start, time_end) per data row;
    values are raw strings, checked later so a bad row is one failure."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            required = ["youtube_id", "time_start", "time_end"] + (["label"] if need_label else [])
            missing = [c for c in required if c not in header]
            if missing:
                raise LayoutError(one_line(f"{path}: header lacks {', '.join(missing)} "
                                           "(expected label,youtube_id,time_start,time_end,split)"))
            col = {name: i for i, name in enumerate(header)}
            out = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue

                def cell(name: str) -> str:
                    i = col.get(name)
                    return row[i].strip() if i is not None and i < len(row) else ""

                out.append((reader.line_num, cell("label"), cell("youtube_id"),
                            cell("time_start"), cell("time_end")))
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LayoutError(one_line(f"cannot read {path}: {e}")) from e


def _clip_index(root: str) -> dict[str, str]:
    """Clip file stem -> absolute path for every video file below `root`.

    One walk serves every CSV row; clips may be flat, in class folders or in
    split folders. A stem found with several extensions keeps the one earliest
    in VIDEO_EXTENSIONS, otherwise the first in sorted walk order.
    """
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    index: dict[str, tuple[int, str]] = {}
    for dirpath, name in walk_files(root):
        if not is_video_name(name):
            continue
        stem, ext = os.path.splitext(name)
        r = rank[ext.lower()]
        if stem not in index or r < index[stem][0]:
            index[stem] = (r, os.path.join(dirpath, name))
    return {stem: path for stem, (_, path) in index.items()}


def _folder_index(top: str) -> dict[str, str]:
    """Folder name -> absolute path for every folder below ``top`` (sorted walk, first wins)."""
    index: dict[str, str] = {}
    if not os.path.isdir(top):
        return index
    for dirpath, dirnames, _ in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            index.setdefault(d, os.path.join(dirpath, d))
    return index


def _parse_time(raw: str) -> int | None:
    # CSVs from different mirrors write 14 or 14.0; anything else is corrupt.
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or not value.is_integer() or value < 0:
        return None
    return int(value)


def _kinetics_entry(out: Collector, index: dict[str, str], split_name: str, fname: str,
                    lineno: int, label: str, yid: str, raw_start: str, raw_end: str) -> None:
    start, end = _parse_time(raw_start), _parse_time(raw_end)
    if not yid or start is None or end is None:
        out.fail(f"{fname}:{lineno}", "", f"malformed row {lineno} in {fname}")
        return
    video_id = f"{yid}_{start:06d}_{end:06d}"
    if not label:
        out.fail(video_id, "", f"no label in {fname} line {lineno}")
        return
    if label not in out.label_of:
        out.fail(video_id, "", f"unknown class {label!r} in {fname} line {lineno}")
        return
    path = index.get(video_id)
    if path is None:
        # The expected file name stands in for a path nobody knows.
        out.fail(video_id, video_id + ".mp4", REASON_CLIP_MISSING)
        return
    out.add(video_id, path, label, split_name, fname)
