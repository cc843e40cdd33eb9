"""The download state machine, without a reactor: tables of inputs and the effects they call for.

Each row is one path through a download (the paths tests/test_faults.py drives over real
sockets): a list of steps, each an input with its arguments and the exact effects expected.
"""

import random

import pytest

from talos_twisted import transfer as t
from talos_twisted.errors import StorageError, UpstreamCorrupt, UpstreamError, UpstreamFailing, Unavailable
from talos_twisted.transfer import HIGH_WATER, LOW_WATER, MAX_BATCH, State, Transfer

KiB = 1024
G1 = 1  # the generation of the first response's body


def names(effects):
    return [type(e).__name__ for e in effects]


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def machine(queued=False, window=600.0, now=None):
    # delays come from a seeded rng: the tables do not look at them, only at the effects
    return Transfer(t.ResumePolicy(window=window), random.Random(1), queued=queued, now=now or FakeTime())


def run(m, steps):
    for i, (method, args, expected) in enumerate(steps):
        got = getattr(m, method)(*args)
        assert names(got) == expected, f"step {i} {method}{args}: {names(got)} != {expected}"
    return m


HAPPY = [
    ("opened", (3 * KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body", (G1, b"b" * KiB), ["ArmIdle"]),  # the writer is busy: queued
    ("written", (4 * KiB, KiB), ["Progress", "Write"]),
    ("body", (G1, b"c" * KiB), ["ArmIdle"]),
    ("body_ended", (G1, True), ["DisarmIdle"]),  # still writing
    ("written", (8 * KiB, KiB), ["Progress", "Write"]),
    ("written", (12 * KiB, KiB), ["Progress", "Finish"]),
    # every byte is released once the stream checks out; the hash and the commit come after
    ("verified", (12 * KiB,), ["SizeKnown", "Progress", "Seal"]),  # no size was declared early
    ("sealed", ("ab" * 32,), ["Commit"]),
    ("committed", (), ["Progress", "Committed", "Settled"]),
]

# the body broke off mid-way with a Content-Length; the server does not honour Range
CUT_NO_RANGE = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, False), ["DisarmIdle", "ScheduleResume"]),
    ("body", (G1, b"late"), []),  # what the old response still delivers is ignored
    ("resume_due", (), ["OpenFresh"]),
    ("fresh_opened", (2, 4 * KiB), ["Attach", "ArmIdle"]),  # the writer is still busy
    ("written", (KiB, KiB), ["Progress", "Restart"]),  # then decode from byte 0 again, verifying
    ("written", (KiB, 0), []),
    ("body", (3, b"x" * 4 * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (3, True), ["DisarmIdle"]),
    ("written", (5 * KiB, 4 * KiB), ["Progress", "Finish"]),
    ("verified", (5 * KiB,), ["SizeKnown", "Progress", "Seal"]),
    ("sealed", ("cd" * 32,), ["Commit"]),
    ("committed", (), ["Progress", "Committed", "Settled"]),
]

# a redirect target that honours Range: resume at the compressed offset reached
CUT_WITH_RANGE = [
    ("opened", (4 * KiB, True), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, False), ["DisarmIdle", "ScheduleResume"]),
    ("resume_due", (), ["OpenRange"]),
    ("range_opened", (2, 206, KiB, 4 * KiB), ["Attach", "ArmIdle"]),
    ("body", (3, b"b" * 3 * KiB), ["ArmIdle"]),
    ("body_ended", (3, True), ["DisarmIdle"]),
    ("written", (KiB, KiB), ["Progress", "Write"]),
    ("written", (4 * KiB, 3 * KiB), ["Progress", "Finish"]),
]

# the range request was answered 200 (or another 206): download again from byte 0
RANGE_REFUSED = [
    ("opened", (4 * KiB, True), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, False), ["DisarmIdle", "ScheduleResume"]),
    ("resume_due", (), ["OpenRange"]),
    ("range_opened", (2, 200, None, None), ["OpenFresh"]),
    ("fresh_opened", (2, 4 * KiB), ["Attach", "ArmIdle"]),
]

IDLE_THEN_RESUMED = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a"), ["ArmIdle", "Write"]),
    ("idle_timeout", (120.0,), ["DisarmIdle", "StopUpstream", "ScheduleResume"]),
    ("resume_due", (), ["OpenFresh"]),
    ("fresh_opened", (2, None), ["Attach", "ArmIdle"]),
]

# a clean end before Content-Length's count is a short body: resumed like a cut
SHORT_BODY = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, True), ["DisarmIdle", "ScheduleResume"]),
]

# without a length, a clean close is the end: the decoder's end-of-stream check decides
NO_LENGTH_EOF = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("body_ended", (G1, True), ["DisarmIdle", "Finish"]),
]

RESUME_OPEN_FAILS_THEN_RETRIED = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body_ended", (G1, False), ["DisarmIdle", "ScheduleResume"]),
    ("resume_due", (), ["OpenFresh"]),
    ("resume_failed", (2, "the image factory answered 500"), ["DisarmIdle", "ScheduleResume"]),
    ("resume_failed", (2, "stale: another attempt is current"), []),
    ("resume_due", (), ["OpenFresh"]),
]

QUEUED_THEN_CANCELLED = [
    ("shutdown", (Unavailable("the server is shutting down"),), ["DisarmIdle", "Failed", "Settled"]),
    ("slot_acquired", (), ["ReleaseSlot"]),  # the slot it finally got goes back at once
]

QUEUED_THEN_RUN = [
    ("slot_acquired", (), []),
    ("opened", (KiB, False), ["Attach", "ArmIdle"]),
    ("failed", (UpstreamFailing("the image factory answered 500"),),
     ["DisarmIdle", "StopUpstream", "Failed", "ReleaseSlot", "Discard", "Settled"]),
]

FAILED_BEFORE_THE_BODY = [
    ("failed", (UpstreamFailing("the image factory answered 503"),), ["DisarmIdle", "Failed", "Settled"]),
    ("opened", (KiB, False), []),  # a response that arrives after all is not attached
]

CORRUPT = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("write_failed", (UpstreamCorrupt("the image from the image factory is corrupt"),),
     ["DisarmIdle", "StopUpstream", "Failed", "Discard", "Settled"]),
    ("body", (G1, b"more"), []),
]

DISK_FULL_WHILE_FINISHING = [
    ("opened", (KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, True), ["DisarmIdle"]),
    ("written", (KiB, KiB), ["Progress", "Finish"]),
    ("write_failed", (StorageError("cannot write to the cache: No space left on device"),),
     ["DisarmIdle", "Failed", "Discard", "Settled"]),
]

# a failure while the writer thread holds the file: the file is closed only when it is back
FAILED_WHILE_WRITING = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("shutdown", (Unavailable("the server is shutting down"),), ["DisarmIdle", "StopUpstream", "Failed"]),
    ("written", (KiB, KiB), ["Discard", "Settled"]),
]

FAILED_WHILE_RESUMING = [
    ("opened", (4 * KiB, False), ["Attach", "ArmIdle"]),
    ("body_ended", (G1, False), ["DisarmIdle", "ScheduleResume"]),
    ("shutdown", (Unavailable("the server is shutting down"),), ["DisarmIdle", "CancelResume", "Failed", "Discard", "Settled"]),
    ("resume_due", (), []),
]

COMMIT_FAILS = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("body_ended", (G1, True), ["DisarmIdle", "Finish"]),
    ("verified", (0,), ["SizeKnown", "Progress", "Seal"]),
    ("sealed", ("00" * 32,), ["Commit"]),
    ("failed", (StorageError("cannot write to the cache"),), ["DisarmIdle", "Failed", "Discard", "Settled"]),
]

# the upstream declared the raw size early (a zstd frame header, the xz index)
SIZE_DECLARED_AND_KEPT = [
    ("opened", (KiB, False), ["Attach", "ArmIdle"]),
    ("size_declared", (8 * KiB,), ["SizeKnown"]),
    ("size_declared", (9 * KiB,), []),  # once
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, True), ["DisarmIdle"]),
    ("written", (8 * KiB, KiB), ["Progress", "Finish"]),
    ("verified", (8 * KiB,), ["Progress", "Seal"]),
    ("sealed", ("ab" * 32,), ["Commit"]),
]

SIZE_CONTRADICTED_BY_MORE = [
    ("opened", (KiB, False), ["Attach", "ArmIdle"]),
    ("size_declared", (4 * KiB,), ["SizeKnown"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("written", (5 * KiB, KiB), ["DisarmIdle", "StopUpstream", "Failed", "Discard", "Settled"]),
]

SIZE_CONTRADICTED_BY_LESS = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("size_declared", (8 * KiB,), ["SizeKnown"]),
    ("body_ended", (G1, True), ["DisarmIdle", "Finish"]),
    ("verified", (7 * KiB,), ["DisarmIdle", "Failed", "Discard", "Settled"]),
]

SIZE_UNKNOWABLE_EARLY = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("size_declared", (None,), ["SizeKnown"]),
    ("body_ended", (G1, True), ["DisarmIdle", "Finish"]),
    ("verified", (7 * KiB,), ["Progress", "Seal"]),  # settled as unknown: told once, not again
]

# the hash or the fsync fails after the clients got every byte: nothing is kept
SEAL_FAILS = [
    ("opened", (KiB, False), ["Attach", "ArmIdle"]),
    ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"]),
    ("body_ended", (G1, True), ["DisarmIdle"]),
    ("written", (4 * KiB, KiB), ["Progress", "Finish"]),
    ("verified", (4 * KiB,), ["SizeKnown", "Progress", "Seal"]),
    ("write_failed", (StorageError("cannot write to the cache: Input/output error"),),
     ["DisarmIdle", "Failed", "Discard", "Settled"]),
]

# a shutdown while the writer seals: the file is closed only once the writer hands it back
SHUTDOWN_WHILE_SEALING = [
    ("opened", (None, False), ["Attach", "ArmIdle"]),
    ("body_ended", (G1, True), ["DisarmIdle", "Finish"]),
    ("verified", (0,), ["SizeKnown", "Progress", "Seal"]),
    ("shutdown", (Unavailable("the server is shutting down"),), ["DisarmIdle", "Failed"]),
    ("sealed", ("00" * 32,), ["Discard", "Settled"]),
]

TABLE = {
    "seal fails": SEAL_FAILS,
    "shutdown while sealing": SHUTDOWN_WHILE_SEALING,
    "size declared and kept": SIZE_DECLARED_AND_KEPT,
    "size contradicted: more": SIZE_CONTRADICTED_BY_MORE,
    "size contradicted: less": SIZE_CONTRADICTED_BY_LESS,
    "size not knowable before the end": SIZE_UNKNOWABLE_EARLY,
    "happy path": HAPPY,
    "cut, no Range: re-download and verify": CUT_NO_RANGE,
    "cut, Range: resume at the offset": CUT_WITH_RANGE,
    "Range not honoured on resume": RANGE_REFUSED,
    "idle timeout: stop and resume": IDLE_THEN_RESUMED,
    "short body against Content-Length": SHORT_BODY,
    "no length: clean close ends the body": NO_LENGTH_EOF,
    "resume fails, retried": RESUME_OPEN_FAILS_THEN_RETRIED,
    "queued, cancelled": QUEUED_THEN_CANCELLED,
    "queued, run, failed": QUEUED_THEN_RUN,
    "failed before the body": FAILED_BEFORE_THE_BODY,
    "corrupt data": CORRUPT,
    "disk full while finishing": DISK_FULL_WHILE_FINISHING,
    "failure while the writer holds the file": FAILED_WHILE_WRITING,
    "failure while waiting to resume": FAILED_WHILE_RESUMING,
    "commit fails": COMMIT_FAILS,
}


@pytest.mark.parametrize("name", list(TABLE))
def test_paths(name):
    m = machine(queued=name.startswith("queued"))
    run(m, TABLE[name])


def test_end_states():
    assert run(machine(), HAPPY).state == State.COMMITTED
    m = run(machine(), CORRUPT)
    assert m.state == State.FAILED and isinstance(m.error, UpstreamCorrupt)
    assert run(machine(), CUT_NO_RANGE).state == State.COMMITTED
    assert run(machine(), RESUME_OPEN_FAILS_THEN_RETRIED).state == State.RESUMING
    assert run(machine(), CUT_WITH_RANGE).state == State.FINISHING
    m = run(machine(), SEAL_FAILS[:5])
    assert m.state == State.SEALING and m.complete and m.available == 4 * KiB
    assert not run(machine(), CUT_WITH_RANGE).complete
    m = run(machine(), SEAL_FAILS)
    assert m.state == State.FAILED and m.complete  # what the clients got stays the image


def test_range_resume_asks_for_the_offset_reached():
    m = run(machine(), CUT_WITH_RANGE[:3])
    assert m.resume_due() == [t.OpenRange(KiB)]
    # a 206 of some other range is not a continuation: download again
    assert names(m.range_opened(m.generation, 206, 0, 4 * KiB)) == ["OpenFresh"]


def test_gives_up_when_the_resume_window_has_passed_without_progress():
    time = FakeTime()
    m = machine(window=600.0, now=time)
    run(m, [("opened", (4 * KiB, False), ["Attach", "ArmIdle"]), ("body", (G1, b"a" * KiB), ["ArmIdle", "Write"])])
    m.written(KiB, KiB)
    for attempt in (1, 2, 3):
        effects = m.body_ended(m.generation, False)
        assert names(effects) == ["DisarmIdle", "ScheduleResume"] and effects[1].attempt == attempt
        time.now += 250  # a re-download that never gets past the byte reached before
        m.resume_due()
        assert names(m.fresh_opened(m.generation, 4 * KiB)) == ["Attach", "ArmIdle", "Restart"]
        assert m.written(KiB, 0) == []
        m.body(m.generation, b"a" * 512)  # replayed bytes, no progress
        m.written(KiB, 512)
    effects = m.body_ended(m.generation, False)
    assert names(effects) == ["DisarmIdle", "Failed", "Discard", "Settled"]
    error = effects[1].error
    assert isinstance(error, UpstreamError) and error.status == 502
    assert "gave up after 3 resumed attempts over 750s (resume_window 600s)" in error.message


def test_progress_after_a_resume_opens_a_new_window():
    time = FakeTime()
    m = machine(window=600.0, now=time)
    m.opened(None, False)
    m.body(m.generation, b"a" * KiB)
    for _ in range(5):  # an upstream that breaks off often, but always gets further
        effects = m.body_ended(m.generation, False)
        assert names(effects)[-1] == "ScheduleResume"
        reached = m.received
        time.now += 500
        m.resume_due()
        m.fresh_opened(m.generation, None)
        m.written(m.available, 0)
        m.body(m.generation, b"b" * (reached + KiB))  # past the byte reached before
    assert m.state == State.STREAMING


def test_backpressure_pauses_above_high_water_and_resumes_below_low_water():
    m = machine()
    m.opened(None, False)
    first = m.body(G1, b"a" * KiB)
    assert names(first) == ["ArmIdle", "Write"]
    piece = b"b" * (512 * KiB)
    effects = []
    while "PauseUpstream" not in names(effects):
        effects = m.body(G1, piece)
    assert names(effects) == ["ArmIdle", "PauseUpstream"]
    assert names(m.body(G1, piece)) == ["ArmIdle"], "pausing is idempotent"
    # the writer drains the queue one batch (at most MAX_BATCH) at a time
    written = KiB
    resumed = False
    while not resumed:
        effects = m.written(written, written)
        resumed = "ResumeUpstream" in names(effects)
        writes = [e for e in effects if isinstance(e, t.Write)]
        assert len(writes) == 1 and len(writes[0].data) <= MAX_BATCH + len(piece)
        written = len(writes[0].data)
    assert m._queued < LOW_WATER < HIGH_WATER


def test_batches_end_at_a_restart_mark():
    m = run(machine(), CUT_NO_RANGE[:6])  # a restart is queued behind the busy writer
    assert names(m.body(m.generation, b"new")) == ["ArmIdle"]
    assert names(m.written(KiB, KiB)) == ["Progress", "Restart"]
    effects = m.written(KiB, 0)
    assert effects == [t.Write(b"new")], "the bytes after the mark go to the new decoder"


def test_a_contradicted_size_is_a_size_mismatch():
    m = run(machine(), SIZE_CONTRADICTED_BY_LESS)
    assert isinstance(m.error, t.SizeMismatch) and m.error.status == 502
    assert m.error.message == "the image factory declared a raw size of 8192 bytes, but the image holds 7168 bytes"


def test_progress_only_moves_forward_and_not_after_the_end():
    m = machine()
    m.opened(None, False)
    assert m.progress(10) == [t.Progress(10)]
    assert m.progress(5) == [] and m.progress(10) == []
    m.failed(UpstreamFailing("down"))
    assert m.progress(20) == []
