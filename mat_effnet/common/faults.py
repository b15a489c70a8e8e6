"""Faults of the machine: which errors they are, whose fault, and the one line the user gets.

A full disk, a missing permission, an I/O error, a lost mount or running out
of memory is not a fault of the data nor a bug: the user is told, in one
line, which file could not be written or read (how much space was free, or
which size to lower), and that running the same command again continues
where it stopped (every writer of the project writes through
`mat_effnet.common.atomic`, so nothing already finished is lost). This module is the
one place that recognises such errors, in the forms they arrive in:

* ``OSError`` with its errno (Python's own writes, ``shutil``, ``os.replace``);
  ``MemoryError`` (the host);
* TensorFlow's status errors (``tf.io.gfile``, ``TFRecordWriter``, Keras's
  saving through them): TF maps ``ENOSPC`` to ``ResourceExhaustedError``
  with the C library's text, and ``EACCES`` to ``PermissionDeniedError``;
  others carry only the text (``Input/output error``). A
  ``ResourceExhaustedError`` without a disk's text is memory ("OOM when
  allocating"), as is XLA's "Out of memory while trying to allocate".
  Matched by class name and text, so that data preparation need not import
  TensorFlow to classify;
* an error raised *from* one of those (``raise X from e``, or while handling).

`machine_fault` is the one policy every loop over items (prep, frame-folder
export and import, many-video prediction, verify) asks whose fault an error
is: the machine's stops the run with one line, the item's is recorded against
the item. `mat_effnet.common.cli` turns any machine fault into
``mat-effnet-X: error: <line>`` with exit code 2. `is_machine_reason`
recognises the recorded reasons of runs that recorded a machine's fault
against an item, so that those items are retried.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

from mat_effnet.common.errors import MatEffNetError

# errno -> what the user is told; the errors that are the machine's whichever
# file they name (reading an input on a failing disk or a lost mount included).
_ALWAYS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ESTALE: "stale file handle (lost network mount?)",
    errno.ENOTCONN: "transport endpoint is not connected (lost mount?)",
    errno.EIO: "input/output error",
    errno.ENODEV: "no such device (lost mount?)",
    errno.ENXIO: "no such device or address (lost mount?)",
    errno.ENOMEM: "out of memory",
}
# These are the machine's on the output side; on the input side (a video
# file one may not read) they are the item's, so a caller says which side.
_OUTPUT_SIDE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
MACHINE_ERRNOS = {**_ALWAYS, **_OUTPUT_SIDE}

# The C library's texts, as TensorFlow's messages and old markers carry them.
_TEXTS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Stale file handle": errno.ESTALE,
    "Transport endpoint is not connected": errno.ENOTCONN,
    "Input/output error": errno.EIO,
    "No such device": errno.ENODEV,
    "Permission denied": errno.EACCES,
}
# Out of memory as the host (MemoryError) and the accelerators word it:
# TensorFlow's "OOM when allocating tensor", XLA's "Out of memory while
# trying to allocate" (both under RESOURCE_EXHAUSTED).
_MEMORY_TEXTS = ("OOM when allocating", "Out of memory", "out of memory", "RESOURCE_EXHAUSTED")
_XLA_CLASSES = ("XlaRuntimeError", "JaxRuntimeError")

_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EROFS: "make it writable",
    errno.EACCES: "make it writable",
    errno.EPERM: "make it writable",
}
MEMORY_ADVICE = "lower the batch size or the frame size"


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
    if isinstance(error, MemoryError):
        return errno.ENOMEM
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        return error.errno
    text = str(error)
    name = type(error).__name__
    if type(error).__module__.startswith("tensorflow"):
        for marker, code in _TEXTS.items():
            if marker in text:
                return code
        if name == "ResourceExhaustedError":
            # Not a disk (whose errors carry the C library's text): memory.
            return errno.ENOMEM
        if name == "PermissionDeniedError":
            return errno.EACCES
        return None
    if name in _XLA_CLASSES and any(m in text for m in _MEMORY_TEXTS):
        return errno.ENOMEM
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


def describe(error: BaseException, path: str | None = None,
             memory_advice: str = MEMORY_ADVICE) -> str:
    """The one line for machine fault ``error`` about ``path`` (else the file it names)."""
    if isinstance(error, MachineFault):
        return str(error)
    code = machine_errno(error)
    path = path or _path_of(error) or "?"
    if code == errno.ENOMEM:
        where = "the host" if any(isinstance(e, MemoryError) for e in _chain(error)) else (
            "the accelerator")
        return (f"{path}: out of memory on {where}; {memory_advice} and run the same command "
                "again: what is finished is kept and it resumes")
    why = MACHINE_ERRNOS.get(code, "the storage failed")
    advice = _ADVICE.get(code, "check the disk or mount")
    return (f"{path}: {why} ({free_space(path)}); {advice} and run the same command "
            "again: what is finished is kept and it resumes")


def _under(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _input_fault(inputs) -> tuple[OSError, str] | None:
    """(the error, the path) when an input cannot even be looked at for the machine's reason."""
    for p in inputs:
        if not p or "://" in p:
            continue
        try:
            os.stat(p)
        except OSError as e:
            if e.errno in _ALWAYS:
                return e, p
    return None


def machine_fault(error: BaseException, *, out_dir: str | None = None, inputs=(),
                  path: str | None = None,
                  memory_advice: str = MEMORY_ADVICE) -> MachineFault | None:
    """Whose fault ``error`` is: the `MachineFault` when the machine's, None when the item's.

    The one policy every loop over items (videos, frame folders, shards)
    follows. The machine's: no space, a quota, a read-only file system, an
    I/O error, a stale or lost mount, out of memory (host or accelerator),
    and no permission on the output (under ``out_dir``; a named file
    elsewhere is an input one may not read, the item's). An error that is
    none of these is the item's unless one of ``inputs`` (the item's files
    or folders) cannot even be stat'ed for one of those reasons: a decoder
    reports a lost mount as a file it cannot open. ``path`` names the file
    when the error names none. The item's error is recorded against it and
    the run goes on; the machine's stops the run, nothing recorded.
    """
    if isinstance(error, MachineFault):
        return error
    code = machine_errno(error)
    if code is not None and code in _OUTPUT_SIDE:
        named = _path_of(error)
        if out_dir is None or (named and not _under(named, out_dir)):
            code = None
    if code == errno.ENOMEM:  # named by the item it was working on
        where = next((p for p in inputs if p), None) or path
        return MachineFault(describe(error, where, memory_advice), code)
    if code is not None:
        return MachineFault(describe(error, _path_of(error) or path, memory_advice), code)
    found = _input_fault(inputs)
    if found is not None:
        e, p = found
        return MachineFault(describe(e, p), e.errno)
    return None


def raise_if_machine(error: BaseException, **where) -> None:
    """Raises `machine_fault`'s answer (``where``: its keywords) if there is one."""
    fault = machine_fault(error, **where)
    if fault is error:
        raise fault
    if fault is not None:
        raise fault from None


def is_machine_reason(reason: str | None, out_dir: str | None = None) -> bool:
    """Whether a recorded failure reason (a marker's, a row's) was the machine's, not the item's.

    Runs from before `machine_fault` recorded full disks, I/O errors, lost
    mounts and out of memory as items' failures; the items they name are
    retried. The output-side texts (no permission) count only when they
    name a work file (``/.work/``) or a file under ``out_dir``.
    """
    if not reason:
        return False
    if reason.startswith(("MachineFault", "MemoryError")):
        return True
    if any(m in reason for m in _MEMORY_TEXTS):
        return True
    if "worker died (exit code -9)" in reason:  # SIGKILL: the out-of-memory killer
        return True
    for text, code in _TEXTS.items():
        if text in reason:
            if code in _ALWAYS:
                return True
            if "/.work/" in reason or (out_dir and os.path.abspath(out_dir) in reason):
                return True
    return reason.startswith("ResourceExhaustedError")
