"""Importing TensorFlow without its C++ start-up chatter.

TensorFlow 2.21 prints about ten lines from C++ while it is imported and
first probes devices (CUDA probing, the oneDNN notice, absl's pre-init
warning); ``TF_CPP_MIN_LOG_LEVEL=3`` does not silence them all. The one way
found is to point file descriptor 2 at a temporary file around the import.
If the import fails, what it printed is replayed to the real stderr before
the error, so a broken install is never hidden.

The binaries (`mat_effnet.common.cli`) ask for this unless the user wants the
logs, and set `ENV` so that worker processes the library spawns (data
preparation) start as quietly.
"""

from __future__ import annotations

import os
import sys
import tempfile

ENV = "MAT_EFFNET_QUIET_TF"


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up chatter kept off the terminal."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            # The CUDA probe speaks at the first device query, not at import.
            # Physical devices only: logical ones would start the runtime,
            # which MultiWorkerMirroredStrategy must configure first.
            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_if_quiet() -> None:
    """In a spawned worker: the quiet import, when the parent asked for quiet."""
    if os.environ.get(ENV) == "1":
        import_tensorflow_quietly()
