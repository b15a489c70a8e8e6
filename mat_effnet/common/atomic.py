"""Atomic file writes: the project's one temp-file-then-rename writer.

A file written by this module either exists whole or not at all, so a job
killed mid-write never leaves a truncated file that a later run would trust
(the resume logic of preparation and training depends on that). Works on any
``tf.io.gfile`` path when TensorFlow is importable (``gs://`` ...), else on
local paths only, so data preparation does not need TensorFlow to write.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Callable, IO, Iterator

from mat_effnet.common import faults

_TMP_MARK = ".tmp-"  # .gitignore and the builders' clean-up know this suffix


def tmp_name(path: str) -> str:
    """A unique sibling of ``path`` to write into before renaming."""
    return f"{path}{_TMP_MARK}{uuid.uuid4().hex[:12]}"


def _is_local(path: str) -> bool:
    return "://" not in path


@contextlib.contextmanager
def replacing(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path``.

    For writers that want a file name rather than a file object (a video
    writer, ``model.save``). ``suffix`` keeps an extension those writers
    read the format from (``.keras``, ``.avi``). On any error the temporary
    file is removed and ``path`` is left as it was.
    """
    tmp = tmp_name(path) + suffix
    if _is_local(path):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            _raise_named(e, path)
            raise
        return
    import tensorflow as tf  # remote filesystems go through tf.io.gfile

    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    try:
        yield tmp
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException as e:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        _raise_named(e, path)
        raise


def _raise_named(error: BaseException, path: str) -> None:
    """A full disk (or other machine fault) while writing ``path``: the fault naming it.

    Writers such as ``zipfile`` (Keras's .keras) raise ENOSPC without a file
    name; this is where the name is known (`mat_effnet.common.faults`).
    """
    if isinstance(error, Exception) and not isinstance(error, faults.MachineFault):
        fault = faults.machine_fault(error, out_dir=os.path.dirname(path) or ".", path=path)
        if fault is not None:
            raise fault from None


def write_with(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write(f)`` on a binary file object, then renames into ``path``."""
    with replacing(path) as tmp:
        if _is_local(path):
            with open(tmp, "wb") as f:
                write(f)
        else:
            import tensorflow as tf

            with tf.io.gfile.GFile(tmp, "wb") as f:
                write(f)


def write_bytes(path: str, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
