"""The fake factory's HTTP routes: a Klein app whose handlers reach the FakeFactory's state.

Routes, status codes and one-line plain-text errors follow ``docs/factory-api.md``; each
error is raised as ``FactoryError`` and rendered by one ``handle_errors`` handler.
"""

from __future__ import annotations

import collections
import json
import uuid
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from talos_twisted.http_ranges import Unsatisfiable, parse_range
from talos_twisted.schematic import SchematicError, parse_schematic
from talos_twisted.versions import InvalidVersion, Version

from .boot import ipxe_script
from .catalog import extensions_catalog, find_extension, overlays_catalog, overlays_supported
from .faults import Body, BodyProducer
from .factory import AssetKey, schematic_facts
from talos_twisted.assetpath import (
    ENTERPRISE, INTERNAL, TEXT, Profile, ProfileError, content_type, parse_profile, split_sidecar,
)

if TYPE_CHECKING:
    from .factory import FakeFactory

_INTERESTING = ("range", "if-range", "x-request-id", "user-agent", "content-type", "accept-encoding")
_HEAD_ROUTES = (b"image", b"blob")  # the only routes answering HEAD; the rest are GET-only


class FactoryError(Exception):
    """An answer of the factory other than success: one plain-text line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _reply(request: server.Request, status: int, body: bytes, content_type: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(b"Content-Length", b"%d" % len(body))  # as Go does for short answers
    return body


def _json(request: server.Request, obj: object, status: int = 200, content_type: str = "application/json") -> bytes:
    return _reply(request, status, (json.dumps(obj, separators=(",", ":")) + "\n").encode(), content_type)


class _Observed(KleinResource):
    """The Klein resource, plus what every answer of the factory carries: the request is
    recorded (``FakeFactory.requests``) and an ``X-Request-ID`` is set (an incoming one is
    echoed), also for requests no route matches."""

    def __init__(self, app: Klein, fake: FakeFactory):
        super().__init__(app)
        self._fake = fake

    def render(self, request: IRequest) -> Any:
        rid = request.getHeader(b"x-request-id") or uuid.uuid4().hex.encode()
        request.setHeader(b"X-Request-ID", rid)
        headers = {}
        for name in _INTERESTING:
            value = request.getHeader(name.encode())
            if value is not None:
                headers[name] = value.decode("latin-1")
        self._fake.requests.append((request.method.decode("ascii", "replace"), request.path.decode("latin-1"), headers))
        return super().render(request)


class FactoryApp:
    """The routes of the fake; all state lives in the ``FakeFactory`` it serves."""

    app = Klein()
    log = Logger()

    def __init__(self, fake: FakeFactory):
        self.fake = fake

    def resource(self) -> IResource:
        return _Observed(self.app, self.fake)

    # -- errors (Klein hands error handlers an IRequest; it is a server.Request) --------
    @app.handle_errors(FactoryError)
    def _factory_error(self, request: IRequest, failure: Failure) -> bytes:
        e = cast(FactoryError, failure.value)
        return self._error(cast(server.Request, request), e.status, e.message)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes:
        req = cast(server.Request, request)
        e = cast(HTTPException, failure.value)
        if isinstance(e, MethodNotAllowed):
            return self._not_allowed(req, list(e.valid_methods or []))
        if e.code == 404:
            return self._error(req, 404, "404 page not found")
        return self._error(req, e.code or 500, (e.name or INTERNAL).lower())

    @app.handle_errors(CancelledError)
    def _cancelled(self, request: IRequest, failure: Failure) -> None:
        return None  # the client went away

    @app.handle_errors(Exception)
    def _internal(self, request: IRequest, failure: Failure) -> bytes | None:
        req = cast(server.Request, request)
        self.log.failure("fake factory failed to serve {path}", failure, path=req.path)
        if not req.startedWriting:
            return self._error(req, 500, INTERNAL)
        if req.transport is not None:  # headers are out: a truncated body must look truncated
            cast(ITCPTransport, req.transport).abortConnection()
        return None

    def _error(self, request: server.Request, status: int, message: str) -> bytes:
        for name in (b"Content-Disposition", b"Location"):
            request.responseHeaders.removeHeader(name)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")  # as Go's http.Error
        return _reply(request, status, (message + "\n").encode(), TEXT)

    def _not_allowed(self, request: server.Request, valid: list[str]) -> bytes:
        # werkzeug adds HEAD to every GET route; the factory's router does not
        serves_head = request.path.split(b"/")[1] in _HEAD_ROUTES  # path is "/..." always
        allow = sorted(m for m in valid if m != "HEAD" or serves_head)  # werkzeug gives a set
        request.setHeader(b"Allow", ", ".join(allow).encode())
        return self._error(request, 405, "Method Not Allowed")

    def _get_only(self, request: server.Request) -> None:
        if request.method != b"GET":
            raise MethodNotAllowed(valid_methods=["GET"])

    def _injected(self, route: str) -> None:
        status = self.fake._take_failure(route)
        if status is not None:
            phrase = RESPONSES.get(status, b"error").decode("ascii", "replace").lower()
            raise FactoryError(status, f"{phrase} (injected by the fake factory)")

    # -- validation shared by the routes -------------------------------------------------
    def _schematic(self, sid: str) -> str:
        text = self.fake.schematics.get(sid)
        if text is None:
            raise FactoryError(404, f'schematic ID "{sid}" not found')
        return text

    def _parse_version(self, text: str) -> Version:
        try:
            return Version.parse(text if text.startswith("v") else "v" + text)
        except InvalidVersion:
            raise FactoryError(500, INTERNAL) from None

    def _known_version(self, text: str) -> Version:
        v = self._parse_version(text)
        if str(v) not in self.fake.versions:
            raise FactoryError(404, f"version {str(v)[1:]} is not available")
        return v

    def _profile(self, path: str) -> Profile:
        try:
            return parse_profile(path)
        except ProfileError as e:
            raise FactoryError(400, f"error parsing profile from path: {e}") from None

    def _check_build(self, text: str, v: Version, profile: Profile) -> None:
        """What the factory finds wrong only when it builds (400): an overlay before Talos
        v1.7, names missing from the version's catalogs (not looked up for kernel and
        cmdline, which carry no extensions)."""
        facts = schematic_facts(text)
        if facts.overlay is not None and not overlays_supported(v):
            raise FactoryError(400, f"overlay is not supported for Talos version {v}")
        if profile.kind in ("kernel", "cmdline"):
            return
        for name in facts.extensions:
            if find_extension(v, name) is None:
                raise FactoryError(400, f'official extension "{name}" is not available for Talos version {v}')
        if facts.overlay is not None and facts.overlay not in {o["name"] for o in overlays_catalog(v)}:
            raise FactoryError(400, f'official overlay "{facts.overlay}" is not available for Talos version {v}')

    # -- metadata ------------------------------------------------------------------------
    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: server.Request) -> bytes:
        self._get_only(request)
        return _reply(request, 200, b"", TEXT)

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: server.Request) -> bytes:
        self._get_only(request)
        if not self.fake.ready:
            raise FactoryError(503, "not ready")
        return _reply(request, 200, b"", TEXT)

    @app.route("/_fake/requests", methods=["GET"])
    def recorded_requests(self, request: server.Request) -> bytes:
        """Not the factory's: what this fake was asked so far, for a benchmark or demo in
        another process (bench/scaleout). Read-only: ``{"requests": {"GET /path": n},
        "counts": {kind: n}}``; paths without their query string."""
        self._get_only(request)
        seen = collections.Counter(f"{method} {path}" for method, path, _ in self.fake.requests)
        return _json(request, {"requests": dict(seen), "counts": dict(self.fake.counts)})

    @app.route("/versions", methods=["GET"])
    def versions(self, request: server.Request) -> bytes:
        self._get_only(request)
        self.fake.counts["versions"] += 1
        self._injected("versions")
        # Upstream sets no Content-Type and Go sniffs text/plain.
        return _json(request, self.fake.versions, content_type=TEXT)

    @app.route("/version/<version>/<any(extensions, overlays):kind>/official", methods=["GET"])
    def catalog(self, request: server.Request, version: str, kind: str) -> bytes:
        self._get_only(request)
        self.fake.counts[kind] += 1
        self._injected(kind)
        v = self._known_version(version)
        return _json(request, extensions_catalog(v) if kind == "extensions" else overlays_catalog(v))

    @app.route("/schematics", methods=["POST"])
    def post_schematic(self, request: server.Request) -> bytes:
        self.fake.counts["schematics_post"] += 1
        self._injected("schematics")
        body = request.content.read() if request.content is not None else b""
        try:
            s = parse_schematic(body)
        except SchematicError as e:
            raise FactoryError(400, str(e).splitlines()[0] if str(e) else "invalid schematic") from None
        text = s.to_yaml()
        self.fake.schematics[s.id] = text
        return _json(request, {"id": s.id, "schematic": text}, status=201)

    @app.route("/schematics/<sid>", methods=["GET"])
    def get_schematic(self, request: server.Request, sid: str) -> bytes:
        self._get_only(request)
        self.fake.counts["schematics_get"] += 1
        self._injected("schematics")
        text = self.fake.schematics.get(sid)
        if text is None:
            raise FactoryError(404, "schematic not found")
        return _reply(request, 200, text.encode(), "application/yaml")

    @app.route("/pxe/<sid>/<version>/<target>", methods=["GET"])
    def pxe(self, request: server.Request, sid: str, version: str, target: str) -> bytes:
        self._get_only(request)
        fake = self.fake
        fake.counts["pxe"] += 1
        self._injected("pxe")
        text = self._schematic(sid)
        self._parse_version(version)
        profile = self._profile("cmdline-" + target)  # as upstream: the PXE target is a cmdline asset's
        v = self._known_version(version)
        self._check_build(text, v, profile)
        cmdline = fake.cmdline(sid, str(v), profile.platform, profile.arch, profile.secureboot)
        tag = version if version.startswith("v") else "v" + version
        base = fake.pxe_url or f"http://{self._host(request)}"
        return _reply(request, 200, ipxe_script(base, sid, tag, profile, cmdline).encode(), TEXT)

    # -- downloads -----------------------------------------------------------------------
    @app.route("/image/<sid>/<version>/<path>", methods=["GET", "HEAD"])
    async def image(self, request: server.Request, sid: str, version: str, path: str) -> bytes | None:
        fake = self.fake
        head = request.method == b"HEAD"
        if not head and not fake.reproducible and fake.counts["image_get"] > 0:
            fake.generation += 1  # the real factory's builds are not guaranteed reproducible
        fake.counts["image_head" if head else "image_get"] += 1
        self._injected("image")
        path, sidecar = split_sidecar(path)
        if sidecar:
            raise FactoryError(402, ENTERPRISE[sidecar])
        text = self._schematic(sid)
        self._parse_version(version)
        profile = self._profile(path)
        v = self._known_version(version)
        self._check_build(text, v, profile)
        key = fake._key(sid, str(v), profile)
        await self._build(request)
        if fake.redirect and not head and not self._on_pxe_host(request):
            return self._redirect(request, key, path)
        body = fake._body(key)
        request.setHeader(b"Content-Type", content_type(path).encode())
        request.setHeader(b"Content-Disposition", f'attachment; filename="{path}"'.encode())
        request.setHeader(b"Content-Length", b"%d" % body.size)
        if head:
            return b""
        await self._send(request, body, 0, body.size)
        return None  # the producer finished the request (or the connection is gone)

    @app.route("/blob/<token>", methods=["GET", "HEAD"])
    async def blob(self, request: server.Request, token: str) -> bytes | None:
        fake = self.fake
        head = request.method == b"HEAD"
        fake.counts["blob_head" if head else "blob"] += 1
        self._injected("blob")
        found = fake._blobs.get(token)
        left = fake._expiring.get(token)
        if left is not None and not head:
            if left <= 0:
                found = None  # expired (expire_next_blob)
            fake._expiring[token] = left - 1
        if found is None:
            raise FactoryError(404, "blob not found")
        key, filename = found
        body = fake._body(key)
        request.setHeader(b"Content-Type", content_type(filename).encode())
        start, end = 0, body.size
        if fake.blob_ranges:
            request.setHeader(b"Accept-Ranges", b"bytes")
            try:
                ranges = parse_range(request.getHeader("range"), body.size)
            except Unsatisfiable:
                request.setHeader(b"Content-Range", b"bytes */%d" % body.size)
                raise FactoryError(416, "requested range not satisfiable") from None
            if ranges is not None and len(ranges) == 1:  # like many object stores: one range only
                (first, last) = ranges[0]
                start, end = first, last + 1
                request.setResponseCode(206)
                request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (first, last, body.size))
        request.setHeader(b"Content-Length", b"%d" % (end - start))
        if head:
            return b""
        await self._send(request, body, start, end)
        return None

    def _build(self, request: server.Request) -> Deferred[None]:
        """Waits ``build_delay`` (the factory sends nothing until its build is done). Klein
        cancels it when the client goes away, which cancels the timer."""
        fake = self.fake
        if fake.build_delay <= 0:
            return succeed(None)
        calls: list[IDelayedCall] = []

        def cancel(_: Deferred[None]) -> None:
            for call in calls:
                if call.active():
                    call.cancel()
                fake._pending.pop(call, None)

        def built() -> None:
            for call in calls:
                fake._pending.pop(call, None)
            d.callback(None)

        d: Deferred[None] = Deferred(cancel)
        calls.append(fake._clock.callLater(fake.build_delay, built))
        fake._pending[calls[0]] = request
        return d

    def _send(self, request: server.Request, body: Body, start: int, end: int) -> Deferred[None]:
        # asked before the producer starts: a body sent at once finishes the request
        # synchronously, and notifyFinish() after that would never fire
        done = request.notifyFinish()
        done.addErrback(lambda _: None)  # a client that went away is not our error
        fault, corrupt_at = self.fake._take_faults(body.size)
        fake = self.fake
        BodyProducer(
            request,
            body,
            start,
            end,
            fault,
            corrupt_at,
            clock=fake._clock,
            rate_limit=lambda: fake.rate_limit,
            active=fake._active,
        ).start()
        return done

    def _redirect(self, request: server.Request, key: AssetKey, filename: str) -> bytes:
        token = uuid.uuid4().hex
        self.fake._blobs[token] = (key, filename)
        if self.fake._expire_next > 0:
            self.fake._expire_next -= 1
            self.fake._expiring[token] = 1
        location = f"http://{self._host(request)}/blob/{token}"
        request.setHeader(b"Location", location.encode())
        return _reply(request, 302, f'<a href="{location}">Found</a>.\n\n'.encode(), "text/html; charset=utf-8")

    def _host(self, request: server.Request) -> str:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not host:
            h = request.getHost()
            host = f"{h.host}:{h.port}"
        return host

    def _on_pxe_host(self, request: server.Request) -> bool:
        """The factory's own PXE host never redirects (iPXE follows its URLs as given)."""
        pxe = self.fake.pxe_url
        return pxe is not None and urlsplit(pxe).netloc.lower() == self._host(request).lower()
