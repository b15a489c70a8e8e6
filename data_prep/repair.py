"""``mat-effnet-prep --rebuild_damaged``: rebuild only the shards that are damaged.

`mat_effnet.records.integrity` finds a damaged shard (``mat-effnet-verify``,
training's check); this is the repair. Every finished shard of the run is
compared with what its summary recorded when it was written: the shard and
its index exist, the shard's size and SHA-256 match (one read of every
shard: the price of finding flipped bytes). A damaged shard's file, index
and summary are removed before the run starts, so the run makes its videos
again from the source videos and assembles it anew. Encoding is
deterministic, so the rebuilt shard is byte-identical to the one first
written, and the metadata's checksum stays true. Shards that are sound are
not touched.
"""

from __future__ import annotations

import logging
import os

from data_prep import work_files
from data_prep.prep_config import PrepConfig
from mat_effnet.records import integrity
from mat_effnet import records

log = logging.getLogger("mat_effnet.prep")


def _problem(cfg: PrepConfig, summary: dict) -> str | None:
    gfile = work_files.gfile()
    shard = os.path.join(cfg.out_dir, summary["file"])
    if not gfile.exists(shard):
        return "missing"
    if summary.get("index") and not gfile.exists(records.index_path(shard)):
        return "its index is missing"
    size = gfile.stat(shard).length
    if size != summary["num_bytes"]:
        return f"{size} bytes where {summary['num_bytes']} were written"
    if integrity.CHECKSUM in summary and integrity.file_sha256(shard) != summary[integrity.CHECKSUM]:
        return f"its {integrity.CHECKSUM} differs from the one written"
    return None


def reset_damaged(cfg: PrepConfig, plans: dict[str, list]) -> list[str]:
    """Removes every damaged finished shard of ``plans`` (so the run rebuilds it); their names."""
    gfile = work_files.gfile()
    rebuilt = []
    for split, plan in plans.items():
        wd = work_files.work_dir(cfg.out_dir, split)
        for i in range(len(plan)):
            summary_path = os.path.join(wd, f"shard-{i:05d}.json")
            if not gfile.exists(summary_path):
                continue  # not finished yet: the run makes it anyway
            summary = work_files.read_json(summary_path)
            problem = _problem(cfg, summary)
            if problem is None:
                continue
            shard = os.path.join(cfg.out_dir, summary["file"])
            log.warning("%s: %s; rebuilding it from its %d videos", shard, problem,
                        len(summary["videos"]))
            # The summary first: without it the shard counts as unfinished
            # even if this is killed before the files go.
            gfile.remove(summary_path)
            for p in (shard, records.index_path(shard)):
                if gfile.exists(p):
                    gfile.remove(p)
            rebuilt.append(summary["file"])
    if not rebuilt:
        log.info("%s: every finished shard is sound; nothing to rebuild", cfg.out_dir)
    return rebuilt
