"""Filling the fleet one worker at a time (``[worker] fill_cpu``, 0.5 by default; 0 turns it off).

An event loop's CPU per job falls as its load rises: calls and Redis round trips that end together
share its wake-ups and group commits. A load spread thinly over every worker therefore costs more CPU
per job than the same load carried by as few workers as it needs (bench/peers.py: 4 workers on one
40-slot provider). Each claim notes the worker's load in one hash (claim.lua), and a worker with no jobs
takes none while another worker, noted lately, has jobs and room to spare: CPU below ``fill_cpu`` of a
core and job slots free. A worker with jobs never yields (they hold provider slots; moving load back
and forth would only churn). A provider with a small limit gains most: spread over every worker, its
limit splits into shares of one or two slots, and jobs claimed beyond a worker's share go back to the
queue and come again (4 workers on a limit of 8: 0.85 deferrals per job, 2.3 CPU ms per request,
against 0.05 and 1.0 filled). Once the busy worker passes ``fill_cpu`` the next one joins, so a load
one worker cannot carry still spreads (bench/peers.py at a 2,400 and a 4,800 req/s ceiling: the
same throughput filled as spread).
"""

from __future__ import annotations

import time

CPU_SAMPLE_S = 0.25  # the worker's CPU use is sampled over at least this long...
CPU_WEIGHT = 0.3  # ...and smoothed (a moving mean over about a second): one busy moment is no trend
FRESH_MS = 1000  # how long a worker's noted load counts (a dead worker holds no one back for longer)
YIELD_POLLS = 5  # a worker that left the jobs to a busier one polls this many times slower


class Fill:
    def __init__(self, key: str | None, cpu: float) -> None:
        """``key``: the fleet's loads hash (shared/keys.py); ``cpu``: the share of a core up to which a
        busy worker takes the jobs of idle ones (0: off, every worker claims alike)."""
        self.key = key if cpu > 0 else None
        self.cpu = cpu
        self.cpu_share = 0.0  # of one core, over the last second or so
        self.yielded = False  # the last claim left the jobs to a busier worker
        self._at = (time.monotonic(), time.process_time())

    def has_room(self, jobs: int, max_jobs: int) -> bool:
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self._at[0]
        if wall >= CPU_SAMPLE_S:
            share = (cpu - self._at[1]) / wall
            self.cpu_share += CPU_WEIGHT * (share - self.cpu_share)
            self._at = (now, cpu)
        return self.cpu_share < self.cpu and jobs < max_jobs

    def claim_args(self, jobs: int, max_jobs: int) -> list[int]:
        """claim.lua's ARGV[13..15]: this worker's load, whether it has room, how long a load counts."""
        room = self.key is not None and self.has_room(jobs, max_jobs)
        return [jobs, int(room), FRESH_MS]

    def claimed(self, reply: list[bytes]) -> bool:
        """Whether the claim left the jobs to a busier worker (claim.lua's one-element reply)."""
        self.yielded = len(reply) == 1
        return self.yielded
