"""The interface of the reactor the daemon is handed: what the service tree and downloads use of it."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime


class IDaemonReactor(IReactorTime, IReactorFromThreads):
    """What the service tree uses of the reactor: its clock (timeouts, retries, the progress
    line, the graceful stop), and results handed back from threads with callFromThread (the
    writer's progress, work done in the I/O pool, a SIGHUP). Twisted types its global reactor
    as `_IReactorCommon`, which leaves out the threads every reactor has, hence `tap.py`'s
    cast. Building the factory's Agent (`build()` with `http` None) also needs IReactorTCP and
    a name resolver, which Twisted leaves untyped there."""
