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
not touched. Before anything is removed, every video a damaged shard holds
(the list in its own summary, not the split's plan: a source video that has
gone is dropped from the plan before this runs) is checked to be readable;
if one is not, nothing is removed and the run stops naming it.
"""

from __future__ import annotations

import logging
import os

from data_prep import work_files
from data_prep.prep_config import PrepConfig
from mat_effnet.common.errors import MatEffNetError
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


class RepairError(MatEffNetError):
    """A damaged shard cannot be rebuilt: one of its source videos cannot be read."""


def _unreadable(path: str) -> str | None:
    """Why the source ``path`` (a video file or a frame folder) cannot be read, else None."""
    try:
        if os.path.isdir(path):
            return None if os.listdir(path) else "an empty folder"
        with open(path, "rb") as f:
            return None if f.read(1) else "an empty file"
    except OSError as e:
        return e.strerror or type(e).__name__


def _check_sources(shard: str, summary: dict) -> None:
    for v in summary["videos"]:
        if v.get("status") != "done":
            continue  # a failed video is not in the shard; the rebuild fails it again
        why = _unreadable(v["path"])
        if why is not None:
            raise RepairError(f"{v['path']}: cannot be read ({why}); the damaged shard {shard} "
                              "is rebuilt from its videos, so nothing was deleted: restore the "
                              "video and run again")


def reset_damaged(cfg: PrepConfig, plans: dict[str, list]) -> list[str]:
    """Removes every damaged finished shard of ``plans`` (so the run rebuilds it); their names.

    Raises `RepairError`, having removed nothing, when a video of a damaged
    shard cannot be read.
    """
    gfile = work_files.gfile()
    damaged = []
    for split, plan in plans.items():
        wd = work_files.work_dir(cfg.out_dir, split)
        for i in range(len(plan)):
            summary_path = os.path.join(wd, f"shard-{i:05d}.json")
            if not gfile.exists(summary_path):
                continue  # not finished yet: the run makes it anyway
            summary = work_files.read_json(summary_path)
            problem = _problem(cfg, summary)
            if problem is not None:
                shard = os.path.join(cfg.out_dir, summary["file"])
                _check_sources(shard, summary)
                damaged.append((summary_path, summary, shard, problem))
    rebuilt = []
    for summary_path, summary, shard, problem in damaged:
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
