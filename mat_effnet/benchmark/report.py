"""Benchmark figures: their one shape, the timing helpers, and the outputs.

Every number ``mat-effnet-benchmark`` reports is a `figure`: ``{"value",
"unit", "settings", "machine", ...extra}``. ``settings`` holds everything
needed to reproduce it, ``machine`` the one-line `machine.machine_label`.
A figure that could not be measured has value None and says why.

`Context` is what every section receives besides its own settings: the
scratch folder, the machine and its peak, the seed; its `Context.figure`
fills in the machine. `format_table` prints the figures as text or Markdown
(BENCHMARKS.md's table), `write_json` writes the document atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable

import numpy as np

from mat_effnet.common import atomic
from mat_effnet.common.errors import MatEffNetError

SCHEMA = "mat-effnet-benchmark/2"
MIB = 1024 * 1024
VIDEO_FPS = 25.0  # data_prep.synthetic.write_video's default


def figure(value, unit: str, settings: dict, machine: str, **extra) -> dict:
    """One benchmark figure: ``{"value", "unit", "settings", "machine", ...extra}``.

    ``value`` is a float, or None when it could not be measured (``extra``
    then says why, as ``why``).
    """
    if not unit:
        raise MatEffNetError("unit: a figure needs one")
    if not isinstance(settings, dict):
        raise MatEffNetError(f"settings: must be a dict, got {type(settings).__name__}")
    out = {"value": None if value is None else float(value), "unit": unit,
           "settings": dict(settings), "machine": machine}
    out.update(extra)
    return out


@dataclasses.dataclass(frozen=True)
class Context:
    """Where and on what a run measures: shared by every section."""

    work_dir: str
    machine: str                      # machine.machine_label(info)
    info: dict = dataclasses.field(default_factory=dict)   # machine.machine_info()
    peak: dict = dataclasses.field(default_factory=dict)   # machine.device_peak(info)
    seed: int = 0
    log: Callable[[str], None] = dataclasses.field(default=lambda msg: None, repr=False,
                                                   compare=False)  # progress lines

    def figure(self, value, unit: str, settings: dict, **extra) -> dict:
        return figure(value, unit, settings, self.machine, **extra)

    @property
    def gpus(self) -> list:
        return list(self.info.get("gpus") or [])


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds`` (perf_counter)."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def rate(count: float, seconds: float) -> float:
    """count / seconds, guarded against a zero duration."""
    return float(count) / max(float(seconds), 1e-9)


def timed_iterations(step: Callable[[], object], iterations: int, warmup: int = 1) -> float:
    """Seconds for ``iterations`` calls of ``step`` after ``warmup`` untimed calls."""
    if iterations < 1:
        raise MatEffNetError(f"iterations={iterations}: must be >= 1")
    for _ in range(warmup):
        step()
    with Stopwatch() as sw:
        for _ in range(iterations):
            step()
    return sw.seconds


def round_sig(value, digits: int = 3):
    """``value`` rounded to ``digits`` significant digits (None stays None)."""
    if value is None or not math.isfinite(value) or value == 0:
        return value
    return round(value, -int(math.floor(math.log10(abs(value)))) + digits - 1)


# ---------------------------------------------------------------------------
# Outputs

def _value(fig: dict) -> str:
    v = fig.get("value")
    if v is None:
        return "n/a"
    v = round_sig(v, 3)
    return f"{v:.3g}" if abs(v) < 1e5 else f"{v:.3e}"


# The settings a table row shows (the JSON has them all), in this order.
_TABLE_KEYS = ("derived", "frame_size", "implementation", "backend", "device", "batch_size",
               "workers", "pairs", "preset", "prep", "video_seconds", "video_frames", "size", "image_size",
               "segments", "segments_per_clip", "batch_size_clips", "flow",
               "flow_implementation", "stored_size")


def _short_settings(fig: dict) -> str:
    s = fig.get("settings", {})
    parts = []
    for k in _TABLE_KEYS:
        if k in s and s[k] is not None:
            v = s[k]
            if isinstance(v, dict):
                v = "/".join(f"{a}={b}" for a, b in v.items()
                             if a in ("flow", "flow_implementation", "short_side"))
            parts.append(f"{k}={v}")
    if fig.get("value") is None and fig.get("why"):
        parts.append(f"not measured: {fig['why']}")
    return ", ".join(parts)[:140]


def format_table(doc: dict, markdown: bool = False) -> str:
    """The figures as a text (or Markdown) table: name, value, unit, main settings."""
    rows = [(name, _value(fig), fig["unit"], _short_settings(fig))
            for name, fig in doc["figures"].items()]
    if markdown:
        lines = ["| figure | value | unit | settings |", "| --- | ---: | --- | --- |"]
        lines += [f"| `{n}` | {v} | {u} | {s} |" for n, v, u, s in rows]
        return "\n".join(lines)
    width = max([len(r[0]) for r in rows] + [6])
    lines = [f"machine: {doc['machine_label']}",
             f"mode: {doc['mode']}, {doc.get('duration_s', 0):.0f} s"]
    lines += [f"{n:<{width}}  {v:>10}  {u:<24} {s}" for n, v, u, s in rows]
    for section, err in doc.get("errors", {}).items():
        lines.append(f"{section}: FAILED: {err}")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, default=_jsonable) + "\n"


def write_json(path: str, doc: dict) -> None:
    """Writes ``doc`` atomically (`mat_effnet.common.atomic`); numpy values become plain JSON."""
    atomic.write_text(path, to_json(doc))
