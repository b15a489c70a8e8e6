"""The data preparation as an Apache Beam pipeline: one machine or a cluster.

`build_with_beam(cfg, pipeline_args)` writes exactly what `builder.build`
writes for the same `PrepConfig` (the same shard files byte for byte, the
same ``mat_effnet_meta.json`` and TFDS metadata, the same failure list), but
lets any Beam runner spread the videos over its workers: ``DirectRunner``
locally, Dataflow, Flink or Spark on a cluster.  ``pipeline_args`` are Beam's
own pipeline options (``--runner=...``, ``--project=...``), passed through
untouched.  apache-beam is an optional extra (``pip install .[beam]``).

Nothing here computes a record or a metadata field: every step calls the
steps `data_prep.builder.build` takes too, so there is one implementation
whichever driver runs:

1. On the launching machine: `builder.prepare` (flag checks, layout, the
   seeded shard plan, the settings check of a resumed ``out_dir``).  The plan
   is written to ``out_dir/.work/<split>/plan-<digest>.jsonl``, one line per
   shard, and the pipeline is seeded with one small element per shard (its
   byte range in that file), so the job graph stays small however many
   videos there are (Dataflow refuses large job graphs).
2. Per shard, on workers: a shard that an earlier run finished (shard file
   and summary exist) is passed on as is; otherwise its videos are read from
   the plan and fanned out.
3. Per video: `work_files.video_result`, i.e. `work_files.process_video` ->
   `mat_effnet.encoding.encode.encode_video`, writing the video's work file and marker
   under ``out_dir/.work/<split>/``, with the builder's failure reasons.
   Flow is the builder's batched flow function (`mat_effnet.ops.optical_flow.
   create_batch_flow`), batched within a video: ``--flow_implementation=keras``
   runs the compiled TV-L1 on the worker's accelerator if it has one.
   Videos are not shuffled through the runner: only their names are.
4. Per shard, after a group-by-shard (the barrier "all its videos are
   finished"): `shards.assemble_shard` concatenates the work files in the
   planned order into the shard (temp name, then rename), as the builder does.
5. Once, after all shards: `builder.finish` writes the TFDS metadata and then
   ``mat_effnet_meta.json``, whose presence means the dataset is complete.

Re-running resumes like the builder: finished shards and finished videos are
skipped, and runners that retry a failed bundle redo only unfinished work
(every step is idempotent).  The launching machine and the workers must see
the same ``data_root`` (a local path, or a shared mount on a cluster) and the
same ``out_dir`` (any path ``tf.io.gfile`` understands: ``gs://``,
``hdfs://``...), and the workers need this package, TensorFlow and OpenCV
installed (e.g. Beam's ``--setup_file`` or a custom container).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

from data_prep import builder, layouts, shards, work_files
from data_prep.prep_config import PrepConfig
from mat_effnet.common import atomic
from mat_effnet import records

log = logging.getLogger("mat_effnet.prep")

PLAN_PREFIX = "plan-"
COUNTER_NAMESPACE = "mat_effnet_prep"


def _import_beam():
    try:
        import apache_beam as beam
    except ImportError as e:
        raise builder.PrepError(
            "the Beam runner needs apache-beam: pip install 'mat-effnet[beam]'") from e
    return beam


# ---------------------------------------------------------------------------
# The plan on disk
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShardRef:
    """One shard of the plan: where its video list lies in the split's plan file."""

    split: str
    index: int
    count: int  # shards in this split (part of the file name)
    plan_path: str
    offset: int
    length: int


def write_plan(cfg: PrepConfig, plans: dict[str, list[list]]) -> list[ShardRef]:
    """Writes each split's shard plan as JSON lines; returns one `ShardRef` per shard.

    The file is named by a digest of its content, so a ref always points
    into the bytes it was computed from even if another launch rewrites a
    plan in the same ``out_dir``.
    """
    refs = []
    for split, plan in plans.items():
        lines = [json.dumps([dataclasses.asdict(e) for e in shard], sort_keys=True).encode("utf-8")
                 + b"\n" for shard in plan]
        data = b"".join(lines)
        path = os.path.join(work_files.work_dir(cfg.out_dir, split),
                            f"{PLAN_PREFIX}{hashlib.sha1(data).hexdigest()[:16]}.jsonl")
        if not work_files.gfile().exists(path):
            atomic.write_bytes(path, data)
        offset = 0
        for i, line in enumerate(lines):
            refs.append(ShardRef(split, i, len(plan), path, offset, len(line)))
            offset += len(line)
    return refs


def read_shard(ref: ShardRef) -> list[layouts.VideoEntry]:
    """The videos of one shard, in write order, from the plan file."""
    with work_files.gfile().GFile(ref.plan_path, "rb") as f:
        f.seek(ref.offset)
        line = f.read(ref.length)
    return [layouts.VideoEntry(**e) for e in json.loads(line)]


# ---------------------------------------------------------------------------
# The pipeline's steps (thin: each one calls a step of the builder's)
# ---------------------------------------------------------------------------

DONE_TAG = "finished"

# The step functions carry no annotations: Beam reads them as type hints,
# and the postponed (string) annotations of this module would only make it
# log a line per parameter.


def _expand_shard(ref, cfg):
    """A finished shard's summary (tagged output), else its videos, keyed by shard."""
    beam = _import_beam()
    summary = shards.finished_shard(cfg, ref.split, ref.index)
    if summary is not None:
        yield beam.pvalue.TaggedOutput(DONE_TAG, ((ref.split, ref.index), summary))
        return
    for position, entry in enumerate(read_shard(ref)):
        yield (ref.split, ref.index, ref.count), (position, entry)


def _process_video(element, cfg):
    beam = _import_beam()
    key, (position, entry) = element
    result = work_files.video_result(cfg, key[0], entry)
    if result["status"] == "done":
        beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "videos_done").inc()
        beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "frames").inc(result.get("frames", 0))
    else:
        beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "videos_failed").inc()
        log.warning("skipped %s: %s", result["path"], result["reason"])
    # Only the name travels on: the records stay in the video's work file.
    return key, (position, entry)


def _assemble(element, cfg):
    (split, index, count), videos = element
    entries = [entry for _, entry in sorted(videos, key=lambda v: v[0])]
    summary = shards.assemble_shard(cfg, split, index, count, entries)
    _import_beam().metrics.Metrics.counter(COUNTER_NAMESPACE, "shards").inc()
    return (split, index), summary


def _finish(keyed_summaries, cfg, layout, counts):
    summaries = {split: [None] * n for split, n in counts.items()}
    for (split, index), summary in keyed_summaries:
        summaries[split][index] = summary
    missing = [f"{s}/{i}" for s, lst in summaries.items() for i, v in enumerate(lst) if v is None]
    if missing:  # the runner lost a shard: never write metadata that says "complete"
        raise builder.PrepError(f"shards without a summary: {', '.join(missing[:10])}")
    meta = builder.finish(cfg, layout, summaries)
    log.info("wrote %s: %d videos ok, %d failed", cfg.out_dir,
             sum(s["videos"] for s in meta["splits"].values()), len(meta["failures"]))
    return meta


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

def pipeline_options(cfg: PrepConfig, pipeline_args: list[str]):
    """Beam's options from ``pipeline_args``; ``--workers`` sizes a local DirectRunner.

    Flags are passed through as given (Beam itself warns about ones no
    options class knows: runner-specific classes register only once their
    runner is imported, so refusing them here would refuse valid flags).
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(pipeline_args)
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    local = runner in (None, "DirectRunner", "SwitchingDirectRunner")
    if local and cfg.workers > 1 and not any(a.startswith("--direct_num_workers") for a in args):
        # Processes, not threads: decoding and flow hold the GIL.
        args += [f"--direct_num_workers={cfg.workers}", "--direct_running_mode=multi_processing"]
    return PipelineOptions(args)


def build_pipeline(pipeline, cfg: PrepConfig, layout: layouts.Layout,
                   plans: dict[str, list[list]]):
    """Adds the preparation's steps to ``pipeline`` (after `builder.prepare`)."""
    beam = _import_beam()
    refs = write_plan(cfg, plans)
    counts = {split: len(plan) for split, plan in plans.items()}
    # Only classes and failures are read by builder.finish; the per-split
    # entry lists would bloat every worker's copy of the step.
    small_layout = dataclasses.replace(layout, splits={})
    expanded = (pipeline
                | "Shards" >> beam.Create(refs)
                | "Plan" >> beam.FlatMap(_expand_shard, cfg).with_outputs(DONE_TAG, main="videos"))
    assembled = (expanded.videos
                 # Without a reshuffle the runner fuses a shard's videos into
                 # the bundle that read them: one worker per shard.
                 | "Spread" >> beam.Reshuffle()
                 | "Videos" >> beam.Map(_process_video, cfg)
                 | "ByShard" >> beam.GroupByKey()
                 | "Assemble" >> beam.Map(_assemble, cfg))
    return ((expanded[DONE_TAG], assembled)
            | "AllShards" >> beam.Flatten()
            | "Collect" >> beam.combiners.ToList()
            | "Metadata" >> beam.Map(_finish, cfg, small_layout, counts))


def build_with_beam(cfg: PrepConfig, pipeline_args: list[str] | None = None) -> dict | None:
    """Prepares a dataset with Apache Beam; returns the metadata written, like `builder.build`.

    Raises as `builder.build` does, before launching anything, for bad
    input or settings.  Returns None when the runner hands back before
    the job finished (a detached submission): the job writes the metadata
    itself when it completes.
    """
    beam = _import_beam()
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import PipelineState

    options = pipeline_options(cfg, pipeline_args or [])
    layout, plans = builder.prepare(cfg)
    log.info("%s: %d classes, %d videos (%s) in %d shards, Beam runner %s", cfg.dataset,
             len(layout.classes), sum(len(e) for e in layout.splits.values()),
             ", ".join(f"{s} {len(e)}" for s, e in layout.splits.items()),
             sum(len(s) for s in plans.values()),
             options.view_as(StandardOptions).runner or "DirectRunner")
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, cfg, layout, plans)
    state = pipeline.run().wait_until_finish()
    if state != PipelineState.DONE:
        if PipelineState.is_terminal(state):
            raise builder.PrepError(f"the Beam pipeline ended in state {state}")
        log.info("the Beam job is %s; it writes %s when it completes", state,
                 records.META_FILENAME)
        return None
    meta = records.read_metadata(cfg.out_dir)
    meta.pop("schema_version")  # added on writing; builder.build returns it without
    log.info("done: %d videos ok, %d failed -> %s",
             sum(s["videos"] for s in meta["splits"].values()), len(meta["failures"]),
             cfg.out_dir)
    for f in meta["failures"]:
        log.info("  failed: %s (%s): %s", f["video_id"], f["split"], f["reason"])
    return meta
