"""The progress line: its rate and ETA start at the first finished item, not at start-up."""

import logging

from mat_effnet.common import progress


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _run(monkeypatch, caplog, finish_times, total, every=0.0):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    logger = logging.getLogger("test_progress")
    p = progress.Progress(total, every, logger)
    with caplog.at_level(logging.INFO, logger="test_progress"):
        for t in finish_times:
            clock.now = 1000.0 + t
            p.update(failed=False)
    return [r.getMessage() for r in caplog.records]


def test_start_up_does_not_count_as_the_rate(monkeypatch, caplog):
    # 60 s of start-up, then one video every 2 s: 10 videos in all.
    lines = _run(monkeypatch, caplog, [60.0 + 2.0 * i for i in range(10)], total=10)
    assert lines[0] == "1/10 videos (10%), first after 1m00s (start-up), ETA ?, 0 failed"
    # From the second video on: 0.5 videos/s, so 8 left take 16 s (not 8 x 62 s).
    assert lines[1] == "2/10 videos (20%), 0.50 videos/s, ETA 0m16s, 0 failed"
    assert lines[-1] == "10/10 videos (100%), 0.50 videos/s, ETA 0m00s, 0 failed"


def test_lines_are_spaced_and_the_last_one_always_comes(monkeypatch, caplog):
    # Every 10 s at most: at 12 s (the first), at 22 s; then not at 25 s.
    lines = _run(monkeypatch, caplog, [12.0, 14.0, 16.0, 18.0, 22.0, 25.0], total=7, every=10.0)
    assert [line.split(" ")[0] for line in lines] == ["1/7", "5/7"]
    assert lines[1] == "5/7 videos (71%), 0.40 videos/s, ETA 0m05s, 0 failed"
    lines = _run(monkeypatch, caplog, [12.0, 14.0, 15.0], total=3, every=10.0)
    assert lines[-1] == "3/3 videos (100%), 0.67 videos/s, ETA 0m00s, 0 failed"


def test_a_single_item_run_reports_its_rate(monkeypatch, caplog):
    lines = _run(monkeypatch, caplog, [4.0], total=1)
    assert lines == ["1/1 videos (100%), 0.25 videos/s, ETA 0m00s, 0 failed"]
