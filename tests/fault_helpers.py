"""Stubs that spawned prep processes import by name (tests/test_faults.py)."""

import time

from data_prep import work_files


def oom_killed_process_video(task):
    """A worker the kernel kills (SIGKILL, as its out-of-memory killer does) on 'oom' files."""
    import os
    import signal

    if "oom" in task.entry.video_id:
        os.kill(os.getpid(), signal.SIGKILL)
    return work_files.process_video(task)


def sleepy_process_video(task):
    """A decoder that hangs on one file (its name says 'hang'), else the real work."""
    if "hang" in task.entry.video_id:
        time.sleep(600)
    return work_files.process_video(task)


# ---------------------------------------------------------------------------
# A real small disk: a tmpfs (needs root; the tests skip without it)

PAGE = 4096  # tmpfs counts whole pages


def mount_tmpfs(path, size: str) -> bool:
    """Mounts a tmpfs of ``size`` (mount's syntax: '120k') at ``path``; False without root."""
    import os
    import subprocess

    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def remount(path, size: str) -> None:
    """Makes the tmpfs at ``path`` larger (or smaller), keeping its files: space freed."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def umount(path) -> None:
    import subprocess

    subprocess.run(["umount", str(path)])


def free_bytes(path) -> int:
    import os

    st = os.statvfs(str(path))
    return st.f_bavail * st.f_frsize
