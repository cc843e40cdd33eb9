"""The treq client of the Talos Image Factory API.

Metadata (versions, catalogs) is memoised for a TTL, fetched once however many requests
ask at the same time, persisted, and served stale when the factory fails. Image downloads
are opened unbuffered so that the caller can pace the body.
"""

from __future__ import annotations

import json
import random
from urllib.parse import urlsplit
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Protocol as TypingProtocol, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from talos_twisted import tracing
from talos_twisted.backoff import Backoff
from talos_twisted.catalog import Catalog
from talos_twisted.errors import UpstreamError, UpstreamNotFound, UpstreamTimeout
from talos_twisted.factory_errors import as_talos_error, status_error
from talos_twisted.factory_paths import content_range
from talos_twisted.metastore import MetadataStore
from talos_twisted.metrics import Metrics, error_kind
from talos_twisted.observe import OneShot
from talos_twisted.schematic import Schematic

if TYPE_CHECKING:
    # treq's own annotation of HTTPClient.get/post (the class is not exported under a public name)
    from treq.response import _Response

_T = TypeVar("_T")

# metadata and image requests: a few attempts, quickly
RetryPolicy = Backoff


class _Discard(Protocol):
    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


class FactoryHTTP(TypingProtocol):
    """What `FactoryClient` calls of its HTTP client: a `treq.client.HTTPClient`, a
    `treq.testing.StubTreq` in tests, or `tracing.traced_http`'s wrapper of either. The
    keywords are treq's (`headers`, `data`, `timeout`, `unbuffered`, `reactor`, ...): not
    spelled out, since treq types `reactor` as more than the IReactorTime it needs here."""

    def get(self, url: str, *args: Any, **kwargs: Any) -> Deferred[_Response]: ...
    def post(self, url: str, *args: Any, **kwargs: Any) -> Deferred[_Response]: ...


class FactoryClient:
    log = Logger()

    def __init__(
        self,
        http: FactoryHTTP,  # injected
        base_url: str,
        clock: IReactorTime,
        store: MetadataStore | None = None,
        metadata_ttl: float = 900.0,
        metadata_timeout: float = 30.0,
        build_timeout: float = 1260.0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ):
        self._http = tracing.traced_http(http, self._kind_of_url, self._outcome)  # a span per call
        self._metrics = metrics
        self.last_success: float | None = None  # when a factory call last worked (readiness)
        self.last_error: str | None = None
        self._last_probe = float("-inf")
        self.probe: Deferred[None] | None = None  # the last readiness probe (it never fails)
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc  # named in every error about the factory
        self._clock = clock
        self._store = store
        self._ttl = metadata_ttl
        self._timeout = metadata_timeout
        self._build_timeout = build_timeout
        self._retry = retry
        self._rng = rng or random.Random()
        self._memo: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, OneShot[Any]] = {}
        self._schematics: set[str] = set()

    # --- retries ---------------------------------------------------------------------

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if seconds <= 0:
            d.callback(None)
            return d
        self._clock.callLater(seconds, d.callback, None)
        return d

    def _kind(self, what: str) -> str:
        path = what.split(" ", 1)[-1]
        if path.startswith("/version/"):
            return "catalog"
        if path.startswith("/schematics"):
            return "schematic"
        if path.startswith("/image/"):
            return "image"
        return path.strip("/").split("/", 1)[0] or "other"

    def _kind_of_url(self, url: str) -> str:
        if url.startswith(self.base_url + "/"):
            return self._kind("GET " + url[len(self.base_url):])
        return "image"  # where an image download was redirected (ranged GETs)

    def _outcome(self, result: int | BaseException) -> str:
        """A call's outcome as the metrics name it: ``ok``, or the kind of error."""
        if isinstance(result, int):
            return "ok" if result < 400 else error_kind(status_error(result, b"", "", self.host))
        return error_kind(as_talos_error(result, "", self._timeout, self.host))

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        kind = self._kind(what)
        for attempt in range(self._retry.attempts):
            started = self._clock.seconds()
            try:
                result = await call()
                self.last_success, self.last_error = self._clock.seconds(), None
                if self._metrics is not None:
                    seconds = self._clock.seconds() - started
                    self._metrics.upstream_call(kind, "ok", seconds, ttfb=seconds if kind == "image" else None)
                return result
            except Exception as e:
                err = as_talos_error(e, what, self._timeout, self.host)
                self.last_error = err.message
                if self._metrics is not None:
                    self._metrics.upstream_call(kind, error_kind(err), self._clock.seconds() - started)
                if not (isinstance(err, UpstreamError) and err.retryable) or attempt + 1 >= self._retry.attempts:
                    raise err from None
                delay = self._retry.delay(attempt, self._rng)
                self.log.info(
                    "retrying {what} in {delay:.2f}s after: {error}", what=what, delay=delay, error=err.message
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _get_json(self, path: str) -> Any:
        what = f"GET {path}"

        async def once() -> Any:
            resp = await self._http.get(self.base_url + path, timeout=self._timeout, reactor=self._clock)
            body = await resp.content()
            if resp.code != 200:
                raise status_error(resp.code, body, what, self.host)
            try:
                return json.loads(body)
            except ValueError:
                raise UpstreamError(f"the image factory answered {what} with invalid JSON") from None

        return await self._with_retries(what, once)

    # --- memoised metadata -----------------------------------------------------------

    def _single_flight(self, name: str, fetch: Callable[[], Coroutine[Any, Any, _T]]) -> Deferred[_T]:
        event = self._inflight.get(name)
        if event is None:
            event = self._inflight[name] = OneShot()

            def deliver(result: _T | Failure) -> None:
                del self._inflight[name]
                event.fire(result)

            Deferred.fromCoroutine(fetch()).addBoth(deliver)
        # each caller gets its own Deferred: cancelling one (client gone) must not cancel the fetch
        return cast(Deferred[_T], event.when())

    async def _cached(self, name: str, fetch: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        now = self._clock.seconds()
        hit = self._memo.get(name)
        # the memo and the store hold what `fetch` returned (in an earlier run, for the store)
        if hit is not None and now < hit[0]:
            return cast(_T, hit[1])
        try:
            value = await self._single_flight(name, fetch)
        except UpstreamError as e:
            if isinstance(e, UpstreamNotFound):
                raise
            stale = hit[1] if hit is not None else (self._store.load(name) if self._store else None)
            if stale is None:
                raise
            self.log.warn("using the last known {name}: {error}", name=name, error=e.message)
            # try the factory again soon, not on every request
            self._memo[name] = (now + min(self._ttl, 30.0), stale)
            return cast(_T, stale)
        self._memo[name] = (now + self._ttl, value)
        if self._store is not None and (hit is None or hit[1] != value):
            self._store.save(name, value)
        return value

    def fresh_until(self, names: tuple[str, ...]) -> float:
        """Until when every one of these memoised answers stays fresh (0: one is not held)."""
        until = float("inf")
        for name in names:
            hit = self._memo.get(name)
            if hit is None:
                return 0.0
            until = min(until, hit[0])
        return until

    def known(self, name: str) -> Any | None:
        """The last answer for `name` without any upstream call (memo, then disk)."""
        hit = self._memo.get(name)
        if hit is not None:
            return hit[1]
        return self._store.load(name) if self._store else None

    def reachable(self, within: float = 60.0, probe_every: float = 30.0) -> bool:
        """Whether a factory call worked in the last `within` seconds; if not, a probe of
        `/versions` is started in the background (at most every `probe_every` seconds), so
        that the answer changes soon after the factory comes back."""
        now = self._clock.seconds()
        if self.last_success is not None and now - self.last_success <= within:
            return True
        if now - self._last_probe >= probe_every:
            self._last_probe = now

            async def probe() -> None:
                try:
                    await self._get_json("/versions")
                except Exception:
                    pass  # last_error says why

            self.probe = Deferred.fromCoroutine(probe())
        return False

    def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "last_success": self.last_success, "last_error": self.last_error}

    async def versions(self) -> list[str]:
        async def fetch() -> list[str]:
            value = await self._get_json("/versions")
            if not isinstance(value, list):
                raise UpstreamError("the image factory answered GET /versions with something else than a list")
            return [v for v in value if isinstance(v, str)]

        return await self._cached("versions", fetch)

    async def catalog(self, version: str) -> Catalog:
        async def fetch() -> dict[str, Any]:
            exts = await self._get_json(f"/version/{version}/extensions/official")
            ovs = await self._get_json(f"/version/{version}/overlays/official")
            if not isinstance(exts, list) or not isinstance(ovs, list):
                raise UpstreamError(f"the image factory answered a catalog of {version} with something else than a list")
            return {"extensions": exts, "overlays": ovs}

        doc = await self._cached(f"catalog-{version}", fetch)
        return Catalog.from_factory(version, doc["extensions"], doc["overlays"])

    async def catalog_lists(self, version: str) -> dict[str, list[Any]]:
        """The catalogs of `version` as the factory sent them: {"extensions": [...], "overlays": [...]}."""
        await self.catalog(version)
        doc = self.known(f"catalog-{version}")
        assert isinstance(doc, dict)
        return doc

    # --- schematics and images ---------------------------------------------------------

    async def ensure_schematic(self, schematic: Schematic) -> str:
        """POST the schematic once per process; returns the factory's ID."""
        local = schematic.id
        if local in self._schematics:
            return local
        text = schematic.to_yaml()
        what = "POST /schematics"

        async def once() -> str:
            resp = await self._http.post(
                self.base_url + "/schematics",
                data=text.encode("utf-8"),
                headers={"Content-Type": "application/yaml"},
                timeout=self._timeout,
                reactor=self._clock,
            )
            body = await resp.content()
            if resp.code not in (200, 201):
                raise status_error(resp.code, body, what, self.host)
            try:
                remote = json.loads(body)["id"]
            except (ValueError, KeyError, TypeError):
                raise UpstreamError(f"the image factory answered {what} without a schematic id") from None
            if not isinstance(remote, str):
                raise UpstreamError(f"the image factory answered {what} with a malformed schematic id")
            return remote

        remote = await self._with_retries(what, once)
        if remote != local:
            self.log.warn(
                "schematic ID mismatch: computed {local}, factory says {remote}; using the factory's",
                local=local,
                remote=remote,
            )
        self._schematics.add(remote)
        return remote

    async def schematic_text(self, schematic_id: str) -> str:
        """The canonical YAML of a schematic made elsewhere (the factory's UI, talosctl,
        Omni): fetched once, then kept (memory and disk) for good — an ID names one
        schematic for ever, so hits and restarts need no upstream call."""
        name = f"schematic-{schematic_id}"
        known = self.known(name)
        if isinstance(known, str):
            return known
        what = f"GET /schematics/{schematic_id}"

        async def fetch() -> str:
            async def once() -> str:
                resp = await self._http.get(self.base_url + f"/schematics/{schematic_id}", timeout=self._timeout,
                                            reactor=self._clock)
                body = await resp.content()
                if resp.code != 200:
                    raise status_error(resp.code, body, what, self.host)
                return body.decode("utf-8", "replace")

            return await self._with_retries(what, once)

        text = await self._single_flight(name, fetch)
        self._memo[name] = (float("inf"), text)
        if self._store is not None:
            self._store.save(name, text)
        return text

    def remember_schematic(self, schematic: Schematic) -> None:
        """Keep a schematic made here (the mirror's POST, a profile) as if the factory had
        answered GET /schematics/{id} with it: served and downloadable offline."""
        name = f"schematic-{schematic.id}"
        text = schematic.to_yaml()
        if self.known(name) == text:
            return
        self._memo[name] = (float("inf"), text)
        if self._store is not None:
            self._store.save(name, text)

    def forget_schematic(self, schematic_id: str) -> None:
        """The factory does not know it (any more): POST it again before the next download."""
        self._schematics.discard(schematic_id)

    async def open_image(self, path: str) -> IResponse:
        """GET an image, redirects followed, body unbuffered; 200 or UpstreamError."""
        what = f"GET {path}"

        async def once() -> IResponse:
            resp = await self._http.get(
                self.base_url + path, unbuffered=True, timeout=self._build_timeout, reactor=self._clock
            )
            if resp.code != 200:
                body = await resp.content()
                raise status_error(resp.code, body, what, self.host)
            return cast(IResponse, resp)  # treq's response wraps an IResponse

        try:
            return await self._with_retries(what, once)
        except UpstreamTimeout:
            raise UpstreamTimeout(
                f"the image factory did not start sending {path} within {self._build_timeout:g}s"
            ) from None

    async def open_range(self, url: bytes, offset: int) -> IResponse:
        """GET `url` (where an earlier download was redirected) from `offset` on, unbuffered.

        Returns whatever the server answered: the caller checks for a matching 206.
        """
        resp = await self._http.get(
            url.decode("ascii"),
            headers={"Range": f"bytes={offset}-"},
            unbuffered=True,
            timeout=self._timeout,
            reactor=self._clock,
        )
        return cast(IResponse, resp)  # treq's response wraps an IResponse

    async def read_range(self, url: bytes, first: int, last: int) -> bytes | None:
        """The bytes [first, last] of `url` if the server answers them as a 206, else None.

        A server that ignores Range would send the whole body: it is abandoned unread.
        """
        resp = await self._http.get(
            url.decode("ascii"),
            headers={"Range": f"bytes={first}-{last}"},
            unbuffered=True,
            timeout=self._timeout,
            reactor=self._clock,
        )
        start, _total = content_range(resp)
        wanted = last - first + 1
        if resp.code != 206 or start != first or resp.length is UNKNOWN_LENGTH or resp.length > wanted:
            resp.original.deliverBody(_Discard())
            return None
        return await resp.content()
