"""The one front-end wrapper every ``mat-effnet-*`` binary runs through.

* Errors: the library raises `mat_effnet.errors.MatEffNetError` for anything
  the user handed in; here it becomes ``mat-effnet-X: error: <message>`` on
  stderr and exit code 2 (argument names are shown as ``--flag``). A missing
  file (FileNotFoundError) is reported the same way. absl's own flag-parsing
  errors keep absl's behaviour; anything else is a bug and keeps its
  traceback.
* A quiet start: TensorFlow 2.21 prints about ten lines from C++ while it is
  imported (CUDA probing, the oneDNN notice, absl's pre-init warning) and
  ``TF_CPP_MIN_LOG_LEVEL=3`` does not silence them all, so unless the user
  asks for them (``--verbosity`` >= 1, or their own ``TF_CPP_MIN_LOG_LEVEL``)
  file descriptor 2 is pointed at a temporary file around ``import
  tensorflow`` and the first (physical) device query. If that import fails, what it printed is replayed to the
  real stderr before the error, so a broken install is never hidden.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from typing import Callable

from absl import app, flags

from mat_effnet.errors import MatEffNetError

FLAGS = flags.FLAGS


def as_flag_message(error: BaseException) -> str:
    """The library names bad arguments 'name=value: why'; flags share those names."""
    text = str(error)
    return f"--{text}" if re.match(r"^[a-z_]+=", text) else text


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


def _wants_tf_logs() -> bool:
    return "TF_CPP_MIN_LOG_LEVEL" in os.environ or FLAGS["verbosity"].value >= 1


def run(main: Callable[[list], int | None], prog: str, log_level: int = logging.INFO,
        uses_tensorflow: bool = True) -> None:
    """``app.run(main)`` with the project's error format and a quiet start.

    ``uses_tensorflow=False`` for a binary that never imports it (fuse):
    it then starts without paying for the import.
    """

    def wrapped(argv):
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
        if uses_tensorflow and not _wants_tf_logs():
            import_tensorflow_quietly()
        try:
            return main(argv)
        except (MatEffNetError, FileNotFoundError) as e:
            print(f"{prog}: error: {as_flag_message(e)}", file=sys.stderr)
            return 2

    app.run(wrapped)
