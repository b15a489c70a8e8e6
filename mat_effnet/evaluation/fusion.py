"""Score files and the late average fusion of the two streams (paper Sect. 3).

"After the softmax layer of each stream, we adopt a late average fusion layer
to obtain the final prediction by averaging the output scores of the softmax
layer" (Sect. 3, Fig. 1). The two streams are trained and evaluated
separately, so each evaluation writes its softmax scores to a score file and
:func:`fuse` averages them afterwards; Tables 2 and 3 then read off the
spatial, temporal and two-stream accuracies.

Score file format (``.npz``, written by :func:`save_scores`, no pickle):

==================  ========================  ==================================
key                 dtype / shape             meaning
==================  ========================  ==================================
``format_version``  int64, ()                 :data:`FORMAT_VERSION`
``video_ids``       unicode, (N,)             unique id of each video
``labels``          int64, (N,)               true class index of each video
``scores``          float32, (N, C)           softmax scores (rows sum to 1)
``class_names``     unicode, (C,)             name of each class index
``split``           unicode, ()               e.g. ``test``
``dataset``         unicode, ()               e.g. ``ucf101``
``stream``          unicode, ()               e.g. ``spatial``, ``temporal``
``model_identity``  unicode, () (optional)    JSON of the scoring model's identity
                                              (:func:`mat_effnet.modeling.model_identity.identity`)
==================  ========================  ==================================

Files without ``model_identity`` (written before models carried one) still
load; :func:`fuse` compares the identities where both files have one.

Nothing here imports TensorFlow, so the fusion binary starts in a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Sequence

import numpy as np

from mat_effnet.common import atomic, checks
from mat_effnet.common.errors import MatEffNetError

FORMAT_VERSION = 1
TWO_STREAM = "two_stream"
KEYS = ("format_version", "video_ids", "labels", "scores", "class_names", "split",
        "dataset", "stream")
IDENTITY_KEY = "model_identity"
#: Keys of the models' identities that must agree for their scores to fuse.
IDENTITY_MUST_MATCH = ("num_classes", "class_names", "dataset")
# Softmax rows sum to 1 up to float32 rounding; anything further off means
# logits or unnormalised scores were saved, which averaging would mis-weight.
_ROW_SUM_TOLERANCE = 1e-3


class ScoresError(MatEffNetError):
    """A score file that is missing, corrupt, inconsistent, or does not fuse."""


@dataclasses.dataclass(eq=False)
class Scores:
    """The softmax scores of one stream (or of the fusion) on one split.

    ``path`` is the file the scores came from ("" for fused scores); error
    messages use it to name the culprit.
    """

    video_ids: np.ndarray      # (N,) str
    labels: np.ndarray         # (N,) int64
    scores: np.ndarray         # (N, C) float32
    class_names: tuple         # (C,) str
    split: str
    dataset: str
    stream: str
    path: str = ""
    model_identity: dict | None = None  # of the model that wrote the scores

    @property
    def num_videos(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])


def _validate(where: str, video_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
              class_names: np.ndarray, split: str, dataset: str, stream: str) -> None:
    """Checks one file's arrays against each other; ScoresError names ``where``."""
    if scores.ndim != 2:
        raise ScoresError(f"{where}: scores must be 2-D (videos, classes), got shape {scores.shape}")
    n, c = scores.shape
    if n == 0:
        raise ScoresError(f"{where}: holds no videos")
    if video_ids.shape != (n,):
        raise ScoresError(f"{where}: {video_ids.shape} video_ids for {n} rows of scores")
    if labels.shape != (n,):
        raise ScoresError(f"{where}: {labels.shape} labels for {n} rows of scores")
    if class_names.shape != (c,):
        raise ScoresError(f"{where}: {class_names.shape} class_names for {c} columns of scores")
    for name, value in (("split", split), ("dataset", dataset), ("stream", stream)):
        if not value:
            raise ScoresError(f"{where}: {name} is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ScoresError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        raise ScoresError(f"{where}: label {int(labels[bad[0]])} of video "
                          f"{video_ids[bad[0]]!s} is outside 0..{c - 1}")
    uniq, counts = np.unique(video_ids, return_counts=True)
    if uniq.size != n:
        raise ScoresError(f"{where}: video id {uniq[counts > 1][0]!s} appears more than once")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ScoresError(f"{where}: scores must be floats, got dtype {scores.dtype}")
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        raise ScoresError(f"{where}: scores of video {video_ids[~finite][0]!s} are not finite")
    row_sum = scores.astype(np.float64).sum(axis=1)
    off = (scores.min(axis=1) < 0) | (np.abs(row_sum - 1.0) > _ROW_SUM_TOLERANCE)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ScoresError(
            f"{where}: scores of video {video_ids[i]!s} are not softmax probabilities "
            f"(min {scores[i].min():.4g}, sum {row_sum[i]:.4g}); late average fusion "
            "averages softmax scores, not logits")


def save_scores(path: str, video_ids: Sequence[str], labels, scores, class_names: Sequence[str],
                split: str, dataset: str, stream: str, model_identity: dict | None = None) -> None:
    """Writes one stream's softmax scores to ``path`` (an .npz), atomically.

    Args:
      path: the .npz to write; its folder is created if needed.
      video_ids: N unique video ids.
      labels: N true class indices.
      scores: (N, C) softmax scores (non-negative, rows summing to 1).
      class_names: C class names, index = class index.
      split, dataset, stream: what the scores are of (e.g. "test", "ucf101",
        "spatial"); :func:`fuse` refuses to mix splits or datasets.
      model_identity: the scoring model's identity (JSON-native dict, e.g.
        ``identity.identity(model).to_dict()``); :func:`fuse` checks the
        streams' identities agree.
    Raises:
      ScoresError: the arrays do not fit together.
    """
    where = str(path)
    video_ids = np.asarray([str(v) for v in video_ids], dtype=str)
    class_names = np.asarray([str(c) for c in class_names], dtype=str)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    _validate(where, video_ids, labels, scores, class_names, str(split), str(dataset), str(stream))
    arrays = {
        "format_version": np.asarray(FORMAT_VERSION, np.int64),
        "video_ids": video_ids,
        "labels": labels.astype(np.int64),
        "scores": scores.astype(np.float32),
        "class_names": class_names,
        "split": np.asarray(str(split)),
        "dataset": np.asarray(str(dataset)),
        "stream": np.asarray(str(stream)),
    }
    if model_identity is not None:
        try:
            arrays[IDENTITY_KEY] = np.asarray(json.dumps(model_identity, sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ScoresError(f"{where}: model_identity is not JSON-serialisable ({e})") from None
    # Writing through a file object stops np.savez from appending ".npz".
    atomic.write_with(path, lambda f: np.savez(f, **arrays))


def load_scores(path: str) -> Scores:
    """Reads and checks a score file written by :func:`save_scores`.

    Raises:
      ScoresError: the file is missing, not an .npz, corrupt, lacks a key, is
        of another format version, or its arrays do not fit together.
    """
    where = str(path)
    if not os.path.exists(path):
        raise ScoresError(f"{where}: no such score file")
    if os.path.isdir(path):
        raise ScoresError(f"{where}: is a folder, not a score file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ScoresError(f"{where}: not an .npz score file (a single .npy array)")
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise ScoresError(f"{where}: not a score file, missing key(s) {', '.join(missing)}")
            data = {k: z[k] for k in KEYS}
            identity_text = z[IDENTITY_KEY] if IDENTITY_KEY in z.files else None
    except ScoresError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        # allow_pickle=False turns object arrays and non-numpy files into
        # ValueError; truncated archives raise BadZipFile/EOFError.
        raise ScoresError(f"{where}: unreadable or corrupt score file ({type(e).__name__}: {e})") from None
    if data["format_version"].shape != () or int(data["format_version"]) != FORMAT_VERSION:
        raise ScoresError(f"{where}: format_version {data['format_version']} is not supported "
                          f"(this code reads version {FORMAT_VERSION})")
    for key in ("video_ids", "class_names", "split", "dataset", "stream"):
        if data[key].dtype.kind != "U":
            raise ScoresError(f"{where}: {key} must be strings, got dtype {data[key].dtype}")
    for key in ("split", "dataset", "stream"):
        if data[key].shape != ():
            raise ScoresError(f"{where}: {key} must be a single string, got shape {data[key].shape}")
    split, dataset, stream = (str(data[k][()]) for k in ("split", "dataset", "stream"))
    _validate(where, data["video_ids"], data["labels"], data["scores"], data["class_names"],
              split, dataset, stream)
    model_identity = None
    if identity_text is not None:
        try:
            model_identity = json.loads(str(identity_text[()]))
        except (ValueError, IndexError):
            model_identity = None
        if not isinstance(model_identity, dict):
            raise ScoresError(f"{where}: {IDENTITY_KEY} is not a JSON object")
    return Scores(
        video_ids=data["video_ids"].astype(str),
        labels=data["labels"].astype(np.int64),
        scores=data["scores"].astype(np.float32),
        class_names=tuple(str(c) for c in data["class_names"]),
        split=split, dataset=dataset, stream=stream, path=where, model_identity=model_identity)


def _name(s: Scores, i: int) -> str:
    return s.path or f"scores[{i}]"


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 4:
        return repr(value[:4])[:-1] + f", ... ({len(value)} in all)]"
    return repr(value)


def _examples(ids: Sequence[str], limit: int = 1) -> str:
    return ", ".join(str(v) for v in sorted(ids)[:limit])


def _check_compatible(a: Scores, b: Scores, na: str, nb: str) -> np.ndarray:
    """Checks that ``b`` can be fused with ``a``; returns b's rows in a's order."""
    if a.dataset != b.dataset:
        raise ScoresError(f"{na} and {nb} are of different datasets: "
                          f"{a.dataset!r} vs {b.dataset!r}")
    if a.split != b.split:
        raise ScoresError(f"{na} and {nb} are of different splits: {a.split!r} vs {b.split!r}")
    if a.class_names != b.class_names:
        if len(a.class_names) != len(b.class_names):
            detail = f"{len(a.class_names)} vs {len(b.class_names)} classes"
        else:
            i = next(i for i, (x, y) in enumerate(zip(a.class_names, b.class_names)) if x != y)
            detail = f"class {i} is {a.class_names[i]!r} vs {b.class_names[i]!r}"
        raise ScoresError(f"{na} and {nb} have different class_names: {detail}")
    if a.model_identity is not None and b.model_identity is not None:
        for key in IDENTITY_MUST_MATCH:
            x, y = a.model_identity.get(key), b.model_identity.get(key)
            if x is not None and y is not None and x != y:
                raise ScoresError(f"{na} and {nb} come from models of different {key}: "
                                  f"{_short(x)} vs {_short(y)}")
    ids_a, ids_b = set(a.video_ids.tolist()), set(b.video_ids.tolist())
    if ids_a != ids_b:
        only_a, only_b = ids_a - ids_b, ids_b - ids_a
        parts = []
        for only, name in ((only_a, na), (only_b, nb)):
            part = f"{len(only)} only in {name}"
            if only:
                part += f" (e.g. {_examples(only)})"
            parts.append(part)
        raise ScoresError(f"{na} and {nb} cover different videos: {', '.join(parts)}")
    # The evaluators may list the videos in different orders (e.g. sharded
    # reads): align b's rows to a's order by id.
    row_of = {v: i for i, v in enumerate(b.video_ids.tolist())}
    order = np.asarray([row_of[v] for v in a.video_ids.tolist()], np.int64)
    differ = np.flatnonzero(a.labels != b.labels[order])
    if differ.size:
        i = int(differ[0])
        raise ScoresError(
            f"{na} and {nb} disagree on the labels of {differ.size} video(s) "
            f"(e.g. {a.video_ids[i]!s}: {int(a.labels[i])} in {na}, "
            f"{int(b.labels[order][i])} in {nb})")
    return order


def normalize_weights(weights, count: int) -> np.ndarray:
    """Checks fusion weights and scales them to sum 1 (default: equal); ScoresError if bad."""
    return checks.normalize_fusion_weights(weights, count, error=ScoresError)


def fuse(scores_list: Sequence[Scores], weights=None) -> Scores:
    """Late average fusion: the weighted mean of the streams' softmax scores.

    Args:
      scores_list: one :class:`Scores` per stream (at least one); all must
        cover the same videos (in any order) with the same labels, classes,
        split and dataset.
      weights: one non-negative weight per entry, not all zero; normalised to
        sum 1. ``None`` means equal weights, the paper's plain average.
    Returns:
      :class:`Scores` in the video order of the first entry, with
      ``stream == "two_stream"`` and ``path == ""``.
    Raises:
      ScoresError: the entries do not cover the same thing, or bad weights.
    """
    scores_list = list(scores_list)
    if not scores_list:
        raise ScoresError("fusion needs at least one score file, got none")
    w = normalize_weights(weights, len(scores_list))
    first = scores_list[0]
    name0 = _name(first, 0)
    # Accumulate in float64 so that the fused scores do not depend on the
    # order of the files beyond float32 rounding of the result.
    fused = w[0] * first.scores.astype(np.float64)
    for i, other in enumerate(scores_list[1:], start=1):
        order = _check_compatible(first, other, name0, _name(other, i))
        fused += w[i] * other.scores[order].astype(np.float64)
    return Scores(
        video_ids=first.video_ids.copy(), labels=first.labels.copy(),
        scores=fused.astype(np.float32), class_names=first.class_names,
        split=first.split, dataset=first.dataset, stream=TWO_STREAM, path="")


def row_names(streams: Sequence[str], reserved: Sequence[str] = (TWO_STREAM,)) -> list[str]:
    """Unique table-row names from the files' stream fields.

    A repeated name gets a suffix (``spatial``, ``spatial_2``), and so does a
    name in ``reserved`` (the fused row and the report's other keys), so that
    no row overwrites another in the JSON report.
    """
    taken = set(reserved)
    names = []
    for stream in streams:
        name, k = stream, 1
        while name in taken:
            k += 1
            name = f"{stream}_{k}"
        taken.add(name)
        names.append(name)
    return names
