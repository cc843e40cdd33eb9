"""Hostile requests, as raw bytes, against the real daemon served through make_site.

Each case has the exact status it must get (or "a 4xx" where route validation is still
moving), a JSON error body where there is a body, no Host echo, no traceback (the autouse
`observe_errors` fixture), no temporary file anywhere, and, for what is refused before
routing (or on a route that needs no factory), no call to the factory.
"""

import json
import tempfile
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from talos_twisted.httpserver import ServerLimits, make_site
from talos_twisted.schematic import Schematic

from .conftest import MiB
from .rawhttp import dechunk, parse_head
from .siteserver import SiteUnderTest, closed, until
from .test_httpserver import answer

EVIL = "evil.example"
IMAGE = "/images/talos/v1.11.2/amd64/openstack.raw"


def req(path="/healthz", method="GET", headers=(), body=b"", version="HTTP/1.1", host=EVIL, close=True) -> bytes:
    lines = [f"{method} {path} {version}".encode("latin-1")]
    if host is not None:
        lines.append(b"Host: " + host.encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    lines += [h if isinstance(h, bytes) else h.encode("latin-1") for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    status: int | None  # None: any 4xx with a JSON body (route validation is the app's)
    factory_silent: bool = True  # refused by the server layer, or a route that never asks the factory
    timeout: bool = False  # answered only when the header timeout fires
    image: bool = False  # needs the image in the cache first (a hit answers at once)


def cases() -> list[Case]:
    big = 256 * MiB
    c = [
        # --- bodies where none belongs, and too large ones
        Case("get-content-length", req(headers=["Content-Length: 5"], body=b"hello"), 413),
        Case("get-256MiB-content-length", req(headers=[f"Content-Length: {big}"], body=b"x" * 65536), 413),
        Case("head-content-length", req(method="HEAD", headers=["Content-Length: 5"], body=b"hello"), 413),
        Case("get-chunked", req(headers=["Transfer-Encoding: chunked"], body=b"5\r\nhello\r\n0\r\n\r\n"), 413),
        Case("head-chunked", req(method="HEAD", headers=["Transfer-Encoding: chunked"], body=b"5\r\nhello\r\n0\r\n\r\n"), 413),
        Case("get-image-with-body", req(IMAGE, headers=["Content-Length: 3"], body=b"abc"), 413),
        Case("get-expect-100-with-body", req(headers=["Expect: 100-continue", "Content-Length: 10"]), 413),
        Case("delete-with-body", req(method="DELETE", headers=["Content-Length: 2"], body=b"{}"), 413),
        Case("post-over-limit", req(method="POST", headers=["Content-Length: 70000"]), 413),
        Case("content-length-5000-digits", req(headers=["Content-Length: " + "9" * 5000]), 413),
        Case("get-content-length-zero", req(headers=["Content-Length: 0"]), 200),
        # --- framing
        Case("content-length-negative", req(headers=["Content-Length: -1"]), 400),
        Case("content-length-plus", req(headers=["Content-Length: +5"]), 400),
        Case("content-length-list", req(headers=["Content-Length: 5, 5"]), 400),
        Case("content-length-twice", req(method="POST", headers=["Content-Length: 5", "Content-Length: 6"], body=b"hello!"), 400),
        Case("content-length-and-chunked", req(method="POST", headers=["Content-Length: 5", "Transfer-Encoding: chunked"], body=b"0\r\n\r\n"), 400),
        Case("transfer-encoding-gzip-chunked", req(method="POST", headers=["Transfer-Encoding: gzip, chunked"]), 400),
        Case("transfer-encoding-space-before-colon", req(method="POST", headers=["Transfer-Encoding : chunked"]), 400),
        Case("post-bad-chunk-size", req(method="POST", headers=["Transfer-Encoding: chunked"], body=b"zz\r\nhello\r\n"), 400),
        # --- sizes of the head
        Case("request-line-9KiB", req("/healthz?" + "a" * 9000), 414),
        Case("request-line-17KB", req("/" + "a" * 17000), 414),
        Case("request-line-endless", b"GET /" + b"a" * 20000, 414),
        Case("header-64KiB", req(headers=["X-Big: " + "a" * 65536]), 431),
        Case("header-endless", req(close=False).rstrip(b"\r\n") + b"\r\nX-Big: " + b"a" * 40000, 431),
        Case("headers-many", req(headers=[f"X-{i}: {i}" for i in range(200)]), 431),
        Case("headers-many-small-over-32KiB", req(headers=[f"X-{i}: {'v' * 400}" for i in range(90)]), 431),
        # --- request lines
        Case("http-0.9", b"GET /healthz\r\n\r\n", 400),
        Case("http-2.0", req(version="HTTP/2.0"), 505),
        Case("http-1.2", req(version="HTTP/1.2"), 505),
        Case("http-3", req(version="HTTP/3"), 400),
        Case("http-lowercase", req(version="http/1.1"), 400),
        Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        Case("method-not-a-token", req(method="G@T"), 400),
        Case("double-space", b"GET  /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400),
        Case("space-in-target", req("/health z"), 400),
        Case("nul-in-request-line", req("/heal\x00thz"), 400),
        Case("xff-in-request-line", req("/heal\xffthz"), 400),
        Case("del-in-request-line", req("/heal\x7fthz"), 400),
        Case("empty-lines-then-request", b"\r\n\r\n\r\n" + req(), 400),
        Case("bare-lf", b"GET /healthz HTTP/1.1\nHost: evil.example\nConnection: close\n\n", 408, timeout=True),
        Case("incomplete-head", b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n", 408, timeout=True),
        Case("nothing-at-all", b"", 408, timeout=True),
        Case("unknown-method", req(method="FOO"), 405),
        Case("trace", req(method="TRACE"), 405),
        Case("connect-authority-form", req("evil.example:443", method="CONNECT"), 400),
        Case("options-asterisk", req("*", method="OPTIONS"), 200),
        Case("get-asterisk", req("*"), 405),
        Case("relative-target", req("healthz"), 400),
        # --- absolute-form
        Case("absolute-form", req("http://evil.example/healthz"), 200),
        Case("absolute-form-https-port-query", req("https://evil.example:8443/healthz?x=1"), 200),
        Case("absolute-form-ftp", req("ftp://evil.example/healthz"), 400),
        Case("absolute-form-userinfo", req("http://user:pw@evil.example/healthz"), 400),
        Case("absolute-form-empty-host", req("http:///healthz"), 400),
        # --- paths
        Case("percent-overlong-dot", req("/images/talos/%C0%AE%C0%AE/amd64/openstack.raw"), 400),
        Case("percent-ff", req("/healthz%FF"), 400),
        Case("percent-surrogate", req("/%ED%A0%80"), 400),
        Case("percent-not-hex", req("/health%zz"), 400),
        Case("percent-truncated", req("/healthz%"), 400),
        Case("percent-nul", req("/images/talos/v1.11.2/amd64/open%00stack.raw"), 400),
        Case("percent-crlf-injection", req("/healthz%0D%0ASet-Cookie:%20x=1"), 400),
        Case("percent-encoded-slash", req("/images%2Ftalos/v1.11.2/amd64/openstack.raw"), 400),
        Case("traversal-dotdot", req("/images/talos/../../healthz"), 400),
        Case("traversal-dot", req("/./healthz"), 400),
        Case("traversal-encoded", req("/images/talos/v1.11.2/amd64/%2e%2e/%2E%2E/etc/passwd"), 400),
        Case("traversal-encoded-slashes", req("/images/talos/v1.11.2/amd64/..%2F..%2Fetc%2Fpasswd"), 400),
        Case("double-slash-start", req("//healthz"), 404),
        Case("double-slash-image", req("/images//talos/v1.11.2/amd64/openstack.raw?extensions=x"), 404),
        Case("trailing-slash", req("/healthz/"), 404),
        Case("fragment", req("/healthz#top"), 400),
        # --- headers
        Case("no-host", req(host=None), 400),
        Case("two-hosts", req(headers=["Host: other.example"]), 400),
        Case("host-xff", req(host="\xff"), 400),
        Case("host-with-path", req(host="evil.example/x"), 400),
        Case("host-with-space", req(host="evil example"), 400),
        Case("no-host-http-1.0", req(host=None, version="HTTP/1.0"), 200),
        Case("header-no-colon", req(headers=["X-Nothing"]), 400),
        Case("header-name-space", req(headers=["X Y: z"]), 400),
        Case("header-nul", req(headers=[b"X-A: a\x00b"]), 400),
        Case("header-bare-cr-injection", req(headers=[b"X-A: a\rSet-Cookie: x=1"]), 400),
        Case("header-obs-fold", req(headers=["X-A: a", " folded"]), 400),
        Case("header-xff-value", req(headers=[b"User-Agent: \xff\xfe", b"Cookie: \xff=\xff"]), 200),
        # --- range and conditionals on a cached image: hostile values are ignored
        Case("range-superscript", req(IMAGE, headers=["Range: bytes=\u00b2-".encode("utf-8")]), 200, False, image=True),
        Case("range-5000-digits", req(IMAGE, headers=["Range: bytes=" + "9" * 5000 + "-"]), 416, False, image=True),
        Case("range-xff", req(IMAGE, headers=[b"Range: bytes=\xff-\xff"]), 200, False, image=True),
        Case("range-many", req(IMAGE, headers=["Range: bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2000, 2))]), 200, False, image=True),
        Case("if-none-match-xff", req(IMAGE, headers=[b"If-None-Match: \xff\"x"]), 200, False, image=True),
        Case("if-modified-since-garbage", req(IMAGE, headers=["If-Modified-Since: yesterday at noon"]), 200, False, image=True),
        Case("if-modified-since-5000-digits", req(IMAGE, headers=["If-Modified-Since: " + "9" * 5000]), 200, False, image=True),
        Case("if-range-xff", req(IMAGE, headers=[b"If-Range: \xff", b"Range: bytes=0-9"]), 200, False, image=True),
        Case("if-unmodified-since-garbage", req(IMAGE, headers=[b"If-Unmodified-Since: \xff"]), 200, False, image=True),
        # --- names and queries (the routes' validation: a 4xx with JSON)
        Case("version-nul", req("/images/talos/v1.11.2%00/amd64/openstack.raw"), 400),
        Case("version-garbage", req("/images/talos/v1.x/amd64/openstack.raw"), None, False),
        Case("arch-unknown", req("/images/talos/v1.11.2/sparc/openstack.raw"), None, False),
        Case("platform-garbage", req("/images/talos/v1.11.2/amd64/open$tack.raw"), None, False),
        Case("extension-traversal", req(IMAGE + "?extensions=../../etc/passwd"), None, False),
        Case("extension-crlf-injection", req(IMAGE + "?extensions=%0d%0aX-Injected:%201"), None, False),
        Case("query-not-utf8", req(IMAGE + "?extensions=%FF"), None, False),
        Case("query-unknown-key", req(IMAGE + "?debug=1"), None, False),
        Case("query-overlong", req(IMAGE + "?extensions=" + "a," * 5000), 414),
    ]
    return c


CASES = cases()


class HostileServer(SiteUnderTest):
    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.clock = Clock()
        self.site = make_site(stack.app.resource(), ServerLimits(), self.clock)

    async def start(self):
        return await self.listen()

    async def exchange(self, data, timeout=False):
        client = await self.connect(data)
        if timeout:
            await until(lambda: sum(c.received for c in self.site.channels) == len(data), what="the bytes to arrive")
            self.clock.advance(ServerLimits().request_header_timeout)
        await closed(client, 30)
        return client



@pytest.fixture
def no_temp_files(tmp_path, monkeypatch):
    """tempfile points at a fresh directory, and its unnamed TemporaryFile is watched too
    (on Linux it leaves no name behind)."""
    where = tmp_path / "tempdir"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    calls = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    yield calls
    assert not calls, "something spooled to a temporary file"
    assert not list(where.iterdir()), "something created a temporary file"


@pytest_twisted.async_yield_fixture
async def hostile(stack, no_temp_files):
    server = await HostileServer(stack).start()
    yield server
    await server.stop()


def outside_cache(stack):
    """Every file under the test's directory that is not the cache's or tempfile's."""
    return sorted(
        str(p.relative_to(stack.tmp_path)) for p in stack.tmp_path.rglob("*")
        if p.is_file() and p.relative_to(stack.tmp_path).parts[0] not in ("cache", "tempdir")
    )


def test_the_table_is_big_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_hostile_request(hostile, stack, case):
    if case.image:
        warm = await hostile.exchange(req(IMAGE))
        assert parse_head(warm.split()[0])[0] == 200
    files_before = outside_cache(stack)
    seen_before = len(stack.fake.requests)
    client = await hostile.exchange(case.raw, timeout=case.timeout)

    head, body = client.split()
    assert head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), bytes(client.data)[:200]
    status, headers = parse_head(head)
    if case.status is None:
        assert 400 <= status < 500, head
    else:
        assert status == case.status, head + body[:300]
    if headers.get("transfer-encoding") == "chunked":
        body, complete = dechunk(body)
        assert complete
    if status >= 400 and body:
        assert headers["content-type"] == "application/json", head
        doc = json.loads(body)
        assert doc["status"] == status and isinstance(doc["error"], str) and doc["error"]
        assert "Traceback" not in doc["error"]
    if b"HEAD " in case.raw[:5]:
        assert body == b""
    assert status != 500 and not (300 <= status < 400 and "location" not in headers)
    assert EVIL.encode() not in client.data, "the Host header must never be echoed"
    assert b"x-injected" not in head.lower() and b"set-cookie" not in head.lower()
    assert b"100 Continue" not in client.data
    if case.factory_silent:
        assert len(stack.fake.requests) == seen_before, "the factory must see no request"
    assert outside_cache(stack) == files_before


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_slow_loris_client_is_cut_off_while_others_are_served(hostile, stack):
    limits = ServerLimits()
    partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    loris = [await hostile.connect(partial) for _ in range(300)]
    per_client = limits.max_connections_per_client
    table = hostile.site.connections
    await until(lambda: sum(c.closed.called for c in loris) == 300 - per_client, 30, "the refusals")
    refused = [c for c in loris if c.closed.called]
    assert all(parse_head(c.split()[0])[0] == 503 and c.head()[1]["retry-after"] for c in refused)
    assert table.count("127.0.0.1") == per_client

    # a byte every 5 s does not keep a head alive
    for c in loris:
        if not c.closed.called:
            c.transport.write(b"a")
    await until(lambda: sum(ch.received for ch in hostile.site.channels) == per_client * (len(partial) + 1))
    hostile.clock.advance(5)

    # a normal client, from another address, is served meanwhile: a whole image
    normal = await hostile.connect(req(IMAGE, host="127.0.0.1"), source="127.0.0.2")
    await closed(normal, 60)
    status, headers = normal.head()
    assert status == 200
    assert answer(normal)[2] == stack.expected(Schematic().id)

    hostile.clock.advance(5)  # 10 s since the heads began
    await until(lambda: all(c.closed.called for c in loris), 30, "the heads to time out")
    kept = [c for c in loris if c not in refused]
    assert all(c.head()[0] == 408 for c in kept)
    await until(lambda: table.total == 0, what="every connection released")


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_idle_connections_over_the_total_limit_are_refused(stack, no_temp_files):
    server = HostileServer(stack)
    server.site = make_site(stack.app.resource(), ServerLimits(max_connections=100, max_connections_per_client=1000), server.clock)
    await server.start()
    try:
        idle = [await server.connect(b"") for _ in range(150)]
        await until(lambda: sum(c.closed.called for c in idle) == 50, 30, "the refusals")
        assert server.site.connections.total == 100
        assert all(c.head()[0] == 503 for c in idle if c.closed.called)
        server.clock.advance(10)  # idle from the start: the header timeout applies
        await until(lambda: all(c.closed.called for c in idle), 30, "the idle connections to be closed")
        statuses = [c.head()[0] for c in idle]
        assert statuses.count(408) == 100 and statuses.count(503) == 50
        await until(lambda: server.site.connections.total == 0, what="every connection released")
        client = await server.exchange(req(host="127.0.0.1"))
        assert client.head()[0] == 200
    finally:
        await server.stop()
