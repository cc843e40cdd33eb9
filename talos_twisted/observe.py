"""A one-time event that any number of callers can wait for.

Each caller gets its own Deferred: Klein cancels the Deferred of a departing client, and
that must cancel that client's wait only, never the event or the other waiters.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

_T = TypeVar("_T")


class OneShot(Generic[_T]):
    def __init__(self) -> None:
        self._waiters: list[Deferred[_T]] = []
        self._result: _T | Failure | None = None
        self.fired = False

    def fire(self, result: _T | Failure) -> None:
        """Deliver `result` (a Failure errbacks) to every waiter; later calls are ignored."""
        if self.fired:
            return
        self.fired = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:  # cancelled by its caller
                d.callback(result)  # a Failure errbacks

    def when(self) -> Deferred[_T]:
        """A new Deferred firing with the result (at once if it has fired)."""
        d: Deferred[_T] = Deferred()
        if self.fired:
            d.callback(self._result)  # type: ignore[arg-type]
        else:
            self._waiters.append(d)
        return d


async def within(event: OneShot[_T], seconds: float | None, clock: IReactorTime) -> bool:
    """Wait for `event` at most `seconds` (None: no limit); whether it fired in time.

    The event's own result (or failure) is not raised here: the caller looks at the state
    the event announced.
    """
    if event.fired:
        return True
    d = event.when()
    if seconds is not None:
        d.addTimeout(seconds, clock)
    try:
        await d
    except DeferredTimeout:
        return False
    except Exception:
        return True  # fired with a failure: it fired
    return True
