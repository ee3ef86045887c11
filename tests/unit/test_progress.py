"""Plain (non-terminal) batch progress lines: a line every interval, none before there is progress."""

from __future__ import annotations

import io

from producer.progress import Progress


def test_no_plain_line_at_the_start_then_one_per_interval() -> None:
    out = io.StringIO()
    p = Progress(stream=out, interval=3600.0)
    p.update(0, 0, None)  # the submission has just begun
    p.update(5, 0, None)  # within the first interval
    assert out.getvalue() == ""
    p.update(10, 1, 100, force=True)  # forced (the end): always written
    assert out.getvalue().startswith("10/100 done, 1 failed")
    p.interval = 0.0
    p.update(20, 1, 100)
    assert out.getvalue().splitlines()[-1].startswith("20/100 done, 1 failed")


def test_a_batch_done_within_the_first_interval_reports_its_rate() -> None:
    out = io.StringIO()
    p = Progress(stream=out, interval=3600.0)
    p.t0 -= 2.0  # two seconds into the run
    p.update(0, 0, None)  # submitting: nothing written yet
    p.update(1000, 0, 1000, force=True)  # the end, the only line
    line = out.getvalue().strip()
    assert line.startswith("1000/1000 done, 0 failed, ")
    rate = float(line.split(", ")[2].removesuffix("/s"))
    assert 400 < rate <= 500  # 1000 lines in about 2 s (not 0.0/s)


def test_lines_done_by_an_earlier_run_are_not_counted_in_the_rate() -> None:
    out = io.StringIO()
    p = Progress(stream=out, interval=3600.0)
    p.t0 -= 2.0
    p.update(600, 0, 1000)  # resumed: 600 lines were done before this run
    p.update(1000, 0, 1000, force=True)
    rate = float(out.getvalue().strip().split(", ")[2].removesuffix("/s"))
    assert 150 < rate <= 200  # 400 lines in about 2 s
