"""``mat-effnet-data-service``: the tf.data service dispatcher and workers for ``--data_service``.

    mat-effnet-data-service dispatcher --port=5050 --work_dir=/shared/tfdata_dispatcher
    mat-effnet-data-service worker --dispatcher=10.0.0.5:5050 --port=5051

Plain `tf.data.experimental.service` servers (the training side's pipeline
is `mat_effnet.data.input_pipeline`; workers run no project code, so the trainer
checks the shard files for them, `mat_effnet.records.integrity`).

Faults:
* A dispatcher keeps its state (datasets, jobs, which splits went where) in
  memory unless it has a ``--work_dir``: then it runs in
  ``fault_tolerant_mode``, journals every change there, and a dispatcher
  restarted with the same ``--work_dir`` and ``--port`` takes the jobs up
  again; trainers and workers reconnect by themselves.
* A worker that dies loses the splits it held (DYNAMIC sharding is
  at-most-once): the epoch goes on with the other workers, short of the
  videos that worker had taken; the trainer's epochs are counted in steps,
  so it goes on into the next epoch's videos. The dispatcher's log names
  the worker ("Lost worker HOST:PORT due to timeout", TensorFlow's line,
  kept on here), ``--worker_timeout_s`` after its last heartbeat. Start a
  replacement worker with the same command.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from mat_effnet.common import cli
from mat_effnet.common import tf_startup
from mat_effnet.common.errors import MatEffNetError

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 5050, "Port to serve on (0: any free one, printed).")
flags.DEFINE_string("work_dir", None, "Dispatcher: journal its state here (fault_tolerant_mode), "
                    "so a restart with the same --work_dir and --port resumes its jobs.")
flags.DEFINE_float("worker_timeout_s", None, "Dispatcher: seconds without a heartbeat before "
                   "a worker counts as lost and its tasks are dropped (default: TensorFlow's).")
flags.DEFINE_string("dispatcher", None, "Worker: the dispatcher's HOST:PORT.")
flags.DEFINE_float("heartbeat_s", None, "Worker: seconds between heartbeats to the dispatcher "
                   "(default: TensorFlow's); keep it well under the dispatcher's "
                   "--worker_timeout_s.")
flags.DEFINE_string("worker_address", None, "Worker: the HOST:%port% others reach it at "
                    "(default: localhost:%port%, fine on one machine).")

PROG = "mat-effnet-data-service"
ROLES = ("dispatcher", "worker")


def start(role: str, port: int, work_dir: str | None = None, dispatcher: str | None = None,
          worker_address: str | None = None, worker_timeout_s: float | None = None,
          heartbeat_s: float | None = None):
    """Starts one server; returns it (``.join()`` serves until killed)."""
    import tensorflow as tf

    service = tf.data.experimental.service
    if role == "dispatcher":
        if dispatcher is not None:
            raise MatEffNetError("--dispatcher is for workers; a dispatcher takes --port "
                                 "and --work_dir")
        if work_dir:
            tf.io.gfile.makedirs(work_dir)
        timeout = {}
        if worker_timeout_s:
            # TF looks for silent workers on its job-GC tick (every 10 min by
            # default): without a tick as short as the timeout a dead worker
            # stays listed, and so does what it held, for minutes.
            ms = int(worker_timeout_s * 1000)
            timeout = {"worker_timeout_ms": ms, "job_gc_check_interval_ms": ms}
        return service.DispatchServer(service.DispatcherConfig(
            port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir), **timeout))
    if not dispatcher:
        raise MatEffNetError("--dispatcher=HOST:PORT is required for a worker")
    if "://" in dispatcher:
        dispatcher = dispatcher.split("://", 1)[1]
    if work_dir:
        raise MatEffNetError("--work_dir is the dispatcher's; a worker keeps no state")
    kwargs = {"worker_address": worker_address} if worker_address else {}
    if heartbeat_s:
        kwargs["heartbeat_interval_ms"] = int(heartbeat_s * 1000)
    return service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher, port=port,
                                                     **kwargs))


def main(argv):
    if len(argv) != 2 or argv[1] not in ROLES:
        raise MatEffNetError(f"usage: {PROG} dispatcher|worker [--port=N] [--work_dir=DIR] "
                             "[--dispatcher=HOST:PORT]")
    server = start(argv[1], FLAGS.port, FLAGS.work_dir, FLAGS.dispatcher, FLAGS.worker_address,
                   FLAGS.worker_timeout_s, FLAGS.heartbeat_s)
    # A worker server has no public address; its private one names the
    # port the OS chose for --port=0.
    target = getattr(server, "target", None) or getattr(server, "_address", None) or \
        f"port {FLAGS.port}"
    mode = (f", fault-tolerant (journal in {FLAGS.work_dir})" if FLAGS.work_dir else
            ", state in memory (give --work_dir to survive a restart)"
            if argv[1] == "dispatcher" else "")
    print(f"{PROG}: {argv[1]} serving at {target}{mode}", file=sys.stderr, flush=True)
    server.join()
    return 0


def run():
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        # A server's log is its record: TensorFlow's INFO lines are where a
        # lost worker shows ("Lost worker HOST:PORT due to timeout"), so they
        # stay on. The start-up chatter is still kept off (cli's quiet import,
        # which takes a level set under quiet.ENV as not the user's wish).
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ[tf_startup.ENV] = "1"
    cli.run(main, PROG)


if __name__ == "__main__":
    run()
