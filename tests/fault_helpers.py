"""Stubs that spawned prep processes import by name (tests/test_faults.py)."""

import time

from data_prep import work_files


def sleepy_process_video(task):
    """A decoder that hangs on one file (its name says 'hang'), else the real work."""
    if "hang" in task.entry.video_id:
        time.sleep(600)
    return work_files.process_video(task)
