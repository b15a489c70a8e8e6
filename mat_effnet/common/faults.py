"""Faults of the machine: which errors they are, and the one line the user gets.

A full disk, a missing permission, an I/O error or a lost mount is not a
fault of the data nor a bug: the user is told, in one line, which file could
not be written, how much space was free, and that running the same command
again continues where it stopped (every writer of the project writes through
`mat_effnet.common.atomic`, so nothing already finished is lost). This module is the
one place that recognises such errors, in the forms they arrive in:

* ``OSError`` with its errno (Python's own writes, ``shutil``, ``os.replace``);
* TensorFlow's status errors (``tf.io.gfile``, ``TFRecordWriter``, Keras's
  saving through them): TF maps ``ENOSPC`` to ``ResourceExhaustedError`` and
  ``EACCES`` to ``PermissionDeniedError``; others carry only the C library's
  text (``Input/output error``). Matched by class name and text, so that
  data preparation need not import TensorFlow to classify;
* an error raised *from* one of those (``raise X from e``, or while handling).

`mat_effnet.common.cli` turns any of them into ``mat-effnet-X: error: <line>`` with
exit code 2. Preparation calls `output_fault` where a video's work file is
written, so that a machine error stops the run instead of being recorded as
that video's failure, and `is_machine_reason` to retry videos that a run from
before this module recorded as failed for such a reason.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

from mat_effnet.common.errors import MatEffNetError

# errno -> what the user is told; the errors that are the machine's whichever
# file they name.
_ALWAYS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ESTALE: "stale file handle (lost network mount?)",
    errno.ENOTCONN: "transport endpoint is not connected (lost mount?)",
}
# These are the machine's on the output side; on the input side (a video
# file one may not read) they are the data's, so a caller says which side.
_OUTPUT_SIDE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.ENODEV: "no such device (lost mount?)",
    errno.ENXIO: "no such device or address (lost mount?)",
}
MACHINE_ERRNOS = {**_ALWAYS, **_OUTPUT_SIDE}

# The C library's texts, as TensorFlow's messages and old markers carry them.
_TEXTS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Stale file handle": errno.ESTALE,
    "Transport endpoint is not connected": errno.ENOTCONN,
    "Permission denied": errno.EACCES,
    "Input/output error": errno.EIO,
}
_TF_CLASSES = {"ResourceExhaustedError": errno.ENOSPC, "PermissionDeniedError": errno.EACCES}

_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EROFS: "make it writable",
    errno.EACCES: "make it writable",
    errno.EPERM: "make it writable",
}


class MachineFault(MatEffNetError):
    """The machine stopped the run (no space, no permission, I/O error, lost mount)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # crosses process pools whole
        return type(self), (str(self), self.code)


def _chain(error: BaseException):
    seen = 0
    while error is not None and seen < 8:
        yield error
        error = error.__cause__ or error.__context__
        seen += 1


def _errno_of(error: BaseException) -> int | None:
    if isinstance(error, MachineFault):
        return error.code
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        return error.errno
    text = str(error)
    name = type(error).__name__
    if type(error).__module__.startswith("tensorflow"):
        if name == "ResourceExhaustedError" and "OOM" in text:
            return None  # out of accelerator memory: not a disk
        for marker, code in _TEXTS.items():
            if marker in text:
                return code
        return _TF_CLASSES.get(name)
    return None


def machine_errno(error: BaseException) -> int | None:
    """The errno of the machine fault ``error`` is (or was raised from), else None."""
    for e in _chain(error):
        code = _errno_of(e)
        if code is not None:
            return code
    return None


def _path_of(error: BaseException) -> str | None:
    for e in _chain(error):
        path = None
        if isinstance(e, OSError) and e.filename:
            path = os.fsdecode(e.filename)
        else:
            # TensorFlow names the file first: "<path>; No space left on device".
            m = re.search(r"((?:[a-z]+://)?/[^\s;:'\"]+)", str(e))
            path = m.group(1) if m else None
        if path:
            # mat_effnet.common.atomic's temp name -> the file it was to become.
            return re.sub(r"\.tmp-[0-9a-f]{12}(\.[\w.]+)?$", "", path)
    return None


def free_space(path: str) -> str:
    """'12.3 MiB free on <mount point>' (KiB under 10 MiB) for the disk holding ``path`` (local paths)."""
    if "://" in path:
        return "free space unknown (remote file system)"
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "free space unknown"
    mount = probe
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    amount = f"{free / 2**10:.0f} KiB" if free < 10 * 2**20 else f"{free / 2**20:.1f} MiB"
    return f"{amount} free on {mount}"


def describe(error: BaseException, path: str | None = None) -> str:
    """The one line for machine fault ``error`` about ``path`` (else the file it names)."""
    if isinstance(error, MachineFault):
        return str(error)
    code = machine_errno(error)
    path = path or _path_of(error) or "?"
    why = MACHINE_ERRNOS.get(code, "the storage failed")
    advice = _ADVICE.get(code, "check the disk or mount")
    return (f"{path}: {why} ({free_space(path)}); {advice} and run the same command "
            "again: what is finished is kept and it resumes")


def output_fault(error: BaseException, out_dir: str,
                 path: str | None = None) -> MachineFault | None:
    """The `MachineFault` for an error met while writing under ``out_dir``, else None.

    ``path`` names the file when the error names none.

    ``out_dir`` decides the side for the errors that may also come from
    reading an input (EACCES, EIO ...): they are the machine's when they
    name a file under it, or when nothing else is named.
    """
    code = machine_errno(error)
    if code is None:
        return None
    if code in _OUTPUT_SIDE:
        named = _path_of(error)
        if named and not os.path.abspath(named).startswith(os.path.abspath(out_dir)):
            return None
    return MachineFault(describe(error, _path_of(error) or path), code)


def is_machine_reason(reason: str | None) -> bool:
    """Whether a recorded failure reason was the machine's, not the video's.

    Runs from before this module recorded full disks as videos' failures
    (``ResourceExhaustedError: …/.work/train/…``); the videos they name are
    retried. The output-side texts count only when they name a work file.
    """
    if not reason or reason.startswith("MachineFault"):
        return bool(reason)
    for text, code in _TEXTS.items():
        if text in reason and (code in _ALWAYS or "/.work/" in reason):
            return True
    return reason.startswith("ResourceExhaustedError") and "/.work/" in reason
