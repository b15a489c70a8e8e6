"""Shards of a preparation run: the fixed plan, and finished videos -> one shard file.

The videos of each split are put in a fixed, seeded order and cut into
shards of ``videos_per_shard`` videos before any work starts (`plan_shards`),
so the shard a video lands in never depends on timing or on which videos
fail. When every video of a shard has its marker (`data_prep.work_files`),
`assemble_shard` concatenates their work files (TFRecord files are plain
sequences of framed records, so byte concatenation is a valid file) into the
shard under a temp name, renames it, writes the shard's summary, and only
then deletes the per-video files. A run killed at any moment therefore
finds each shard either finished (`finished_shard`) or rebuildable.
"""

from __future__ import annotations

import json
import math
import os
import random

from data_prep import work_files
from data_prep.prep_config import PrepConfig
from mat_effnet.common import atomic, faults
from mat_effnet.records import integrity
from mat_effnet import records


def plan_shards(entries: list, videos_per_shard: int) -> list[list]:
    """Fixed, seeded order then contiguous shards (classes mixed per shard)."""
    ordered = sorted(entries, key=lambda e: e.video_id)
    random.Random(0).shuffle(ordered)
    count = max(1, math.ceil(len(ordered) / videos_per_shard))
    return [ordered[i * videos_per_shard:(i + 1) * videos_per_shard] for i in range(count)]


def finished_shard(cfg: PrepConfig, split: str, index: int) -> dict | None:
    """The summary of a shard an earlier run finished (file and summary exist), else None.

    A shard that a run from before `mat_effnet.common.faults` finished without a
    video whose failure was the machine's (a full disk) is not finished: its
    videos are made again and it is rebuilt.
    """
    gfile = work_files.gfile()
    path = os.path.join(work_files.work_dir(cfg.out_dir, split), f"shard-{index:05d}.json")
    if not gfile.exists(path):
        return None
    summary = work_files.read_json(path)
    if any(v["status"] == "failed" and faults.is_machine_reason(v.get("reason"), cfg.out_dir)
           for v in summary["videos"]):
        return None
    shard = os.path.join(cfg.out_dir, summary["file"])
    needed = [shard] + ([records.index_path(shard)] if summary.get("index") else [])
    if not all(gfile.exists(p) for p in needed):
        return None
    if integrity.CHECKSUM not in summary:  # finished by a run from before checksums
        summary[integrity.CHECKSUM] = integrity.file_sha256(shard)
    return summary


def assemble_shard(cfg: PrepConfig, split: str, index: int, count: int,
                   entries: list) -> dict:
    """Writes shard `index` of `count` from its finished videos, in `entries` order.

    Every video of `entries` must have its marker.  Idempotent: a shard that
    is already finished is returned as it is (drivers may retry this step).
    """
    return finished_shard(cfg, split, index) or _assemble(
        cfg.out_dir, work_files.work_dir(cfg.out_dir, split), cfg.dataset_name, split,
        index, count, entries, cfg.schema_version)


def _assemble(out_dir: str, work_dir: str, name: str, split: str, index: int,
              count: int, entries: list, version: int) -> dict:
    """Concatenates finished per-video files into one shard (atomically)."""
    gfile = work_files.gfile()
    filename = records.shard_filename(name, split, index, count)
    final = os.path.join(out_dir, filename)
    videos = [work_files.marker(work_dir, entry) for entry in entries]

    done = [m for m in videos if m["status"] == "done"]
    paths = [os.path.join(work_dir, m["key"] + ".tfrecord") for m in done]

    hashed = []

    def write(out):
        # Hashed on the way out: the shard's checksum costs no extra read.
        out = integrity.HashingWriter(out)
        hashed.append(out)
        for path in paths:
            with gfile.GFile(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)

    if version != 1:
        # The shard's index: each group's offset in its video's work file
        # moved by the bytes of the work files before it.  Written before the
        # shard, so a shard file never exists without the index that reads it.
        groups, base = [], 0
        for marker, path in zip(done, paths):
            groups += [[base + offset, header] for offset, header in marker["groups"]]
            base += gfile.stat(path).length
        records.write_index(final, groups)
    atomic.write_with(final, write)
    summary = {"file": filename, "num_bytes": gfile.stat(final).length,
               integrity.CHECKSUM: hashed[-1].hash.hexdigest(),
               "index": None if version == 1 else filename + records.INDEX_SUFFIX,
               "records": sum(v.get("records", 0) for v in videos), "videos": videos}
    atomic.write_text(os.path.join(work_dir, f"shard-{index:05d}.json"), json.dumps(summary))
    for v in videos:  # the shard summary now holds everything these said
        for suffix in (".tfrecord", ".done.json", ".failed.json"):
            p = os.path.join(work_dir, v["key"] + suffix)
            if gfile.exists(p):
                gfile.remove(p)
    return summary
