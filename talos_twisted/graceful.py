"""The listening port and the graceful stop (`SIGTERM`) of the daemon's tree.

`Listener` binds the port early (`tap.makeService`, before twistd logs or daemonizes);
`GracefulStop` closes it first on stop, then gives running downloads and the clients
being served `shutdown_grace` to finish before the tree below is stopped.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from talos_twisted.downloads import Downloads
from talos_twisted.httpserver import LimitedChannel, LimitedSite

# Any stays where Twisted's own Service methods are unannotated: what MultiService.stopService
# returns (a DeferredList) is typed Any there.


class Listener(service.Service):
    """The listening port, bound by `makeService` before twistd logs or daemonizes, so that
    a port in use or a bad address stops start-up with one line and no half-started daemon."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, description: str):
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: IListeningPort | None = None

    def listen_now(self) -> None:
        failures: list[Failure] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(lambda port: setattr(self, "port", port), failures.append)
        if failures:
            raise SystemExit(f"talos-images: cannot listen on {self.description}: {failures[0].getErrorMessage()}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:  # not bound by makeService (tests building the tree by hand)
            self.listen_now()

    def stop_listening(self) -> Deferred[None] | None:
        """Close the port (once): new connections are refused, open ones go on."""
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.stop_listening()


class GracefulStop(service.MultiService):
    """The daemon's tree, stopped gracefully (`SIGTERM`): first the port is closed, then the
    running downloads and the clients being served get up to `grace` seconds to finish, and
    only then is the tree below stopped, which cancels the downloads still running (their
    temporary files removed) and drops what is left. `grace` 0: cancel at once.

    Twisted stops a MultiService's children all at once; this holds them back until the
    drain is over (twistd's 'before shutdown' trigger waits for the Deferred)."""

    poll_interval = 0.1  # how often open client connections are looked at while draining

    def __init__(self, listener: Listener, downloads: Downloads, grace: float, clock: IReactorTime):
        super().__init__()
        # the namespace it had in tap.py (operators' filters may name it); a Logger class
        # attribute would take this module's name
        self.log = Logger(namespace="talos_twisted.tap.GracefulStop", source=self)
        self.listener = listener
        self.downloads = downloads
        self.grace = grace
        self.clock = clock

    def stopService(self) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> Any:
        await maybeDeferred(self.listener.stop_listening)
        if self.grace > 0:
            await self._drain()
        return await service.MultiService.stopService(self)

    def _channels(self) -> set[LimitedChannel]:
        site = self.listener.factory
        return site.channels if isinstance(site, LimitedSite) else set()

    def _close_idle(self, channels: set[LimitedChannel], closed: set[LimitedChannel]) -> None:
        """Connections between requests are closed; those with a request close after it."""
        for channel in list(channels):
            if channel in closed:
                continue
            if channel.requests:
                channel.persistent = False  # the answer may set it again: looked at every poll
            elif channel.transport is not None:
                closed.add(channel)
                channel.transport.loseConnection()

    async def _drain(self) -> None:
        self.downloads.closing = True  # a request on an open connection starts no new download
        channels = self._channels()
        closed: set[LimitedChannel] = set()
        self._close_idle(channels, closed)
        running = self.downloads.active()
        serving = sum(1 for c in channels if c.requests)
        if not self.downloads.settling() and not channels:
            return
        self.log.info(
            "shutting down: waiting up to {grace}s for {count} downloads and {clients} clients being served",
            grace=f"{self.grace:g}", count=len(running), clients=serving, keys=[str(d.key) for d in running],
        )
        start = self.clock.seconds()
        deadline = start + self.grace
        while self.downloads.settling() or channels:
            left = deadline - self.clock.seconds()
            if left <= 0:
                self.log.info(
                    "shutting down: the grace of {grace}s is over; {count} downloads and {clients} client "
                    "connections are cut",
                    grace=f"{self.grace:g}", count=len(self.downloads.active()), clients=len(channels),
                )
                return
            await deferLater(self.clock, min(self.poll_interval, left), lambda: None)
            self._close_idle(channels, closed)
        self.log.info(
            "shutting down: every transfer finished in {seconds}s", seconds=round(self.clock.seconds() - start, 3)
        )
