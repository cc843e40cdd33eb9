"""The small lifecycle services of the daemon's tree (`tap.build` / `tap.makeService` wire them).

Each starts or stops one thing: the I/O thread pool, the cache's recovery, the running
downloads, their progress lines, the factory's HTTP connections, the start-up line.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.client import HTTPConnectionPool

from talos_twisted import __version__
from talos_twisted.cache import CacheStore
from talos_twisted.config import Config
from talos_twisted.downloads import Downloads
from talos_twisted.logs import progress_line

# Any stays where Twisted's own Service methods are unannotated: what an overridden
# stopService returns is typed Any there.

# The log namespaces are those these services had in tap.py (operators' filters may name
# them): a Logger class attribute would take this module's name, so each instance has one.


class IOPoolService(service.Service):
    """The dedicated thread pool for decompression and disk work (not the reactor's, which DNS shares)."""

    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class CacheRecoveryService(service.Service):
    def __init__(self, cache: CacheStore):
        self.cache = cache

    def startService(self) -> None:
        super().startService()
        self.cache.check_root()  # creates a missing root 0750; refuses one others may write to
        self.cache.recover()


class DownloadsService(service.Service):
    """On shutdown, abort running downloads so no temporary file outlives the process."""

    def __init__(self, downloads: Downloads):
        self.downloads = downloads

    def stopService(self) -> Deferred[list[None]]:
        super().stopService()
        return self.downloads.stop()


class ProgressService(service.Service):
    """Logs the progress of every running download every `interval` seconds."""

    def __init__(self, downloads: Downloads, interval: float, clock: IReactorTime):
        self.log = Logger(namespace="talos_twisted.tap.ProgressService", source=self)
        self.downloads = downloads
        self.interval = interval
        self.clock = clock
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._report)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    def _report(self) -> None:
        try:
            now = self.clock.seconds()
            for d in self.downloads.active():
                size = d.machine.size if d.machine.size_settled else None
                fields = progress_line(d.available, size, now - d.started)
                self.log.info("downloading {key}: {progress}", key=str(d.key), state=d.state.value, **fields)
        except Exception:  # a report must never stop the loop
            self.log.failure("progress report failed")


class HTTPPoolService(service.Service):
    def __init__(self, pool: HTTPConnectionPool):
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


class StartupLine(service.Service):
    """One line saying what this daemon is and does, once everything else has started."""

    def __init__(self, config: Config):
        self.log = Logger(namespace="talos_twisted.tap.StartupLine", source=self)
        self.config = config

    def startService(self) -> None:
        super().startService()
        t = self.config.talos
        self.log.info(
            "talos-images {version} listening on {listen}; factory {base_url}; cache {cache} "
            "(max_cache_size {max_cache_size}, min_free_space {min_free_space}); max_downloads {max_downloads}, "
            "compression {compression}",
            version=__version__.public(), listen=self.config.listen, base_url=t.base_url,
            cache=t.cache_directory, max_cache_size=t.max_cache_size or "unlimited",
            min_free_space=t.min_free_space, max_downloads=t.max_downloads, compression=t.compression,
        )
