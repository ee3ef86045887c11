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
