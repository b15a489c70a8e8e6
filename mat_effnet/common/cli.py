"""The one front-end wrapper every ``mat-effnet-*`` binary runs through.

* Errors: the library raises `mat_effnet.common.errors.MatEffNetError` for anything
  the user handed in; here it becomes ``mat-effnet-X: error: <message>`` on
  stderr and exit code 2 (argument names are shown as ``--flag``). A missing
  file (FileNotFoundError) is reported the same way, and so is a fault of the
  machine (a full disk, no permission, an I/O error, a lost mount), whose
  line `mat_effnet.common.faults` writes: the file, the free space, and that the
  same command resumes. absl's own flag-parsing
  errors keep absl's behaviour; anything else is a bug and keeps its
  traceback.
* A quiet start: unless the user asks for TensorFlow's C++ start-up lines
  (``--verbosity`` >= 1, or their own ``TF_CPP_MIN_LOG_LEVEL``), TensorFlow
  is imported through `mat_effnet.common.tf_startup`, which keeps them off the terminal
  (and a broken install still in view); worker processes inherit the wish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Callable, ContextManager

from absl import app, flags

from mat_effnet.common import faults, tf_startup
from mat_effnet.common.errors import MatEffNetError

FLAGS = flags.FLAGS


def as_flag_message(error: BaseException) -> str:
    """The library names bad arguments 'name=value: why'; flags share those names."""
    text = str(error)
    return f"--{text}" if re.match(r"^[a-z_]+=", text) else text


def _wants_tf_logs() -> bool:
    if FLAGS["verbosity"].value >= 1:
        return True
    # A TF_CPP_MIN_LOG_LEVEL that a quiet parent set is not the user's wish.
    return "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get(tf_startup.ENV) != "1"


def run(main: Callable[[list], int | None], prog: str, log_level: int = logging.INFO,
        uses_tensorflow: bool = True,
        hold: Callable[[], ContextManager] | None = None) -> None:
    """``app.run(main)`` with the project's error format and a quiet start.

    ``uses_tensorflow=False`` for a binary that never imports it (fuse):
    it then starts without paying for the import. ``hold()``, if given, is
    entered once the flags are parsed and before TensorFlow is imported,
    and held while ``main`` runs (prep's output-folder lock: the first to
    start holds it).
    """

    def wrapped(argv):
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
        try:
            with hold() if hold is not None else contextlib.nullcontext():
                if uses_tensorflow and not _wants_tf_logs():
                    # Worker processes the library spawns inherit the wish (quiet.py).
                    os.environ[tf_startup.ENV] = "1"
                    tf_startup.import_tensorflow_quietly()
                return main(argv)
        except (MatEffNetError, FileNotFoundError) as e:
            print(f"{prog}: error: {as_flag_message(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001  # a machine fault, else a bug: re-raised
            if faults.machine_errno(e) is None:
                raise
            print(f"{prog}: error: {faults.describe(e)}", file=sys.stderr)
            return 2

    app.run(wrapped)
