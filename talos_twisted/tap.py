"""`twistd talos-images`: command-line options and the service tree (wiring only).

The services wired here live in `services` (the small lifecycle ones), `reload` (SIGHUP)
and `graceful` (the listening port and the graceful stop).
"""

from __future__ import annotations

import os
import sys
from typing import cast

import twisted

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool

from talos_twisted import __version__, decompress, tracing
from talos_twisted.cache import CacheRootError, CacheStore
from talos_twisted.config import Config, ConfigError, TalosConfig, load_config
from talos_twisted.download import Download, DownloadContext
from talos_twisted.downloads import Downloads
from talos_twisted.factory import FactoryClient, FactoryHTTP
from talos_twisted.graceful import GracefulStop, Listener
from talos_twisted.metastore import MetadataStore
from talos_twisted.connlimits import ServerLimits
from talos_twisted.httpserver import make_site
from talos_twisted.prefetch import PrefetchService, Prefetcher
from talos_twisted.reactortypes import IDaemonReactor
from talos_twisted.reload import ReloadService
from talos_twisted.scrub import ScrubService
from talos_twisted.services import (
    CacheRecoveryService, DownloadsService, HTTPPoolService, IOPoolService, ProgressService, StartupLine,
)
from talos_twisted.logs import LoggingRoot, observer_for
from talos_twisted.metrics import Metrics
from talos_twisted.transfer import ResumePolicy, State
from talos_twisted.web import TalosImages


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


def build(
    config: Config, reactor: IDaemonReactor, http: FactoryHTTP | None = None
) -> tuple[service.MultiService, TalosImages]:
    """The service tree (without a listener) and the web app, for `makeService` and tests.

    `http`: the HTTP client of the factory (None: a treq HTTPClient of `reactor`; tests pass a StubTreq).
    """
    talos = config.talos
    top = service.MultiService()
    decompress.preload()

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
