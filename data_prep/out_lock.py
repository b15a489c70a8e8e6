"""One writer per output folder: the lock file a preparation run holds.

Two preps on one ``--out_dir`` would both do all the work (each resumes from
the same markers) and race on every rename. The first to start holds
``out_dir/.prep.lock``, a small JSON file with its pid, host and start time;
a second stops with one line naming the holder, or with ``wait`` polls until
the holder is gone. The file is made whole and then hard-linked into place
(``os.link`` fails when the name exists), so a lock is never seen half
written and two starters never both win.

A stale lock (its process dead on this host, e.g. after ``kill -9``) is taken
over. A lock from another host cannot be checked from here: the line says
which host and pid hold it, and to delete the file when that run is gone.
Local folders only: an object store (``gs://``...) has no atomic
create-if-absent through ``os``, so there no lock is taken (said in the log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from typing import Iterator

from mat_effnet.common.errors import MatEffNetError

LOCK_FILENAME = ".prep.lock"
log = logging.getLogger("mat_effnet.prep")


class LockedError(MatEffNetError):
    """Another run holds the output folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return {}  # not ours to judge: treated as held


def _try_take(path: str, mine: dict) -> dict | None:
    """Takes the lock (returns None) or returns the holder's content."""
    tmp = f"{path}.{uuid.uuid4().hex[:12]}"
    with open(tmp, "w") as f:
        json.dump(mine, f)
    try:
        while True:
            try:
                os.link(tmp, path)
                return None
            except FileExistsError:
                holder = _read(path)
                if holder is None:
                    continue  # released meanwhile: try again
                stale = (holder.get("host") == mine["host"] and isinstance(holder.get("pid"), int)
                         and not _alive(holder["pid"]))
                if not stale:
                    return holder
                # Move the stale file aside under a unique name first, so that of
                # two runs taking it over, one wins and the other sees the winner.
                aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                if _read(aside) != holder:  # we moved a newer, live lock: put it back
                    os.rename(aside, path)
                    continue
                os.remove(aside)
                log.warning("%s: took over the lock of pid %s on %s, which is gone",
                            path, holder["pid"], holder["host"])
    finally:
        os.remove(tmp)


@contextlib.contextmanager
def holding(out_dir: str, wait: bool = False, poll_seconds: float = 1.0) -> Iterator[None]:
    """Holds ``out_dir``'s lock for the block; raises `LockedError` if held (unless ``wait``)."""
    if "://" in out_dir:
        log.info("%s: not a local folder, so no lock: run one prep on it at a time", out_dir)
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_FILENAME)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    said = False
    while (holder := _try_take(path, mine)) is not None:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if not wait:
            raise LockedError(f"{out_dir}: locked by another prep ({who}; lock file {path}); "
                              "wait for it with --wait, or delete the lock file if that run "
                              "is gone")
        if not said:
            log.info("%s: locked by %s; waiting for it (--wait)", out_dir, who)
            said = True
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        if _read(path) == mine:
            os.remove(path)
