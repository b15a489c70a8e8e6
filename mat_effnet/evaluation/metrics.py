"""Video-level accuracy metrics (paper Sect. 4.3-4.4, Tables 2-4).

Tables 2 and 3 report top-1 accuracy of the spatial stream, the temporal
stream and their late average fusion; Table 4 reports top-1 and top-5 on
Kinetics-400. Mean class accuracy (the mean over classes of per-class recall)
is added because the test splits of UCF101/HMDB51 are not perfectly balanced
and Kinetics-400 has classes with very different sizes.

Everything here is plain numpy on arrays that are already in memory:

* ``scores`` is ``(N, C)``: one row per video, one column per class;
* ``labels`` is ``(N,)``: the true class index of each video.

Ties between classes are broken towards the lower class index (the same rule
as ``np.argmax``), so a video whose true class only ties with another class
of lower index is counted wrong. With softmax scores exact ties are rare, and
a fixed rule keeps every number reproducible.

Bad input raises :class:`MetricsError` (a ``ValueError``) with one line that
names the culprit.
"""

from __future__ import annotations

import numpy as np

from mat_effnet.common.errors import MatEffNetError


class MetricsError(MatEffNetError):
    """Scores, labels or predictions that do not fit together."""


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise MetricsError(f"scores must be 2-D (videos, classes), got shape {scores.shape}")
    if scores.shape[0] == 0:
        raise MetricsError("scores hold no videos: accuracy is undefined")
    if scores.shape[1] == 0:
        raise MetricsError("scores hold no classes")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise MetricsError(f"scores must be real numbers, got dtype {scores.dtype}")
    if not np.all(np.isfinite(scores)):
        bad = int(np.argwhere(~np.isfinite(scores))[0][0])
        raise MetricsError(f"scores of video {bad} are not finite (NaN or inf)")
    return scores


def _check_labels(labels, n: int, num_classes: int, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise MetricsError(f"{what} must be 1-D, got shape {labels.shape}")
    if labels.shape[0] != n:
        raise MetricsError(f"{what} has {labels.shape[0]} entries for {n} videos")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise MetricsError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.argwhere((labels < 0) | (labels >= num_classes))[0][0])
        raise MetricsError(
            f"{what}[{bad}] = {int(labels[bad])} is outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _check_num_classes(num_classes, scores: np.ndarray | None = None) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise MetricsError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise MetricsError(f"num_classes must be at least 1, got {num_classes}")
    if scores is not None and scores.shape[1] != num_classes:
        raise MetricsError(
            f"scores have {scores.shape[1]} classes but num_classes is {num_classes}")
    return int(num_classes)


def predictions(scores) -> np.ndarray:
    """Top-1 class of each video, ``(N,)`` int64 (ties: lower class index)."""
    return np.argmax(_check_scores(scores), axis=1).astype(np.int64)


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of videos whose true class is among the ``k`` highest scores.

    Args:
      scores: ``(N, C)`` class scores.
      labels: ``(N,)`` true class indices.
      k: 1 <= k <= C.
    Returns:
      A float in [0, 1].
    """
    scores = _check_scores(scores)
    n, c = scores.shape
    labels = _check_labels(labels, n, c)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise MetricsError(f"k must be an integer in 1..{c} (the number of classes), got {k!r}")
    # A stable sort of the negated scores keeps equal scores in class order,
    # which is what makes ties go to the lower class index.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    num_classes = _check_num_classes(num_classes)
    pred = np.asarray(pred)
    if pred.ndim != 1:
        raise MetricsError(f"pred must be 1-D, got shape {pred.shape}")
    pred = _check_labels(pred, pred.shape[0], num_classes, what="pred")
    labels = _check_labels(labels, pred.shape[0], num_classes)
    cm = np.zeros((num_classes, num_classes), np.int64)
    # np.add.at accumulates repeated (true, pred) pairs; fancy-index += would not.
    np.add.at(cm, (labels, pred), 1)
    return cm


def mean_class_accuracy(scores, labels, num_classes: int) -> float:
    """Mean, over the classes present in ``labels``, of per-class top-1 recall.

    Classes with no video in ``labels`` are left out: their recall is
    undefined, and counting them as 0 would punish a subset evaluation.
    """
    scores = _check_scores(scores)
    num_classes = _check_num_classes(num_classes, scores)
    labels = _check_labels(labels, scores.shape[0], num_classes)
    cm = confusion_matrix(predictions(scores), labels, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def summarize(scores, labels, num_classes: int) -> dict:
    """The numbers of one table row.

    Returns:
      ``{"top1", "top5", "mean_class_accuracy", "num_videos"}``; accuracies
      are fractions in [0, 1]; top-5 uses ``min(5, C)`` so that it stays
      defined for fewer than five classes.
    """
    scores = _check_scores(scores)
    num_classes = _check_num_classes(num_classes, scores)
    labels = _check_labels(labels, scores.shape[0], num_classes)
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, min(5, num_classes)),
        "mean_class_accuracy": mean_class_accuracy(scores, labels, num_classes),
        "num_videos": int(scores.shape[0]),
    }
