"""A lost peer in multi-worker training, said in one line.

``MultiWorkerMirroredStrategy`` documents that when one worker dies the
others fail, possibly after a timeout, and that all must be restarted. What
the survivors get is a collective op's ``UnavailableError`` (or, after a
timeout, ``DeadlineExceededError``), with TensorFlow's op trace and one of
two texts: the coordination service's "The following tasks are unhealthy
(stopped sending heartbeats): /job:worker/replica:0/task:1" once the dead
task misses its heartbeats, or the gRPC channel's "ipv4:127.0.0.1:PORT:
Failed to connect to remote host: Connection refused" when the next
collective finds the port closed first. Either names the lost worker, by
task or by address; the cluster in ``TF_CONFIG`` turns an address into its
task. The chief's checkpoints (`mat_effnet.training.distributed.Checkpoints`) are
whole at every step boundary they were written at, so the remedy is always
the same: start every worker again with the same command.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from mat_effnet.common.errors import MatEffNetError

# The errors a dead peer produces in a collective or at a barrier.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError)

_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_ADDRESS = re.compile(r"ipv[46]:([^\s,;]+):(\d+)")


def _cluster(tf_config: str | None) -> dict:
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    try:
        return json.loads(text).get("cluster", {}) if text.strip() else {}
    except (json.JSONDecodeError, AttributeError):
        return {}


def lost_workers(message: str, me: str, tf_config: str | None = None) -> list[str]:
    """The tasks ("worker:1 (host:port)") the error text names, other than ``me``."""
    cluster = _cluster(tf_config)
    by_port = {}
    for job, addresses in cluster.items():
        for index, address in enumerate(addresses):
            by_port[address.rsplit(":", 1)[-1]] = (f"{job}:{index}", address)
    found = []
    for job, index in _TASK.findall(message):
        name = f"{job}:{index}"
        addresses = cluster.get(job, [])
        label = f"{name} ({addresses[int(index)]})" if int(index) < len(addresses) else name
        if name != me and label not in found:
            found.append(label)
    for _, port in _ADDRESS.findall(message):
        if port in by_port:
            name, address = by_port[port]
            label = f"{name} ({address})"
            if name != me and label not in found:
                found.append(label)
    return found


def as_error(error: Exception, me: str, checkpoint_dir: str,
             tf_config: str | None = None) -> MatEffNetError:
    """The one line for a peer lost under ``error``, seen by task ``me``."""
    message = str(error)
    names = lost_workers(message, me, tf_config)
    who = ", ".join(names) if names else "another worker"
    latest = tf.train.latest_checkpoint(checkpoint_dir) if tf.io.gfile.exists(
        checkpoint_dir) else None
    kept = (f"the chief's last checkpoint {os.path.basename(latest)} in {checkpoint_dir} is "
            "kept" if latest else "the chief's checkpoints are kept")
    kind = type(error).__name__
    return MatEffNetError(f"lost {who} ({kind}); {me} stops here; {kept}: start every worker "
                          "again with the same command to resume from it")
