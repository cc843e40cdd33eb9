"""`twistd talos-images`: command-line options and the service tree (wiring only)."""

from __future__ import annotations

import os
import sys
from dataclasses import fields, replace
from types import FrameType
from typing import Any, cast

import twisted

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort, IProtocolFactory, IReactorFromThreads, IReactorTime, IStreamServerEndpoint,
)
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.logger import Logger

from talos_twisted import __version__, tracing
from talos_twisted.cache import CacheRootError, CacheStore
from talos_twisted.config import Config, ConfigError, TalosConfig, load_config
from talos_twisted.download import Download, DownloadContext
from talos_twisted.downloads import Downloads
from talos_twisted.factory import FactoryClient, FactoryHTTP
from talos_twisted.metastore import MetadataStore
from talos_twisted.connlimits import ServerLimits
from talos_twisted.httpserver import LimitedChannel, LimitedSite, make_site
from talos_twisted.prefetch import PrefetchService, Prefetcher
from talos_twisted.reactortypes import IDaemonReactor
from talos_twisted.scrub import ScrubService
from talos_twisted.logs import LoggingRoot, observer_for, progress_line
from talos_twisted.metrics import Metrics
from talos_twisted.transfer import ResumePolicy, State
from talos_twisted.web import TalosImages

# Any stays where Twisted's own Service methods are unannotated: what an overridden
# stopService returns (and MultiService.stopService's DeferredList) is typed Any there.


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Serve raw Talos Linux disk images built by the Talos Image Factory, from a local cache."
    optParameters = [
        ["config", "c", None, "YAML configuration file (see conf/talos-images.yaml)"],
        ["listen", "l", None, "Twisted endpoint string to listen on [default: tcp:8080]"],
        ["cache-dir", None, None, "cache directory [default: ${XDG_CACHE_HOME:-~/.cache}/talos-images]"],
        ["base-url", None, None, "image factory URL [default: https://factory.talos.dev]"],
        ["max-cache-size", None, None, "cache size limit, e.g. 20GiB; 0 = unlimited [default: 0]"],
    ]

    config: Config

    def opt_version(self) -> None:
        """Print the daemon's version and exit."""
        print(f"talos-images {__version__.public()} (Twisted {twisted.__version__})")
        sys.exit(0)

    def postOptions(self) -> None:
        overrides = {
            "listen": self["listen"],
            "cache_directory": self["cache-dir"],
            "base_url": self["base-url"],
            "max_cache_size": self["max-cache-size"],
        }
        self.overrides = overrides  # kept: a SIGHUP reloads with the same command line
        try:
            self.config = load_config(self["config"], os.environ, overrides)
        except ConfigError as e:
            # one line, no usage text and no traceback: the operator needs the key and the fault
            raise SystemExit(f"talos-images: configuration error: {e}") from None


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

    log = Logger()

    def __init__(self, downloads: Downloads, interval: float, clock: IReactorTime):
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


def build(
    config: Config, reactor: IDaemonReactor, http: FactoryHTTP | None = None
) -> tuple[service.MultiService, TalosImages]:
    """The service tree (without a listener) and the web app, for `makeService` and tests.

    `http`: the HTTP client of the factory (None: a treq HTTPClient of `reactor`; tests pass a StubTreq).
    """
    talos = config.talos
    top = service.MultiService()

    io_pool = ThreadPool(minthreads=1, maxthreads=max(2, talos.max_downloads), name="talos-io")
    IOPoolService(io_pool).setServiceParent(top)

    if http is None:
        http_pool = HTTPConnectionPool(reactor, persistent=True)
        http_pool.maxPersistentPerHost = 4
        HTTPPoolService(http_pool).setServiceParent(top)
        http = HTTPClient(Agent(reactor, connectTimeout=talos.connect_timeout, pool=http_pool))

    downloads_box: list[Downloads] = []  # the registry is made below; the gauges read it later

    def active() -> list[Download]:
        return downloads_box[0].active() if downloads_box else []

    metrics = Metrics(
        cache_bytes=lambda: cache.total_usage,
        cache_entries=lambda: len(cache.entries()),
        downloads_queued=lambda: sum(d.state is State.QUEUED for d in active()),
        downloads_running=lambda: sum(d.state is not State.QUEUED for d in active()),
        download_followers=lambda: sum(d.followers for d in active()),
    )
    cache = CacheStore(talos.cache_directory, max_size=talos.max_cache_size, min_free=talos.min_free_space)
    cache.on_evict = metrics.eviction
    CacheRecoveryService(cache).setServiceParent(top)
    factory = FactoryClient(
        http,
        talos.base_url,
        reactor,
        store=MetadataStore(os.path.join(talos.cache_directory, "meta")),
        metadata_ttl=talos.metadata_ttl,
        metadata_timeout=talos.metadata_timeout,
        build_timeout=talos.build_timeout,
        metrics=metrics,
    )
    ctx = DownloadContext(
        reactor=reactor, pool=io_pool, cache=cache, factory=factory, compression=talos.compression,
        idle_timeout=talos.idle_timeout, slots=DeferredSemaphore(talos.max_downloads),
        policy=ResumePolicy(window=talos.resume_window), metrics=metrics,
    )
    downloads = Downloads(lambda image: Download(image, ctx), cache, reactor)
    downloads_box.append(downloads)
    DownloadsService(downloads).setServiceParent(top)
    ProgressService(downloads, talos.progress_interval, reactor).setServiceParent(top)
    scrub = None
    if talos.scrub_rate:
        # after the cache's recovery in start order; hashes in the I/O pool at scrub_rate
        scrub = ScrubService(cache, talos.scrub_rate, reactor, io_pool)
        scrub.setServiceParent(top)
    metrics.scrub = scrub
    app = TalosImages(
        talos, factory=factory, cache=cache, downloads=downloads, clock=reactor, scrub=scrub, metrics=metrics
    )
    if talos.enabled:
        # after the cache's recovery and the downloads in start order, so before them at stop;
        # there even with an empty list, so that a reload can fill it
        prefetcher = Prefetcher(
            talos.prefetch, resolver=app.resolver, downloads=downloads, cache=cache, clock=reactor,
            platforms=talos.platforms,
        )
        app.prefetch = PrefetchService(prefetcher, PrefetchService.interval_for(talos.metadata_ttl), reactor)
        app.prefetch.setServiceParent(top)
    return top, app


# what a reload applies; the others need a restart (logged as such)
RELOADABLE = frozenset({
    "prefetch", "profiles", "default_extensions", "enabled", "platforms", "first_byte_timeout", "checksum_wait",
    "client_stall_timeout", "max_ranges", "progress_interval",
})


class ReloadService(service.Service):
    """SIGHUP: read the configuration again, apply what can change safely, log what changed."""

    log = Logger()

    def __init__(
        self, app: TalosImages, path: str | None, overrides: dict[str, str | None], reactor: IReactorFromThreads
    ):
        self.app = app
        self.path = path
        self.overrides = overrides
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        import signal

        def handler(signum: int, frame: FrameType | None) -> None:
            self.reactor.callFromThread(self.reload)

        # at once, not when the reactor runs: twistd starts the services (and logs "listening
        # on") before it runs the reactor, and a SIGHUP in between would kill the daemon
        # (SIGHUP's default action); the reload itself waits for the reactor
        signal.signal(signal.SIGHUP, handler)

    def reload(self) -> None:
        try:
            new = load_config(self.path, os.environ, self.overrides).talos
        except ConfigError as e:
            self.log.error("reload refused, the configuration in use stays: {error}", error=str(e))
            return
        old = self.app.config
        changed = [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]
        applied = [k for k in changed if k in RELOADABLE]
        later = [k for k in changed if k not in RELOADABLE]
        kept = {k: getattr(old, k) for k in later}
        self.app.config = replace(new, **kept)  # what needs a restart keeps its running value
        self.app.resolver.set_default_extensions(self.app.config.default_extensions)
        prefetch = getattr(self.app, "prefetch", None)
        if prefetch is not None and "prefetch" in applied:
            prefetch.prefetcher.items = self.app.config.prefetch
            prefetch.run_now()
        self.log.info(
            "configuration reloaded: {applied} applied; {later} need a restart",
            applied=", ".join(applied) or "nothing", later=", ".join(later) or "nothing",
            changed=changed,
        )


def server_limits(talos: TalosConfig) -> ServerLimits:
    return ServerLimits(
        request_header_timeout=talos.request_header_timeout,
        request_body_timeout=talos.request_body_timeout,
        idle_timeout=talos.keepalive_timeout,
        max_connections=talos.max_connections,
        max_connections_per_client=talos.max_connections_per_client,
        max_request_line=talos.max_request_line,
        max_header_size=talos.max_header_size,
        max_headers=talos.max_headers,
        max_post_body=talos.max_post_body,
    )


class StartupLine(service.Service):
    """One line saying what this daemon is and does, once everything else has started."""

    log = Logger()

    def __init__(self, config: Config):
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

    log = Logger()
    poll_interval = 0.1  # how often open client connections are looked at while draining

    def __init__(self, listener: Listener, downloads: Downloads, grace: float, clock: IReactorTime):
        super().__init__()
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


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor as global_reactor

    # typed by Twisted as its _IReactorCommon, which leaves out the threads every reactor has
    reactor = cast(IDaemonReactor, global_reactor)

    config = options.config
    # what would only fail once the reactor runs is checked now, so that a daemon that
    # cannot work never starts: one line, exit status 1, no traceback
    try:
        CacheStore(config.talos.cache_directory).check_root()
    except (CacheRootError, OSError) as e:
        raise SystemExit(f"talos-images: cache directory: {e}") from None
    try:
        endpoint = serverFromString(reactor, config.listen)
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"talos-images: listen: {config.listen!r} is not a usable endpoint ({e})") from None
    tracing.install_from_environment()  # OTEL_TRACES_EXPORTER, with the otel extra installed
    top, app = build(config, reactor)
    ReloadService(app, options["config"], options.overrides, reactor).setServiceParent(top)
    site = make_site(app.resource(), server_limits(config.talos), reactor, metrics=app.metrics)
    listener = Listener(endpoint, site, config.listen)
    listener.listen_now()
    listener.setServiceParent(top)
    StartupLine(config).setServiceParent(top)
    graceful = GracefulStop(listener, app.downloads, config.talos.shutdown_grace, reactor)
    top.setServiceParent(graceful)
    # log_format: json gives twistd's Application the JSON observer (`--logger` still wins)
    root = LoggingRoot(observer_for(config.talos.log_format))
    graceful.setServiceParent(root)
    return root
