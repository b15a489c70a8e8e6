"""Timing a dataset's iteration: items/s, CPU time per item, peak resident memory.

Wall rates move with whatever else shares the cores; the CPU time of all
threads of this process per item moves far less, so both are returned.
The peak memory is sampled by a thread while the dataset is iterated.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """``with RssPeak() as peak: ...``; then ``peak.bytes``: the highest VmRSS sampled."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.bytes = 0
        self._stop = threading.Event()

    def _watch(self):
        while not self._stop.is_set():
            self.bytes = max(self.bytes, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_bytes = _rss_bytes()
        self.bytes = self.start_bytes
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.bytes, _rss_bytes())
        return False


def time_elements(ds, count_fn: Callable, min_elements: int, min_seconds: float,
                  warmup: int = 2, max_elements: int | None = None) -> dict:
    """Iterates ``ds`` (after ``warmup`` untimed elements) until both minima are met.

    ``count_fn(element)`` says how many items (clips, JPEGs) an element holds.
    Returns ``{"items", "elements", "seconds", "per_s", "cpu_seconds",
    "cpu_ms_per_item", "peak_rss_bytes", "rss_before_bytes"}``.  CPU time
    (all threads of the process) per item is far less sensitive than the
    wall rate to other processes sharing the cores.
    """
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    items = elements = 0
    with RssPeak() as peak:
        cpu_start = time.process_time()
        start = time.perf_counter()
        while True:
            try:
                element = next(it)
            except StopIteration:
                break
            items += count_fn(element)
            elements += 1
            seconds = time.perf_counter() - start
            if elements >= min_elements and seconds >= min_seconds:
                break
            if max_elements is not None and elements >= max_elements:
                break
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    return {"items": items, "elements": elements, "seconds": seconds,
            "per_s": items / max(seconds, 1e-9), "cpu_seconds": cpu_seconds,
            "cpu_ms_per_item": 1000 * cpu_seconds / max(items, 1), "peak_rss_bytes": peak.bytes,
            "rss_before_bytes": peak.start_bytes}
