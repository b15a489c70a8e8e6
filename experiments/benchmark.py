"""``mat-effnet-benchmark``: throughput, accuracy, memory and latency figures of the whole system.

    mat-effnet-benchmark [--quick] [--output=benchmark.json] [--sections=flow,prep,...]
                         [--markdown=table.md] [--tvl1_pairs=N --keras_batches=1,8,32 ...]

Writes one JSON document (``--output``) and prints a table. The sections are
in `mat_effnet.benchmark` (one module each: flow, prep, input pipeline, train
step, inference); every flag comes from a field of
`mat_effnet.benchmark.settings.BenchmarkSettings`, where its default and
help text are defined. ``--quick`` takes `settings.QUICK`'s values for every
flag not given on the command line.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from absl import flags

from mat_effnet.common import cli, flagdefs
from mat_effnet.benchmark import settings as bench_settings

PROG = "mat-effnet-benchmark"
FLAGS = flags.FLAGS
flagdefs.define_flags(bench_settings.BenchmarkSettings)


def settings_from_flags() -> bench_settings.BenchmarkSettings:
    """The parsed flags' settings; with --quick, `QUICK` under the flags given explicitly."""
    cls = bench_settings.BenchmarkSettings
    if not FLAGS.quick:
        return flagdefs.build(cls)
    given = {k: v for k, v in flagdefs.flat_values(cls).items() if FLAGS[k].present}
    return cls.quick_run(**given)


def main(argv):
    from mat_effnet.benchmark import report, runner
    from mat_effnet.common.errors import MatEffNetError

    if len(argv) > 1:
        raise MatEffNetError(f"unexpected arguments {argv[1:]}")
    s = settings_from_flags()
    logging.getLogger("mat_effnet.prep").setLevel(logging.WARNING)
    out = s.run
    scratch = out.work_dir or tempfile.mkdtemp(prefix="mat-effnet-benchmark-")
    os.makedirs(scratch, exist_ok=True)
    try:
        doc = runner.run_benchmark(s, scratch, log=lambda msg: print(msg, file=sys.stderr,
                                                                     flush=True))
    finally:
        if not out.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    doc["command"] = " ".join([PROG] + sys.argv[1:])
    report.write_json(out.output, doc)
    print(report.format_table(doc))
    print(f"written: {out.output}")
    if out.markdown:
        from mat_effnet.common import atomic

        atomic.write_text(out.markdown, report.format_table(doc, markdown=True) + "\n")
    return 1 if doc["errors"] else 0


def run():
    cli.run(main, PROG)


if __name__ == "__main__":
    run()
