"""bench.recovery reads a worker's recovery from its log: the bulk restore and Faust's."""

from __future__ import annotations

from pathlib import Path

from bench.recovery import read_worker_log

LOG = """\
[2026-12-07 15:20:00,000] [1] [INFO] Setting newly assigned partitions {...}
[2026-12-07 15:20:01,000] [1] [INFO] Bulk restore of app-customers-changelog partitions [0, 1] starts
[2026-12-07 15:20:21,000] [1] [INFO] Restored 600 records of app-customers-changelog partitions [0, 1] in 20.0 s (30 records/s)
[2026-12-07 15:20:31,500] [1] [INFO] Restored 400 records of app-stats-changelog partitions [0, 1] in 10.0 s (40 records/s)
[2026-12-07 15:20:32,000] [1] [INFO] Worker ready
"""  # noqa: E501


def test_the_bulk_restore_is_the_reading_window(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    path.write_text(LOG)
    log = read_worker_log(path)
    assert log.records_to_read() == 1_000
    window = log.reading_window()
    assert window is not None
    start, end = window
    assert end - start == 30.5
    assert log.times["ready"] - log.times["assigned"] == 32.0
