"""Where a growing image file is known to be zeros: the runs the writer left as holes.

The writer (in its thread) skips all-zero blocks instead of writing them, and records each
such run here, in increasing offsets; followers of the download (in the reactor thread)
then send zeros for them instead of reading the holes back. Reading a hole of a fresh
sparse file makes the kernel allocate and zero a page-cache page per 4 KiB (the largest
cost of a follower after the send itself, bench/run B3), and fills the page cache with
zeros that nobody needs. The runs are what the writer decided, not what a file system
reports: `SEEK_HOLE` is asked only of committed files (`talos_twisted.fileholes`), never of
one still being written.

One writer thread appends and extends; readers look up with `bisect`. Each step is one
list operation under the GIL, ordered so that a reader never sees a start without its end
(`ends` is appended before `starts`, and neither list is ever replaced), and an end only
ever grows: a reader that sees an older end sends fewer zeros and reads the rest. A run
stays true for good: every byte of the file is written at most once (a re-download from
the start checks the bytes already written instead of writing them again).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterator

__all__ = ["ZeroRuns"]

MAX_RUNS = 65536  # beyond this (a pathological image), further runs are read like data


class ZeroRuns:
    def __init__(self, max_runs: int = MAX_RUNS):
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._max = max_runs

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(zip(self._starts, self._ends)))

    def add(self, start: int, end: int) -> None:
        """[start, end) is zeros; runs come in increasing order (the writer's)."""
        if end <= start:
            return
        if self._ends and self._ends[-1] == start:
            self._ends[-1] = end  # contiguous: one run grows
        elif len(self._starts) < self._max:
            if self._ends and start < self._ends[-1]:
                raise ValueError(f"zero run at {start} overlaps the last one (ends at {self._ends[-1]})")
            self._ends.append(end)  # before its start: readers index by starts
            self._starts.append(start)

    def zeros_at(self, offset: int, limit: int) -> int:
        """How many bytes from `offset` (at most up to `limit`) are known zeros; 0 if none."""
        starts = self._starts
        i = bisect_right(starts, offset) - 1
        if i < 0:
            return 0
        end = self._ends[i]
        return max(0, min(end, limit) - offset)
