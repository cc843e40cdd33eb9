"""The effects a `Transfer` (talos_twisted.transfer) asks its adapter to carry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from talos_twisted.errors import TalosError


@dataclass(frozen=True)
class Attach:
    """Take the body of the response just opened; it starts at compressed `offset`."""

    generation: int
    offset: int


@dataclass(frozen=True)
class PauseUpstream:
    pass


@dataclass(frozen=True)
class ResumeUpstream:
    pass


@dataclass(frozen=True)
class StopUpstream:
    """Abandon the current response's body."""


@dataclass(frozen=True)
class ArmIdle:
    """Start, or restart, the idle timer."""


@dataclass(frozen=True)
class DisarmIdle:
    pass


@dataclass(frozen=True)
class Write:
    data: bytes


@dataclass(frozen=True)
class Restart:
    """Decode from byte 0 again with a new decoder, verifying the bytes already written."""


@dataclass(frozen=True)
class Finish:
    """Check the stream's integrity at its end: every byte written is then the image's."""


@dataclass(frozen=True)
class Seal:
    """Hash the file as written and make it durable (after the last byte was released)."""


@dataclass(frozen=True)
class ScheduleResume:
    delay: float
    attempt: int  # 1 for the first resume
    why: str


@dataclass(frozen=True)
class CancelResume:
    pass


@dataclass(frozen=True)
class OpenRange:
    """Resume with `Range: bytes={offset}-` where the first response was redirected."""

    offset: int


@dataclass(frozen=True)
class OpenFresh:
    """Resume by requesting the whole image again."""


@dataclass(frozen=True)
class Progress:
    available: int  # decompressed bytes readable from the temp file


@dataclass(frozen=True)
class Commit:
    size: int
    sha256: str


@dataclass(frozen=True)
class Committed:
    pass


@dataclass(frozen=True)
class Failed:
    error: TalosError


@dataclass(frozen=True)
class Discard:
    """Close the temp file and remove it: the writer thread is done with it."""


@dataclass(frozen=True)
class ReleaseSlot:
    pass


@dataclass(frozen=True)
class Settled:
    """Ended, and nothing of the download is left open: no thread holds the file."""


@dataclass(frozen=True)
class SizeKnown:
    """The raw size is known (`size`), or known not to be knowable before the end (None)."""

    size: int | None


Effect: TypeAlias = (
    Attach | PauseUpstream | ResumeUpstream | StopUpstream | ArmIdle | DisarmIdle | Write | Restart | Finish | Seal
    | ScheduleResume | CancelResume | OpenRange | OpenFresh | Progress | Commit | Committed | Failed | Discard
    | ReleaseSlot | Settled | SizeKnown
)
