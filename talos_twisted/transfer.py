"""The decisions of one download, without I/O: a state machine of inputs and effects.

`Transfer` is told what happened (a response opened, body bytes, the end of the body, a
batch written, a timeout, a failure...) and answers with the effects to carry out (pause
or resume the upstream, write a batch, schedule a resume, commit, fail). It never touches
a socket, a file, a thread or a clock: `talos_twisted.download` is the thin adapter that
carries the effects out and feeds their results back. Every path can therefore be tested
by a table of inputs and expected effects (`tests/test_transfer.py`).

Bodies are tagged with the attempt (`generation`) they belong to: whatever an abandoned
response still delivers after a resume is ignored.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from talos_twisted.backoff import full_jitter
from talos_twisted.errors import TalosError, UpstreamCorrupt, UpstreamError
from talos_twisted.effects import (  # noqa: F401 - the effects are part of this module's interface
    Attach, PauseUpstream, ResumeUpstream, StopUpstream, ArmIdle, DisarmIdle, Write, Restart, Finish, Seal, ScheduleResume, CancelResume, OpenRange, OpenFresh, Progress, Commit, Committed, Failed, Discard, ReleaseSlot, Settled, SizeKnown, Effect,
)

HIGH_WATER = 4 * 1024 * 1024  # queued upstream bytes before the upstream is paused
LOW_WATER = 1 * 1024 * 1024  # ... and resumed
MAX_BATCH = 1 * 1024 * 1024  # bytes handed to the writer thread at once


class State(Enum):
    QUEUED = "queued"  # waiting for a download slot (max_downloads)
    CONNECTING = "connecting"  # schematic, request sent, the factory builds
    STREAMING = "streaming"  # the body arrives
    RESUMING = "resuming"  # the body broke off: waiting for, or opening, a resume
    FINISHING = "finishing"  # the whole body arrived: the writer drains and checks the stream's end
    SEALING = "sealing"  # the image is verified and wholly readable: the writer hashes and syncs it
    COMMITTED = "committed"
    FAILED = "failed"


ENDED = (State.COMMITTED, State.FAILED)


class SizeMismatch(UpstreamCorrupt):
    """The body contradicts the raw size the upstream declared (several zstd frames?)."""


class _RestartMark:
    """In the queue: the bytes after this belong to a new download from byte 0."""


_RESTART = _RestartMark()


# --- policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePolicy:
    """How long a broken body is resumed, and how long to wait between attempts.

    The window counts from the first failure that made no progress since: a factory that
    is down for minutes is ridden out, one that breaks off at the same byte for ever is not.
    """

    window: float = 600.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return full_jitter(attempt, self.base_delay, self.max_delay, rng)


# --- the machine ------------------------------------------------------------------------


class Transfer:
    def __init__(
        self,
        policy: ResumePolicy = ResumePolicy(),
        rng: random.Random | None = None,
        queued: bool = False,
        now: Callable[[], float] = lambda: 0.0,
    ):
        self.policy = policy
        self._rng = rng or random.Random()
        self._now = now  # time, injected: the machine keeps no clock of its own
        self.state = State.QUEUED if queued else State.CONNECTING
        self.error: TalosError | None = None
        self.generation = 0  # the attempt whose body is current
        self.received = 0  # compressed offset reached
        self.available = 0  # decompressed bytes written
        self.resumes = 0
        self._expected_end: int | None = None
        self._range_resumable = False
        self._queue: deque[bytes | _RestartMark] = deque()
        self._queued = 0
        self._writer_busy = False
        self._paused = False
        self._eof = False  # the current body ended cleanly
        self._holding_slot = False
        self._has_file = False  # a temp file exists (after the first response)
        self.size: int | None = None  # the raw size the upstream declared
        self.size_settled = False  # whether `size` is as known as it will be before the end
        self.complete = False  # the stream's end checks passed: every byte written is the image's
        self._why = ""  # what interrupted the body last
        self._failing_since: float | None = None  # the first failure without progress since
        self._progress_mark = 0  # the compressed offset reached before that failure

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    # --- inputs: the slot and the first response -------------------------------------

    def slot_acquired(self) -> list[Effect]:
        if self.ended:
            return [ReleaseSlot()]  # cancelled while queued
        self._holding_slot = True
        self.state = State.CONNECTING
        return []

    def opened(self, length: int | None, accepts_ranges: bool) -> list[Effect]:
        """The first response (200) arrived and its temp file is open."""
        if self.ended:
            return []
        self._has_file = True
        self._range_resumable = accepts_ranges and length is not None
        return self._attach(0, length)

    def _attach(self, offset: int, length: int | None) -> list[Effect]:
        self.generation += 1
        self.state = State.STREAMING
        self._paused = False
        self._eof = False
        self.received = offset
        self._expected_end = None if length is None else offset + length
        return [Attach(self.generation, offset), ArmIdle()]

    # --- inputs: the body ------------------------------------------------------------

    def body(self, generation: int, data: bytes) -> list[Effect]:
        if self.ended or generation != self.generation or self.state != State.STREAMING:
            return []
        self.received += len(data)
        if self._failing_since is not None and self.received > self._progress_mark:
            self._failing_since = None  # the factory is back: a later failure opens a new window
        self._queue.append(data)
        self._queued += len(data)
        effects: list[Effect] = [ArmIdle()]
        if self._queued > HIGH_WATER and not self._paused:
            self._paused = True
            effects.append(PauseUpstream())
        return effects + self._pump()

    def body_ended(self, generation: int, clean: bool) -> list[Effect]:
        """The body's connection closed; `clean` if it ended as a complete response."""
        if self.ended or generation != self.generation or self.state != State.STREAMING:
            return []
        if clean and (self._expected_end is None or self.received == self._expected_end):
            # without a length, the decoder's own end-of-stream check tells truncation
            self._eof = True
            self.state = State.FINISHING
            return [DisarmIdle()] + self._pump()
        if self._expected_end is not None:
            why = f"the image factory sent {self.received} of {self._expected_end} bytes"
        else:
            why = f"the download from the image factory broke off after {self.received} bytes"
        return self._interrupted(why, stop=False)

    def idle_timeout(self, seconds: float) -> list[Effect]:
        if self.state != State.STREAMING:
            return []
        return self._interrupted(f"the image factory sent no data for {seconds:g}s mid-download", stop=True)

    # --- inputs: resuming --------------------------------------------------------------

    def _interrupted(self, why: str, stop: bool, cause: str | None = None) -> list[Effect]:
        """`cause`: what broke the body off, when `why` is a resume's failure on top of it."""
        self.generation += 1  # whatever the old response still delivers is ignored
        effects: list[Effect] = [StopUpstream()] if stop else []
        now = self._now()
        if self._failing_since is None:
            self._failing_since = now
            self._progress_mark = max(self._progress_mark, self.received)
        elif now - self._failing_since >= self.policy.window:
            error = UpstreamError(
                f"{why}; gave up after {self.resumes} resumed attempts over {now - self._failing_since:.0f}s"
                f" (resume_window {self.policy.window:g}s)"
            )
            return effects + self._fail(error, stop_upstream=False)
        delay = self.policy.delay(self.resumes, self._rng)
        self.resumes += 1
        # the interruption itself, not each resume's failure on top of it: the message of the
        # next failed resume (and of the final error) stays one cause and one failure long
        self._why = why if cause is None else cause
        self.state = State.RESUMING
        return [DisarmIdle()] + effects + [ScheduleResume(delay, self.resumes, why)]

    def resume_due(self) -> list[Effect]:
        if self.state != State.RESUMING:
            return []
        if self._range_resumable and self.received > 0:
            return [OpenRange(self.received)]
        return [OpenFresh()]

    def range_opened(self, generation: int, status: int, start: int | None, total: int | None) -> list[Effect]:
        """The answer to `OpenRange`: a 206 from `start` of a body of `total` bytes, or not."""
        if self.state != State.RESUMING or generation != self.generation:
            return []
        if status == 206 and start == self.received and total == self._expected_end and total is not None:
            return self._attach(self.received, total - self.received)
        return [OpenFresh()]  # the range was not honoured after all: download again

    def fresh_opened(self, generation: int, length: int | None) -> list[Effect]:
        """The answer to `OpenFresh` (a 200): the bytes already written are decoded again."""
        if self.state != State.RESUMING or generation != self.generation:
            return []
        self._queue.append(_RESTART)
        return self._attach(0, length) + self._pump()

    def resume_failed(self, generation: int, message: str) -> list[Effect]:
        if self.state != State.RESUMING or generation != self.generation:
            return []
        return self._interrupted(f"{self._why}; resuming failed: {message}", stop=False, cause=self._why)

    # --- inputs: the size ------------------------------------------------------------------

    def size_declared(self, size: int | None) -> list[Effect]:
        """The upstream declared the raw size (a zstd frame header, the xz index, a raw
        body's length), or said it cannot be known before the end (None)."""
        if self.ended or self.size_settled:
            return []
        self.size_settled = True
        self.size = size
        if size is not None and self.available > size:
            return self._contradicted(self.available)
        return [SizeKnown(size)]

    def _contradicted(self, actual: int) -> list[Effect]:
        return self._fail(SizeMismatch(
            f"the image factory declared a raw size of {self.size} bytes, but the image holds"
            f" {'more' if actual > (self.size or 0) else actual} bytes"
        ))

    # --- inputs: the writer --------------------------------------------------------------

    def progress(self, available: int) -> list[Effect]:
        """The writer reports, mid-batch, that more bytes are readable."""
        if available <= self.available or self.ended:
            return []
        if self.size is not None and available > self.size:
            return self._contradicted(available)
        self.available = available
        return [Progress(available)]

    def written(self, available: int, size: int) -> list[Effect]:
        """A batch of `size` compressed bytes (0 for a restart) was written."""
        self._writer_busy = False
        self._queued -= size
        if self.ended:
            return self._settle_failed()
        effects: list[Effect] = []
        if self._paused and self._queued < LOW_WATER:
            self._paused = False
            effects.append(ResumeUpstream())
        if self.size is not None and available > self.size:
            return effects + self._contradicted(available)
        if available > self.available:
            self.available = available
            effects.append(Progress(available))
        return effects + self._pump()

    def verified(self, size: int) -> list[Effect]:
        """The writer drained the queue and the stream's end checks passed.

        Every byte is released to the clients now, before the hash and the fsync: those
        are the cache's business (what it keeps), not the clients' (what they receive), and
        the image's own checks have already vouched for the bytes."""
        self._writer_busy = False
        if self.ended:
            return self._settle_failed()
        if self.size is not None and size != self.size:
            return self._contradicted(size)
        self.available = size
        effects: list[Effect] = [] if self.size_settled else [SizeKnown(size)]
        self.size, self.size_settled = size, True
        self.complete = True
        self.state = State.SEALING
        self._writer_busy = True
        return effects + [Progress(size), Seal()]

    def sealed(self, sha256: str) -> list[Effect]:
        """The writer hashed the file and synced it."""
        self._writer_busy = False
        if self.ended:
            return self._settle_failed()
        assert self.size is not None
        return [Commit(self.size, sha256)]

    def committed(self) -> list[Effect]:
        if self.ended:
            return []
        self.state = State.COMMITTED
        effects: list[Effect] = [Progress(self.available), Committed()]
        return effects + self._release() + [Settled()]

    def write_failed(self, error: TalosError) -> list[Effect]:
        self._writer_busy = False
        if self.ended:
            return self._settle_failed()
        return self._fail(error)

    # --- inputs: anything else -----------------------------------------------------------

    def failed(self, error: TalosError) -> list[Effect]:
        """A failure outside the body: opening, the schematic, the temp file, the commit."""
        if self.ended:
            return []
        return self._fail(error)

    def shutdown(self, error: TalosError) -> list[Effect]:
        return self.failed(error)

    # --- internals -----------------------------------------------------------------------

    def _pump(self) -> list[Effect]:
        if self._writer_busy or self.ended:
            return []
        if self._queue and isinstance(self._queue[0], _RestartMark):
            self._queue.popleft()
            self._writer_busy = True
            return [Restart()]
        if self._queue:
            parts: list[bytes] = []
            size = 0
            while self._queue and size < MAX_BATCH:
                part = self._queue[0]
                if isinstance(part, _RestartMark):
                    break  # a batch ends at a restart mark
                self._queue.popleft()
                parts.append(part)
                size += len(part)
            self._writer_busy = True
            return [Write(b"".join(parts))]
        if self._eof:
            self._writer_busy = True
            return [Finish()]
        return []

    def _fail(self, error: TalosError, stop_upstream: bool = True) -> list[Effect]:
        was = self.state
        self.state = State.FAILED
        self.error = error
        self._queue.clear()
        self._queued = 0
        effects: list[Effect] = [DisarmIdle()]
        if was == State.RESUMING:
            effects.append(CancelResume())
        if was == State.STREAMING and stop_upstream:
            effects.append(StopUpstream())
        effects.append(Failed(error))
        effects += self._release()
        if not self._writer_busy:
            effects += self._settle_failed()
        return effects

    def _settle_failed(self) -> list[Effect]:
        # the writer thread has handed the file back: only now may it be closed
        effects: list[Effect] = [Discard()] if self._has_file else []
        return effects + [Settled()]

    def _release(self) -> list[Effect]:
        if not self._holding_slot:
            return []
        self._holding_slot = False
        return [ReleaseSlot()]


__all__ = [
    "Transfer", "State", "ENDED", "ResumePolicy", "SizeMismatch", "HIGH_WATER", "LOW_WATER", "MAX_BATCH",
    "Attach",
    "PauseUpstream",
    "ResumeUpstream",
    "StopUpstream",
    "ArmIdle",
    "DisarmIdle",
    "Write",
    "Restart",
    "Finish",
    "Seal",
    "ScheduleResume",
    "CancelResume",
    "OpenRange",
    "OpenFresh",
    "Progress",
    "Commit",
    "Committed",
    "Failed",
    "Discard",
    "ReleaseSlot",
    "Settled",
    "SizeKnown",
    "Effect",
]
