"""The cluster of a multi-machine run: who is chief, where each writes, which files each reads.

The cluster is read from ``TF_CONFIG`` (TensorFlow's multi-worker convention);
the custom loop that trains on it is `mat_effnet.training.distributed`.

Chief and workers
-----------------
The chief is the ``chief`` task, else worker 0, else the only process (no
``TF_CONFIG``).  Only the chief writes into ``model_dir``.  Saving may need
every worker (a variable aggregated on read is reduced across workers), so
the others run the same saves into a private temporary directory that they
delete (TensorFlow's MWMS pattern).  Only the chief restores a checkpoint;
it then broadcasts every checkpointed value (weights, optimizer slots,
counters) to the other workers.  So ``model_dir`` need not be on storage the
workers share: the chief's copy is the only one read.

Input sharding
--------------
Each worker builds its own input pipeline (``distribute_datasets_from_
function``) and batches per replica (global batch / replicas).

* ``file``: worker ``i`` of ``n`` reads shard files ``i, i+n, ...``.  Cheap
  (each record is decoded once, by one worker), but a worker with fewer or
  smaller files sees its records more often, and with fewer files than
  workers a worker would have none.
* ``data``: every worker reads every file.  With a seed the workers' streams
  are identical and each keeps every n-th batch (a partition of the stream,
  at n times the decoding work); without a seed the workers' streams are
  independent shuffles of the whole set and none is discarded.
* ``auto`` (default): ``file`` when every worker gets at least 4 files (the
  workers' file counts then differ by at most 25 %; prepared data has 32
  videos per shard, so UCF101 train has about 300 shards), else ``data``.

Validation uses ``file`` whenever there are at least as many files as
workers (every record is still evaluated exactly once; balance only affects
speed), else ``data`` sharding of its deterministic stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Sequence

import tensorflow as tf

log = logging.getLogger("mat_effnet.training.cluster")

SHARD_POLICIES = ("auto", "file", "data")
# "auto" shards by file when every worker gets at least this many files.
MIN_FILES_PER_WORKER = 4


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Who this process is in the cluster that ``TF_CONFIG`` describes."""

    task_type: str | None  # None: no TF_CONFIG (a one-process "cluster")
    task_id: int
    num_workers: int
    is_chief: bool

    @property
    def name(self) -> str:
        return "local" if self.task_type is None else f"{self.task_type}:{self.task_id}"


def worker_info(tf_config: str | None = None) -> WorkerInfo:
    """Parses ``TF_CONFIG`` (default: the environment's); ValueError when malformed.

    ``{"cluster": {"worker": ["host1:port", "host2:port"]},
    "task": {"type": "worker", "index": 0}}``.  The chief is the ``chief``
    task when the cluster has one, else worker 0.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return WorkerInfo(None, 0, 1, True)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster = config.get("cluster") or {}
    task = config.get("task") or {}
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError("TF_CONFIG: 'cluster' and 'task' must be JSON objects")
    workers = [t for t in ("chief", "worker") if cluster.get(t)]
    if not workers:
        if cluster:
            raise ValueError(f"TF_CONFIG: the cluster has no 'worker' or 'chief' task "
                             f"(it has {sorted(cluster)})")
        return WorkerInfo(None, 0, 1, True)
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG: task type {task_type!r} is not in the cluster "
                         f"({sorted(cluster)})")
    if task_type not in ("chief", "worker"):
        # Evaluators and parameter servers have no part in MWMS training.
        raise ValueError(f"TF_CONFIG: task type {task_type!r}: multi_worker training "
                         "runs on 'chief' and 'worker' tasks only")
    if not isinstance(task_id, int) or not 0 <= task_id < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG: task index {task_id!r} is out of range for the "
                         f"{len(cluster[task_type])} {task_type!r} addresses")
    num = sum(len(cluster[t]) for t in workers)
    chief = task_type == "chief" or ("chief" not in cluster and task_id == 0)
    return WorkerInfo(task_type, task_id, num, chief)


def make_multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MWMS over the cluster in ``TF_CONFIG``; must run before any other TF work.

    Collective ops are configured when the strategy is created, which
    TensorFlow allows only before its runtime has started.
    """
    worker_info()  # a clear error for a malformed TF_CONFIG, before TF's own
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as e:
        if "program startup" in str(e):
            raise RuntimeError(
                "strategy='multi_worker' must be created before TensorFlow runs "
                "anything else in this process (collective ops are configured at "
                "start-up); start a fresh process for multi-worker training") from e
        raise


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def strategy_worker_info(strategy: tf.distribute.Strategy) -> WorkerInfo:
    """This process's role; a single process is its own chief."""
    if is_multi_worker(strategy):
        return worker_info()
    return WorkerInfo(None, 0, 1, True)


class WriteDir:
    """Where this worker writes: ``model_dir`` on the chief, else a temp dir.

    A context manager; the temp dir is deleted on exit, whatever happened.
    """

    def __init__(self, model_dir: str, info: WorkerInfo):
        self.model_dir, self.info = model_dir, info
        self.path = model_dir

    def __enter__(self) -> str:
        if not self.info.is_chief:
            self.path = tempfile.mkdtemp(prefix=f"mat_effnet_{self.info.task_type}"
                                                f"{self.info.task_id}_")
        return self.path

    def __exit__(self, *exc):
        if not self.info.is_chief:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------

def plan_sharding(files: Sequence[str], num_pipelines: int, policy: str = "auto",
                  training: bool = True) -> tuple[str, list[list[str]]]:
    """("file" | "data", the files of each input pipeline).  See the docstring."""
    if policy not in SHARD_POLICIES:
        raise ValueError(f"shard_policy={policy!r}: expected one of {SHARD_POLICIES}")
    files, n = list(files), int(num_pipelines)
    if n < 1:
        raise ValueError(f"num_pipelines={n}: must be >= 1")
    if n == 1:
        return "file", [files]  # one pipeline reads every file once either way
    if policy == "auto":
        need = MIN_FILES_PER_WORKER * n if training else n
        policy = "file" if len(files) >= need else "data"
    if policy == "file":
        if len(files) < n:
            raise ValueError(f"shard_policy='file': {len(files)} shard files cannot feed "
                             f"{n} workers; use shard_policy='data' or 'auto'")
        return "file", [files[i::n] for i in range(n)]
    return "data", [files for _ in range(n)]


def make_dataset_fn(build: Callable[[list, int], tf.data.Dataset], files: Sequence[str],
                    global_batch_size: int, policy: str, training: bool,
                    seeded: bool) -> Callable:
    """A ``distribute_datasets_from_function`` argument.

    ``build(files, per_replica_batch)`` makes one pipeline's batched dataset.
    """

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
        how, plan = plan_sharding(files, n, policy, training)
        ds = build(plan[i], ctx.get_per_replica_batch_size(global_batch_size))
        # "data": identical streams (seeded training, or evaluation) are
        # partitioned by batch; unseeded training streams are already
        # independent, so discarding batches would only waste work.
        if how == "data" and n > 1 and (seeded or not training):
            ds = ds.shard(n, i)
        log.info("input pipeline %d/%d: %s sharding, %d files", i, n, how, len(plan[i]))
        return ds

    return dataset_fn
