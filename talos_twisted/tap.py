"""`twistd talos-images`: command-line options and the service tree (wiring only)."""

from __future__ import annotations

import os
from typing import Any

from treq.client import HTTPClient
from twisted.application import service, strports
from twisted.internet.defer import DeferredSemaphore
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from talos_twisted.cache import CacheStore
from talos_twisted.config import Config, ConfigError, load_config
from talos_twisted.download import Download, DownloadContext
from talos_twisted.downloads import Downloads
from talos_twisted.factory import FactoryClient
from talos_twisted.metastore import MetadataStore
from talos_twisted.transfer import ResumePolicy
from talos_twisted.prefetch import PrefetchService, Prefetcher
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

    def postOptions(self) -> None:
        overrides = {
            "listen": self["listen"],
            "cache_directory": self["cache-dir"],
            "base_url": self["base-url"],
            "max_cache_size": self["max-cache-size"],
        }
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

    def stopService(self) -> Any:
        super().stopService()
        self.pool.stop()


class CacheRecoveryService(service.Service):
    def __init__(self, cache: CacheStore):
        self.cache = cache

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.cache.images, exist_ok=True)
        self.cache.recover()


class DownloadsService(service.Service):
    """On shutdown, abort running downloads so no temporary file outlives the process."""

    def __init__(self, downloads: Downloads):
        self.downloads = downloads

    def stopService(self) -> Any:
        super().stopService()
        return self.downloads.stop()


class HTTPPoolService(service.Service):
    def __init__(self, pool: HTTPConnectionPool):
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


def build(config: Config, reactor: Any, http: Any = None) -> tuple[service.MultiService, TalosImages]:
    """The service tree (without a listener) and the web app, for `makeService` and tests.

    `http`: the HTTP client of the factory (a treq HTTPClient; tests pass a StubTreq).
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

    cache = CacheStore(talos.cache_directory, max_size=talos.max_cache_size, min_free=talos.min_free_space)
    CacheRecoveryService(cache).setServiceParent(top)
    factory = FactoryClient(
        http,
        talos.base_url,
        reactor,
        store=MetadataStore(os.path.join(talos.cache_directory, "meta")),
        metadata_ttl=talos.metadata_ttl,
        metadata_timeout=talos.metadata_timeout,
        build_timeout=talos.build_timeout,
    )
    ctx = DownloadContext(
        reactor=reactor, pool=io_pool, cache=cache, factory=factory, compression=talos.compression,
        idle_timeout=talos.idle_timeout, slots=DeferredSemaphore(talos.max_downloads),
        policy=ResumePolicy(window=talos.resume_window),
    )
    downloads = Downloads(lambda image: Download(image, ctx), cache, reactor)
    DownloadsService(downloads).setServiceParent(top)
    app = TalosImages(talos, factory=factory, cache=cache, downloads=downloads, clock=reactor)
    if talos.prefetch and talos.enabled:
        # after the cache's recovery and the downloads in start order, so before them at stop
        prefetcher = Prefetcher(
            talos.prefetch, resolver=app.resolver, downloads=downloads, cache=cache, clock=reactor,
            platforms=talos.platforms,
        )
        PrefetchService(prefetcher, PrefetchService.interval_for(talos.metadata_ttl), reactor).setServiceParent(top)
    return top, app


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    top, app = build(options.config, reactor)
    strports.service(options.config.listen, Site(app.resource()), reactor=reactor).setServiceParent(top)
    return top
