"""One benchmark run: the machine, each selected section, the derived headline, one document.

The document (``SCHEMA``) holds the machine block (`machine.machine_info`),
the device's peak FLOP/s, the settings (`settings.BenchmarkSettings`,
nested), every figure, and per section its duration and whether it
failed: a section that raises is recorded with its traceback and the other
sections still run.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Callable

from mat_effnet.benchmark import flow_figures, inference, input as input_section, machine, prep_figures, step_figures
from mat_effnet.benchmark.report import SCHEMA, Context
from mat_effnet.benchmark.settings import BenchmarkSettings

# Each section (settings.SECTIONS, in run order): the settings -> {name: figure}.
RUNS: dict[str, Callable[[BenchmarkSettings, Context], dict]] = {
    "flow": lambda s, ctx: flow_figures.measure(s.flow, ctx),
    "prep": lambda s, ctx: prep_figures.measure(s.prep, ctx),
    "pipeline": lambda s, ctx: input_section.measure(s.pipeline, s.clip, ctx),
    "training": lambda s, ctx: step_figures.measure(s.training, s.clip, ctx),
    "inference": lambda s, ctx: inference.measure(s.inference, s.clip, ctx),
}


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_benchmark(settings: BenchmarkSettings, work_dir: str,
                  log: Callable[[str], None] | None = None) -> dict:
    """Runs ``settings.run.sections``; returns the JSON document (errors recorded, not raised)."""
    log = log or (lambda msg: None)
    started = time.time()
    info = machine.machine_info()
    ctx = Context(work_dir=work_dir, machine=machine.machine_label(info), info=info,
                  peak=machine.device_peak(info), seed=settings.run.seed, log=log)
    doc = {"schema": SCHEMA, "mode": settings.run.mode,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
           "machine_label": ctx.machine, "device_peak": ctx.peak,
           "settings": settings.to_dict(), "sections": {}, "errors": {}, "figures": {}}
    for name, run in RUNS.items():
        if name not in settings.run.sections:
            continue
        log(f"[{time.time() - started:6.1f}s] {name} ...")
        t0 = time.perf_counter()
        try:
            figures = run(settings, ctx)
        except Exception as e:  # noqa: BLE001 -- one broken section must not lose the others
            doc["errors"][name] = f"{type(e).__name__}: {e}"
            doc["sections"][name] = {"seconds": time.perf_counter() - t0, "ok": False,
                                     "traceback": traceback.format_exc()[-4000:]}
            log(f"  {name} failed: {type(e).__name__}: {e}")
            continue
        doc["figures"].update(figures)
        doc["sections"][name] = {"seconds": time.perf_counter() - t0, "ok": True}
    doc["figures"].update(step_figures.input_over_train(doc["figures"], ctx))
    doc["finished_load_average_1_5_15"] = _load()
    doc["duration_s"] = time.time() - started
    return doc
