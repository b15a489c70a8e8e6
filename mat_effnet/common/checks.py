"""Argument checks shared by the model modules (backbones, identity, builders).

Each check returns the value in its canonical type or raises
:class:`mat_effnet.common.errors.MatEffNetError` naming the argument. This module
imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import numbers

from mat_effnet.common.errors import MatEffNetError


def is_int(value) -> bool:
    """An integer, bools excluded (``True`` is not a segment count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum):
    if not is_int(value) or value < minimum:
        raise MatEffNetError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise MatEffNetError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        )
    return value


def check_fraction(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0.0 <= float(value) < 1.0
    ):
        accepted = "None or " if allow_none else ""
        raise MatEffNetError(f"{name} must be {accepted}a number in [0, 1), got {value!r}")
    return float(value)


def normalize_fusion_weights(weights, count: int, error=MatEffNetError):
    """Fusion weights checked and scaled to sum 1 (None: equal); ``error`` names what is wrong.

    One rule for the fusion layer, the score files, prediction and export.
    """
    import numpy as np

    if weights is None:
        return np.full(count, 1.0 / count)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise error(f"fusion weights must be numbers, got {weights!r}") from None
    if w.ndim != 1 or w.size != count:
        raise error(f"got {w.size} fusion weight(s) for {count} score file(s)")
    if not np.all(np.isfinite(w)):
        raise error(f"fusion weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise error(f"fusion weights must be non-negative, got {w.tolist()}")
    if w.sum() == 0:
        raise error(f"fusion weights must not all be zero, got {w.tolist()}")
    return w / w.sum()
