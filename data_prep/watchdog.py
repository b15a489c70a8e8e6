"""A per-video time limit: each video in a process of its own, killed when it overruns.

A decoder can hang on a broken file, and some hang holding the GIL (decord
#373), so nothing inside the worker can stop it: only another process can.
With ``--video_timeout_s``, `run` starts one spawned process per video (at
most ``workers`` at a time), and one that is still running after the limit
is killed; the video is recorded as failed (`work_files.write_failure`,
reason "timed out") and the run goes on. A process per video costs a
process start (about a second) per video, so this is for datasets known to
hold such files; the default pool (`data_prep.builder`) keeps its workers.

The batched Keras TV-L1 route (`mat_effnet.encoding.flow_batches`) does not take the
limit: its decoding runs in its own pool.
"""

from __future__ import annotations

import errno
import multiprocessing
import signal
import time
from typing import Callable, Iterator

from data_prep import work_files
from mat_effnet.common import faults, tf_startup

REASON_TIMEOUT = "timed out"


class Timeout(Exception):
    """The video's processing ran past the limit (recorded as its failure)."""


def _child(fn: Callable, task: work_files.Task, conn) -> None:
    tf_startup.import_tensorflow_if_quiet()
    import tensorflow  # noqa: F401  # every video's work file is written with it: not its time

    conn.send(("started", None))  # the clock starts now, not at the process start
    try:
        conn.send(("ok", fn(task)))
    except BaseException as e:  # noqa: BLE001  # handed to the parent, which re-raises it
        conn.send(("error", e))
    finally:
        conn.close()


def run(tasks: list, workers: int, timeout_s: float,
        fn: Callable = work_files.process_video, poll_s: float = 0.05) -> Iterator[dict]:
    """Yields each task's result; a task over ``timeout_s`` is killed and marked failed.

    ``fn`` must be importable by a spawned process (module level).
    """
    ctx = multiprocessing.get_context("spawn")
    todo = list(tasks)
    running: dict = {}  # process -> (task, parent end of its pipe, start time)
    try:
        while todo or running:
            while todo and len(running) < workers:
                task = todo.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_child, args=(fn, task, child), daemon=True)
                p.start()
                child.close()
                running[p] = (task, parent, None)
            for p, (task, conn, start) in list(running.items()):
                message = None
                if conn.poll():
                    try:
                        message = conn.recv()
                    except EOFError:  # its end closed: it died without a word
                        p.join()
                if message is not None:
                    kind, value = message
                    if kind == "started":
                        running[p] = (task, conn, time.monotonic())
                        continue
                    p.join()
                    del running[p]
                    if kind == "error":
                        raise value
                    yield value
                elif not p.is_alive():  # died without a word (killed, crashed)
                    del running[p]
                    if p.exitcode == -signal.SIGKILL:
                        # The kernel's out-of-memory killer, not the video: nothing recorded.
                        raise faults.MachineFault(
                            f"{task.entry.path}: its worker was killed (SIGKILL: out of memory?); "
                            f"{work_files.MEMORY_ADVICE} and run the same command again: what "
                            "is finished is kept and it resumes", errno.ENOMEM)
                    yield work_files.write_failure(
                        task, Timeout(f"worker died (exit code {p.exitcode})"))
                elif start is not None and time.monotonic() - start > timeout_s:
                    p.kill()
                    p.join()
                    del running[p]
                    yield work_files.write_failure(task, Timeout(
                        f"{REASON_TIMEOUT}: still decoding after --video_timeout_s="
                        f"{timeout_s:g}s, its process was killed"))
            time.sleep(poll_s)
    finally:
        for p in running:
            p.kill()
