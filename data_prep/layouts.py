"""Readers for the on-disk layouts of the supported video datasets.

`load_layout` turns a dataset tree, exactly as it ships, into a `Layout`: the
class list (index == 0-based label) and, per split, the videos with their
labels. Four layouts are understood:

* ``ucf101``: ``UCF-101/<Class>/*.avi`` plus ``ucfTrainTestlist/`` (classInd,
  trainlist0N, testlist0N), splits ``train`` and ``test``;
* ``hmdb51``: ``<class>/*.avi`` plus
  ``testTrainMulti_7030_splits/<class>_test_splitN.txt`` (flag 1 = train,
  2 = test, 0 = unused), splits ``train`` and ``test``;
* ``kinetics400``: ``train.csv`` / ``validate.csv`` (or ``val.csv``) /
  ``test.csv`` plus clips named ``<youtube_id>_<start:06d>_<end:06d>.mp4``
  anywhere below the root, splits ``train``, ``validation`` and ``test`` when
  that CSV carries labels;
* ``folder``: ``<class>/<video>``, split by an optional split file or by a
  deterministic per-class rule.

Layouts never open the videos. Entries that cannot be used (listed but missing,
paths escaping the root, unknown classes, duplicates, malformed lines) are
skipped and reported in `Layout.failures`; problems that make the whole
layout unusable raise `LayoutError` with a one-line message before any video
is looked at.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import numbers
import os
import posixpath
import re
from typing import Iterator

from mat_effnet.errors import MatEffNetError

DATASETS = ("ucf101", "hmdb51", "kinetics400", "folder")

# Lower-case; matched case-insensitively. Order matters for Kinetics: when the
# same clip exists with several extensions, the earlier one wins.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")

REASON_ESCAPES = "path escapes data root"
REASON_CLIP_MISSING = "clip missing"

_UCF_VIDEO_DIR = "UCF-101"
_UCF_LIST_DIR = "ucfTrainTestlist"
_HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
_HMDB_SPLIT_RE = re.compile(r"^(.+)_test_split(\d+)\.txt$")
_HMDB_FLAGS = {"1": "train", "2": "test"}
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_FOLDER_SPLIT_WORDS = {"train": "train", "test": "test", "val": "validation",
                       "validation": "validation"}


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


def load_layout(dataset: str, data_root: str, split: int = 1,
                split_file: str | None = None,
                test_fraction: float = 0.3) -> Layout:
    """Reads the layout of `dataset` under `data_root`.

    `split` selects the official split (1..3) of UCF101 and HMDB51 and is
    ignored by the other readers. `split_file` and `test_fraction` are used by
    the ``folder`` reader only. Raises `LayoutError` when the arguments or the
    tree cannot give a usable layout.
    """
    name = str(dataset).strip().lower()
    if name not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    # bool is an int subclass; True would silently mean split 1.
    if isinstance(split, bool) or not isinstance(split, numbers.Integral) or not 1 <= split <= 3:
        raise LayoutError(f"split must be 1, 2 or 3, got {split!r}")
    if split_file is not None and name != "folder":
        raise LayoutError(f"split_file is only used with the folder dataset, not {name} "
                          "(which ships its own split lists)")
    if name == "folder" and split_file is None:
        if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
            raise LayoutError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    root = _check_root(data_root)
    if name == "ucf101":
        return _load_ucf101(root, int(split))
    if name == "hmdb51":
        return _load_hmdb51(root, int(split))
    if name == "kinetics400":
        return _load_kinetics400(root)
    return _load_folder(root, split_file, float(test_fraction))


# --------------------------------------------------------------------------
# shared helpers


def _one_line(text: str) -> str:
    # Messages must stay one line even when a path contains a newline.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _check_root(data_root) -> str:
    raw = os.fspath(data_root)
    root = os.path.abspath(os.path.expanduser(raw))
    if not os.path.exists(root):
        raise LayoutError(_one_line(f"--data_root {raw} does not exist"))
    if not os.path.isdir(root):
        raise LayoutError(_one_line(f"--data_root {raw} is not a directory"))
    return root


def _normalize_rel(raw: str) -> str | None:
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


def _abs(root: str, rel: str) -> str:
    return os.path.join(root, *rel.split("/"))


def _strip_ext(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def _is_video_name(name: str) -> bool:
    # Names starting with '.' are hidden or macOS "._x.mp4" resource forks.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _read_lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of `path`;
    CRLF, a UTF-8 BOM and trailing spaces are tolerated."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LayoutError(_one_line(f"cannot read {path}: {e.strerror or e}")) from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # never fails; names stay readable enough to report
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _sorted_subdirs(path: str) -> list[str]:
    with os.scandir(path) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    # Sorted so results never depend on the filesystem's directory order.
    return sorted(names)


def _walk_files(top: str) -> Iterator[tuple[str, str]]:
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


class _Collector:
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

    def finish(self, root: str) -> Layout:
        if not any(self.splits.values()):
            detail = (f"{len(self.failures)} listed entries skipped, first: "
                      f"{self.failures[0].video_id}: {self.failures[0].reason}"
                      if self.failures else "nothing listed")
            raise LayoutError(_one_line(f"{self.dataset} layout under {root} has no usable videos ({detail})"))
        splits = {s: sorted(v, key=lambda e: e.video_id) for s, v in self.splits.items()}
        return Layout(self.dataset, list(self.classes), splits, list(self.failures))


# --------------------------------------------------------------------------
# UCF101


def _load_ucf101(root: str, split: int) -> Layout:
    # Accept the folder holding UCF-101/ and ucfTrainTestlist/, the UCF-101
    # folder itself with the lists beside it, or the lists inside UCF-101/.
    list_candidates = [os.path.join(root, _UCF_LIST_DIR),
                       os.path.join(os.path.dirname(root), _UCF_LIST_DIR),
                       os.path.join(root, _UCF_VIDEO_DIR, _UCF_LIST_DIR)]
    list_dir = next((d for d in list_candidates if os.path.isfile(os.path.join(d, "classInd.txt"))), None)
    if list_dir is None:
        raise LayoutError(_one_line(f"ucf101 layout not found under {root}: expected "
                                    f"{_UCF_VIDEO_DIR}/ and {_UCF_LIST_DIR}/classInd.txt"))
    classes = _read_class_ind(os.path.join(list_dir, "classInd.txt"))

    video_root = None
    for cand in (os.path.join(root, _UCF_VIDEO_DIR), root):
        if os.path.isdir(cand) and any(os.path.isdir(os.path.join(cand, c)) for c in classes):
            video_root = cand
            break
    if video_root is None:
        raise LayoutError(_one_line(f"ucf101 videos not found under {root}: expected "
                                    f"{_UCF_VIDEO_DIR}/<Class>/ folders named as in classInd.txt"))

    list_files = [("train", f"trainlist{split:02d}.txt"), ("test", f"testlist{split:02d}.txt")]
    for _, fname in list_files:
        if not os.path.isfile(os.path.join(list_dir, fname)):
            raise LayoutError(_one_line(f"ucf101 split {split} not found: expected {os.path.join(list_dir, fname)}"))

    out = _Collector("ucf101", classes, ("train", "test"))
    for split_name, fname in list_files:
        for lineno, line in _read_lines(os.path.join(list_dir, fname)):
            _ucf_entry(out, video_root, split_name, fname, lineno, line)
    return out.finish(root)


def _read_class_ind(path: str) -> list[str]:
    by_index: dict[int, str] = {}
    for lineno, line in _read_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in by_index:
            raise LayoutError(_one_line(f"{path} line {lineno}: expected '<index> <ClassName>', got {line!r}"))
        by_index[int(parts[0])] = parts[1].strip()
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise LayoutError(_one_line(f"{path}: class indices must be 1..N without gaps"))
    return [by_index[i] for i in range(1, len(by_index) + 1)]


def _ucf_entry(out: _Collector, video_root: str, split_name: str, fname: str,
               lineno: int, line: str) -> None:
    parts = line.rsplit(None, 1)
    listed_label = None
    if len(parts) == 2 and parts[1].isdigit():
        raw, listed_label = parts[0], int(parts[1])
    else:
        raw = line  # testlists carry no label
    rel = _normalize_rel(raw)
    if rel is None:
        out.fail(_strip_ext(raw.replace("\\", "/")), raw, REASON_ESCAPES)
        return
    video_id = _strip_ext(rel)
    path = _abs(video_root, rel)
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
    if not os.path.isfile(path):
        out.fail(video_id, path, f"listed in {fname} but missing")
        return
    out.add(video_id, path, class_name, split_name, fname)


# --------------------------------------------------------------------------
# HMDB51


def _load_hmdb51(root: str, split: int) -> Layout:
    split_dir = None
    for cand in [root] + [os.path.join(root, d) for d in _sorted_subdirs(root)]:
        if os.path.isdir(os.path.join(cand, _HMDB_SPLIT_DIR)):
            split_dir = os.path.join(cand, _HMDB_SPLIT_DIR)
            break
    if split_dir is None:
        raise LayoutError(_one_line(f"hmdb51 layout not found under {root}: expected "
                                    f"{_HMDB_SPLIT_DIR}/<class>_test_split{split}.txt"))
    split_files: dict[str, str] = {}
    with os.scandir(split_dir) as it:
        for e in it:
            m = _HMDB_SPLIT_RE.match(e.name)
            if m and int(m.group(2)) == split and e.is_file():
                split_files[m.group(1)] = e.name
    if not split_files:
        raise LayoutError(_one_line(f"hmdb51 split {split} not found: expected "
                                    f"{split_dir}/<class>_test_split{split}.txt"))
    classes = sorted(split_files)

    # Videos sit in <root>/<class>/ or one level lower (e.g. hmdb51_org/);
    # take the candidate holding the most class folders, the root on ties.
    best, best_count = None, 0
    for cand in [root] + [os.path.join(root, d) for d in _sorted_subdirs(root)]:
        count = sum(os.path.isdir(os.path.join(cand, c)) for c in classes)
        if count > best_count:
            best, best_count = cand, count
    if best is None:
        raise LayoutError(_one_line(f"hmdb51 videos not found under {root}: expected <class>/ folders "
                                    f"named after the split files (e.g. {classes[0]}/)"))

    out = _Collector("hmdb51", classes, ("train", "test"))
    for class_name in classes:
        fname = split_files[class_name]
        for lineno, line in _read_lines(os.path.join(split_dir, fname)):
            _hmdb_entry(out, best, class_name, fname, lineno, line)
    return out.finish(root)


def _hmdb_entry(out: _Collector, video_root: str, class_name: str, fname: str,
                lineno: int, line: str) -> None:
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        out.fail(f"{class_name}/{line}", "", f"malformed line {lineno} in {fname}")
        return
    name, flag = parts
    if flag == "0":
        return  # unused in this split by design, not a failure
    rel = _normalize_rel(f"{class_name}/{name}")
    if rel is None:
        out.fail(f"{class_name}/{_strip_ext(name)}", name, REASON_ESCAPES)
        return
    video_id = _strip_ext(rel)
    path = _abs(video_root, rel)
    if flag not in _HMDB_FLAGS:
        out.fail(video_id, path, f"unexpected flag {flag!r} in {fname} line {lineno}")
        return
    if not rel.startswith(class_name + "/"):
        # Inside the root but another class's folder: the label would be wrong.
        out.fail(video_id, path, f"path leaves class folder {class_name!r} in {fname}")
        return
    if not os.path.isfile(path):
        out.fail(video_id, path, f"listed in {fname} but missing")
        return
    out.add(video_id, path, class_name, _HMDB_FLAGS[flag], fname)


# --------------------------------------------------------------------------
# Kinetics-400


def _load_kinetics400(root: str) -> Layout:
    csv_dir = next((d for d in (root, os.path.join(root, "annotations"))
                    if os.path.isfile(os.path.join(d, "train.csv"))), None)
    if csv_dir is None:
        raise LayoutError(_one_line(f"kinetics400 layout not found under {root}: expected train.csv "
                                    "(with validate.csv) in it or in annotations/"))
    sources = [("train", "train.csv")]
    val_name = next((n for n in ("validate.csv", "val.csv")
                     if os.path.isfile(os.path.join(csv_dir, n))), None)
    if val_name is not None:
        sources.append(("validation", val_name))

    rows = {s: _read_kinetics_csv(os.path.join(csv_dir, n), need_label=True) for s, n in sources}
    classes = sorted({r[1] for r in rows["train"] if r[1]})
    if not classes:
        raise LayoutError(_one_line(f"{os.path.join(csv_dir, 'train.csv')} has no labelled rows"))
    if os.path.isfile(os.path.join(csv_dir, "test.csv")):
        test_rows = _read_kinetics_csv(os.path.join(csv_dir, "test.csv"), need_label=False)
        # The original test.csv ships without labels; it is only a split when
        # labels were added.
        if any(r[1] for r in test_rows):
            sources.append(("test", "test.csv"))
            rows["test"] = test_rows

    index = _clip_index(root)
    out = _Collector("kinetics400", classes, tuple(s for s, _ in sources))
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
                raise LayoutError(_one_line(f"{path}: header lacks {', '.join(missing)} "
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
        raise LayoutError(_one_line(f"cannot read {path}: {e}")) from e


def _clip_index(root: str) -> dict[str, str]:
    """Clip file stem -> absolute path for every video file below `root`.

    One walk serves every CSV row; clips may be flat, in class folders or in
    split folders. A stem found with several extensions keeps the one earliest
    in VIDEO_EXTENSIONS, otherwise the first in sorted walk order.
    """
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    index: dict[str, tuple[int, str]] = {}
    for dirpath, name in _walk_files(root):
        if not _is_video_name(name):
            continue
        stem, ext = os.path.splitext(name)
        r = rank[ext.lower()]
        if stem not in index or r < index[stem][0]:
            index[stem] = (r, os.path.join(dirpath, name))
    return {stem: path for stem, (_, path) in index.items()}


def _parse_time(raw: str) -> int | None:
    # CSVs from different mirrors write 14 or 14.0; anything else is corrupt.
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or not value.is_integer() or value < 0:
        return None
    return int(value)


def _kinetics_entry(out: _Collector, index: dict[str, str], split_name: str, fname: str,
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


# --------------------------------------------------------------------------
# generic class folders


def _load_folder(root: str, split_file: str | None, test_fraction: float) -> Layout:
    class_files: dict[str, list[str]] = {}
    for class_name in _sorted_subdirs(root):
        class_dir = os.path.join(root, class_name)
        rels = []
        for dirpath, name in _walk_files(class_dir):
            if _is_video_name(name):
                sub = os.path.relpath(os.path.join(dirpath, name), root)
                rels.append(sub.replace(os.sep, "/"))
        # Folders without videos (annotations/, empty ones) are not classes.
        if rels:
            class_files[class_name] = sorted(rels)
    if not class_files:
        raise LayoutError(_one_line(f"folder layout not found under {root}: expected <class>/<video> "
                                    f"subfolders with video files ({' '.join(VIDEO_EXTENSIONS)})"))
    classes = sorted(class_files)

    if split_file is not None:
        return _folder_from_split_file(root, classes, split_file)

    out = _Collector("folder", classes, ("train", "test"))
    for class_name in classes:
        rels = class_files[class_name]
        n_test = _folder_test_count(len(rels), test_fraction)
        for i, rel in enumerate(rels):
            # The test files are the tail of the sorted list: clips cut from the
            # same source usually share a name prefix and sort together, so a
            # contiguous block leaks fewer near-duplicates than every k-th file.
            split_name = "test" if i >= len(rels) - n_test else "train"
            out.add(_strip_ext(rel), _abs(root, rel), class_name, split_name, "folder scan")
    return out.finish(root)


def _folder_test_count(n: int, test_fraction: float) -> int:
    if n < 2:
        return 0
    # Round half up explicitly: Python's round() sends 1.5 and 2.5 both to 2.
    n_test = math.floor(test_fraction * n + 0.5)
    return min(max(n_test, 1), n - 1)


def _folder_from_split_file(root: str, classes: list[str], split_file: str) -> Layout:
    path = os.path.expanduser(os.fspath(split_file))
    if not os.path.isabs(path) and not os.path.isfile(path) and os.path.isfile(os.path.join(root, path)):
        path = os.path.join(root, path)  # a bare name is looked for in data_root too
    if not os.path.isfile(path):
        raise LayoutError(_one_line(f"--split_file {split_file} does not exist"))
    fname = os.path.basename(path)
    lines = [(n, l) for n, l in _read_lines(path) if not l.startswith("#")]
    used = {_FOLDER_SPLIT_WORDS.get(l.rsplit(None, 1)[-1].lower()) for _, l in lines}
    split_names = ("train", "test") + (("validation",) if "validation" in used else ())
    out = _Collector("folder", classes, split_names)
    for lineno, line in lines:
        parts = line.rsplit(None, 1)
        split_name = _FOLDER_SPLIT_WORDS.get(parts[-1].lower()) if len(parts) == 2 else None
        if split_name is None:
            out.fail(line, "", f"malformed line {lineno} in {fname}: expected "
                                           "'<class>/<file> train|test'")
            continue
        raw = parts[0]
        rel = _normalize_rel(raw)
        if rel is None:
            out.fail(_strip_ext(raw.replace("\\", "/")), raw, REASON_ESCAPES)
            continue
        video_id, abs_path = _strip_ext(rel), _abs(root, rel)
        if "/" not in rel:
            out.fail(video_id, abs_path, f"no class folder in path in {fname} line {lineno}")
            continue
        class_name = rel.split("/", 1)[0]
        if class_name not in out.label_of:
            out.fail(video_id, abs_path, f"unknown class {class_name!r} in {fname} line {lineno}")
            continue
        if not os.path.isfile(abs_path):
            out.fail(video_id, abs_path, f"listed in {fname} but missing")
            continue
        out.add(video_id, abs_path, class_name, split_name, fname)
    return out.finish(root)
