"""The HTTP server layer (httpserver.make_site) over real sockets, with a trivial resource.

Timers of the layer run on an injected Clock: a timeout is a `clock.advance`, never a sleep.
Waiting for the server to have read what a test sent is `until(...)` on a condition.
"""

import datetime
import json
import tempfile

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from talos_twisted.httpserver import ServerLimits, TargetError, make_site, origin_form, request_line_error
from talos_twisted.schematic import Schematic

from .conftest import MiB
from .rawhttp import RawClient, dechunk, parse_head
from .siteserver import SiteUnderTest, closed, until

HEAD_OK = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSE = b"Host: 127.0.0.1\r\nConnection: close\r\n"


def answer(client):
    """(status, headers, body) of the one response a client got."""
    head, body = client.split()
    status, headers = parse_head(head)
    if headers.get("transfer-encoding") == "chunked":
        body, complete = dechunk(body)
        assert complete
    return status, headers, body


def json_error(client, status):
    got, headers, body = answer(client)
    assert got == status, bytes(client.data)[:300]
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == status and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


class Echo(Resource):
    """GET: `ok <path>`; /hold answers when the test says; /host tells the host name the
    request reports; /boom raises. POST: the body length and the type holding it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []
        self.held = []

    def render_GET(self, request):
        self.seen.append(request)
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        if request.path == b"/host":
            return request.getRequestHostname()
        if request.path == b"/boom":
            raise RuntimeError("boom")
        return b"ok " + request.path

    def render_POST(self, request):
        self.seen.append(request)
        body = request.content.read()
        return b"got %d in %s" % (len(body), type(request.content).__name__.encode())


class Server(SiteUnderTest):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.resource = Echo()

    async def start(self, **limits):
        self.site = make_site(self.resource, ServerLimits(**limits), self.clock)
        return await self.listen()

    def received(self):
        return sum(c.received for c in self.site.channels)

    def alive(self):
        """The one server-side connection is open and not being closed: checked at once
        after a clock.advance, since the server acts on a timeout synchronously."""
        [channel] = self.site.channels
        return not channel.closing and not channel.transport.disconnecting



@pytest_twisted.async_yield_fixture
async def server():
    s = Server()
    yield s
    if s.port is not None:
        await s.stop()


@pytest.fixture
def refusals():
    events = []

    def observer(event):
        if event.get("log_format", "").startswith("refused"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def temp_spy(tmp_path, monkeypatch):
    """Fail loudly if anything asks `tempfile` for a file; new names would show in `where`."""
    where = tmp_path / "tempdir"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    calls = []
    real = tempfile.TemporaryFile

    def spy(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    yield calls
    assert not list(where.iterdir())


# --- pure parts -------------------------------------------------------------------------


def test_limits_defaults_and_validation():
    limits = ServerLimits()
    assert (limits.request_header_timeout, limits.idle_timeout, limits.request_body_timeout) == (10.0, 60.0, 30.0)
    assert (limits.max_connections, limits.max_connections_per_client) == (2000, 64)
    assert (limits.max_request_line, limits.max_header_size, limits.max_post_body) == (8192, 32768, 65536)
    assert limits.max_headers == 100 and limits.retry_after == 5
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        ServerLimits(idle_timeout=-1)
    with pytest.raises(ValueError, match="max_request_line"):
        ServerLimits(max_request_line=40000)


@pytest.mark.parametrize("target, canonical", [
    (b"/healthz", b"/healthz"),
    (b"/", b"/"),
    (b"*", b"*"),
    (b"/a?b=%FF&c=//", b"/a?b=%FF&c=//"),  # the query is the app's to judge
    (b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"http://example.com:8080/healthz?x=1", b"/healthz?x=1"),
    (b"HTTPS://example.com/a/b", b"/a/b"),
    (b"http://example.com", b"/"),
    (b"http://example.com?q", b"/?q"),
    (b"http://[::1]:80/x", b"/x"),
])
def test_origin_form_accepts(target, canonical):
    assert origin_form(target) == canonical


@pytest.mark.parametrize("target, status", [
    (b"/%C0%AE", 400), (b"/%FF", 400), (b"/%zz", 400), (b"/a%", 400), (b"/a%2", 400), (b"/%ED%A0%80", 400),
    (b"/a%2Fb", 400), (b"/a%2fb", 400), (b"/%00", 400), (b"/a%0D%0Ab", 400), (b"/%7F", 400), (b"/%C2%85", 400),
    (b"/..", 400), (b"/a/./b", 400), (b"/%2e%2e/x", 400), (b"/%2E", 400), (b"/.%2e", 400),
    (b"//a", 404), (b"/a//b", 404), (b"/a/", 404),
    (b"a/b", 400), (b"ftp://example.com/x", 400), (b"http://user@example.com/x", 400), (b"http:///x", 400),
    (b"/a#frag", 400), (b"example.com:443", 400),
])
def test_origin_form_refuses(target, status):
    with pytest.raises(TargetError) as e:
        origin_form(target)
    assert e.value.status == status and e.value.message


@pytest.mark.parametrize("line, status", [
    (b"GET / HTTP/1.1", None), (b"GET / HTTP/1.0", None), (b"M-SEARCH * HTTP/1.1", None),
    (b"GET /", 400), (b"GET  / HTTP/1.1", 400), (b"GET / HTTP/1.1 x", 400), (b"G@T / HTTP/1.1", 400),
    (b"GET /\x00 HTTP/1.1", 400), (b"GET /\xff HTTP/1.1", 400), (b"GET /\x7f HTTP/1.1", 400),
    (b"GET / http/1.1", 400), (b"GET / HTTP/1", 400), (b"GET / HTTP/11.1", 400),
    (b"GET / HTTP/2.0", 505), (b"GET / HTTP/0.9", 505), (b"PRI * HTTP/2.0", 505),
])
def test_request_line_checks(line, status):
    error = request_line_error(line)
    assert (error[0] if error else None) == status


# --- bodies ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_get_with_a_huge_body_is_refused_before_it_is_read(server, temp_spy, refusals):
    await server.start()
    head = b"GET /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: %d\r\n\r\n" % (256 * MiB)
    client = await server.connect(head + b"\0" * MiB)  # and more would follow
    await closed(client)
    assert "must not have a body" in json_error(client, 413)
    assert client.closed_cleanly, "the answer is followed by a clean close, not a reset"
    assert not server.resource.seen and not temp_spy
    assert refusals[-1]["limit"] == "request_body" and refusals[-1]["peer"] == "127.0.0.1"


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE", b"OPTIONS"])
@pytest_twisted.ensureDeferred
async def test_a_chunked_body_on_a_bodiless_method_is_refused(server, temp_spy, method):
    await server.start()
    client = await server.exchange(method + b" /x HTTP/1.1\r\n" + CLOSE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    status, headers, body = answer(client)
    assert status == 413 and headers["content-type"] == "application/json"
    assert body == b"" if method == b"HEAD" else json.loads(body)["status"] == 413
    assert not server.resource.seen and not temp_spy


@pytest_twisted.ensureDeferred
async def test_an_empty_body_is_no_body(server):
    await server.start()
    client = await server.exchange(b"GET /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: 0\r\n\r\n")
    assert answer(client)[0] == 200


@pytest_twisted.ensureDeferred
async def test_small_post_bodies_are_kept_in_memory(server, temp_spy):
    await server.start()
    data = b"y" * 64 * 1024  # exactly the limit
    client = await server.exchange(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    assert answer(client)[2] == b"got 65536 in BytesIO"
    chunked = b"8000\r\n" + b"z" * 0x8000 + b"\r\n10\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n"
    client = await server.exchange(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert answer(client)[2] == b"got 32784 in BytesIO"
    assert not temp_spy


@pytest_twisted.ensureDeferred
async def test_a_large_post_is_refused_from_its_head(server, temp_spy):
    await server.start()
    client = await server.connect(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: 65537\r\n\r\n")
    await closed(client)  # answered without sending a byte of the body
    assert "65536" in json_error(client, 413)
    assert not server.resource.seen


@pytest_twisted.ensureDeferred
async def test_a_chunked_post_is_refused_once_it_passes_the_limit(server, temp_spy):
    await server.start(max_post_body=1000)
    client = await server.connect(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        client.transport.write(b"190\r\n" + b"q" * 400 + b"\r\n")
    await closed(client)
    assert "1000" in json_error(client, 413)
    assert not server.resource.seen and not temp_spy


@pytest_twisted.ensureDeferred
async def test_a_content_length_of_5000_digits_is_413_without_a_traceback(server):
    await server.start()
    client = await server.exchange(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n")
    json_error(client, 413)


@pytest_twisted.ensureDeferred
async def test_bad_chunk_framing_is_a_json_400(server):
    await server.start()
    client = await server.exchange(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    json_error(client, 400)


# --- heads -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_line_limit(server, refusals):
    await server.start()
    line = b"GET /" + b"a" * (8192 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 8192
    client = await server.exchange(line + b"\r\n" + CLOSE + b"\r\n")
    assert answer(client)[0] == 200, "a request line of exactly the limit is served"
    client = await server.exchange(line.replace(b"/a", b"/aa") + b"\r\n" + CLOSE + b"\r\n")
    json_error(client, 414)
    # a line that never ends is refused once it passes the limit, not when it ends
    client = await server.connect(b"GET /" + b"b" * 17 * 1024)
    await closed(client)
    json_error(client, 414)
    assert refusals[-1]["limit"] == "max_request_line"


@pytest_twisted.ensureDeferred
async def test_head_size_and_header_count_limits(server, refusals):
    await server.start()
    prefix = b"GET /x HTTP/1.1\r\n" + CLOSE
    filler = 32 * 1024 - len(prefix) - len(b"X: \r\n\r\n")
    client = await server.exchange(prefix + b"X: " + b"v" * filler + b"\r\n\r\n")
    assert answer(client)[0] == 200, "a head of exactly the limit is served"
    client = await server.exchange(prefix + b"X: " + b"v" * (filler + 1) + b"\r\n\r\n")
    json_error(client, 431)
    client = await server.connect(prefix + b"X: " + b"v" * 64 * 1024)  # one endless header line
    await closed(client)
    json_error(client, 431)
    client = await server.exchange(prefix + b"".join(b"X-%d: 1\r\n" % i for i in range(98)) + b"\r\n")
    assert answer(client)[0] == 200, "100 header fields are allowed"
    client = await server.exchange(prefix + b"".join(b"X-%d: 1\r\n" % i for i in range(99)) + b"\r\n")
    assert "100 header fields" in json_error(client, 431)
    assert refusals[-1]["limit"] == "max_headers"


@pytest_twisted.ensureDeferred
async def test_dribbling_does_not_extend_the_header_timeout(server, refusals):
    await server.start()
    client = await server.connect()
    for i, byte in enumerate(b"GET /x HTTP/1.1\r\n"):
        client.transport.write(bytes([byte]))
        await until(lambda: server.received() == i + 1, what="the byte to arrive")
        server.clock.advance(0.5)  # 17 bytes at 0.5 s: 8.5 s, each resetting nothing
    server.clock.advance(1.4)
    assert server.alive()
    server.clock.advance(0.2)
    await closed(client)
    assert "10 seconds" in json_error(client, 408)
    assert refusals[-1]["limit"] == "request_header_timeout"


@pytest_twisted.ensureDeferred
async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    await server.start(request_header_timeout=3)
    client = await server.connect()
    await until(lambda: server.site.connections.total == 1)
    server.clock.advance(2.9)
    assert server.alive()
    server.clock.advance(0.2)
    await closed(client)
    json_error(client, 408)


@pytest_twisted.ensureDeferred
async def test_a_slow_body_is_timed_out(server, refusals):
    await server.start()
    client = await server.connect(b"POST /x HTTP/1.1\r\n" + CLOSE + b"Content-Length: 100\r\n\r\n0123456789")
    await until(lambda: server.received() == len(client.request_bytes))
    server.clock.advance(29)
    client.transport.write(b"more")
    await until(lambda: server.received() == len(client.request_bytes) + 4)
    server.clock.advance(1.1)
    await closed(client)
    assert "body" in json_error(client, 408)
    assert refusals[-1]["limit"] == "request_body_timeout"
    assert not server.resource.seen


@pytest_twisted.ensureDeferred
async def test_keep_alive_idle_timeout_then_a_fresh_header_timeout(server):
    await server.start()
    client = await server.connect(HEAD_OK)
    await until(lambda: b"ok /x" in client.data)
    server.clock.advance(59)
    assert server.alive()
    # a second request starts the header timer, not the remaining idle time
    client.transport.write(b"GET /y HTTP/1.1\r\n")
    await until(lambda: server.received() == len(HEAD_OK) + 17)
    server.clock.advance(9.9)
    assert server.alive()
    client.transport.write(b"Host: 127.0.0.1\r\n\r\n")
    await until(lambda: b"ok /y" in client.data)
    server.clock.advance(59.9)
    assert server.alive()
    server.clock.advance(0.2)
    await closed(client)
    assert client.data.count(b"HTTP/1.1") == 2, "an idle close sends no 408"


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(server):
    await server.start()
    client = await server.exchange(HEAD_OK.replace(b"/x", b"/a") + HEAD_OK.replace(b"/x", b"/b") + b"GET /c HTTP/1.1\r\n" + CLOSE + b"\r\n")
    data = bytes(client.data)
    assert data.index(b"ok /a") < data.index(b"ok /b") < data.index(b"ok /c")


@pytest_twisted.ensureDeferred
async def test_a_request_being_answered_is_never_timed_out(server):
    await server.start()
    client = await server.connect(b"GET /hold HTTP/1.1\r\n" + CLOSE + b"\r\n")
    await until(lambda: server.resource.held)
    server.clock.advance(100_000)  # far past every timeout of the layer
    request = server.resource.held[0]
    request.write(b"late but whole")
    request.finish()
    await closed(client)
    assert answer(client)[2] == b"late but whole"


# --- connections -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_limits_503_then_close(server, refusals):
    await server.start(max_connections_per_client=3, max_connections=5, retry_after=7)
    held = [await server.connect(b"GET /x HTTP/1.1\r\n") for _ in range(3)]
    await until(lambda: server.site.connections.total == 3)
    client = await server.exchange(HEAD_OK)
    assert "max_connections_per_client" in json_error(client, 503)
    assert answer(client)[1]["retry-after"] == "7" and answer(client)[1]["connection"] == "close"
    assert refusals[-1]["limit"] == "max_connections_per_client" and refusals[-1]["peer"] == "127.0.0.1"
    # another address is served; two more fill the server
    other = await server.exchange(b"GET /x HTTP/1.1\r\n" + CLOSE + b"\r\n", source="127.0.0.2")
    assert answer(other)[0] == 200
    await until(lambda: server.site.connections.total == 3)
    more = [await server.connect(b"GET /x HTTP/1.1\r\n", source=src) for src in ("127.0.0.2", "127.0.0.3")]
    await until(lambda: server.site.connections.total == 5)
    client = await server.exchange(HEAD_OK, source="127.0.0.4")
    assert "max_connections" in json_error(client, 503)
    # a closed connection gives its place back
    held[0].transport.loseConnection()
    await until(lambda: server.site.connections.total == 4 and server.site.connections.count("127.0.0.1") == 2)
    client = await server.exchange(b"GET /x HTTP/1.1\r\n" + CLOSE + b"\r\n")
    assert answer(client)[0] == 200
    for c in held[1:] + more:
        c.transport.loseConnection()
    await until(lambda: server.site.connections.total == 0)


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_at_most_once_a_second_per_limit(server, refusals):
    await server.start(max_connections_per_client=1)
    held = await server.connect()
    await until(lambda: server.site.connections.total == 1)
    for _ in range(5):
        await server.exchange(HEAD_OK)
    assert len(refusals) == 1
    server.clock.advance(1)
    await server.exchange(HEAD_OK)
    assert len(refusals) == 2 and refusals[-1]["suppressed"] == 4
    held.transport.loseConnection()


def test_only_http11_is_offered_over_alpn():
    site = make_site(Echo(), ServerLimits(), Clock())
    assert site.acceptableProtocols() == [b"http/1.1"]


# --- what reaches the resource -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_host_is_our_address_not_the_host_header(server):
    await server.start()
    client = await server.exchange(b"GET /host HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert answer(client)[2] == b"127.0.0.1"
    assert b"evil" not in client.data


@pytest_twisted.ensureDeferred
async def test_absolute_form_is_served_as_its_path(server):
    await server.start()
    client = await server.exchange(b"GET http://evil.example:1/x?y=1 HTTP/1.1\r\n" + CLOSE + b"\r\n")
    assert answer(client)[2] == b"ok /x"
    assert server.resource.seen[-1].uri == b"/x?y=1" and server.resource.seen[-1].args == {b"y": [b"1"]}


@pytest.mark.parametrize("path, status", [(b"/%FF", 400), (b"/%C0%AE", 400), (b"/a//b", 404), (b"/..", 400)])
@pytest_twisted.ensureDeferred
async def test_bad_targets_are_answered_before_the_resource(server, path, status):
    await server.start()
    client = await server.exchange(b"GET " + path + b" HTTP/1.1\r\n" + CLOSE + b"\r\n")
    json_error(client, status)
    assert not server.resource.seen


@pytest_twisted.ensureDeferred
async def test_a_failing_resource_is_a_json_500_without_a_traceback_in_the_body(server, observe_errors):
    await server.start()
    client = await server.exchange(b"GET /boom HTTP/1.1\r\n" + CLOSE + b"\r\n")
    body = json_error(client, 500)
    assert "Traceback" not in body and b"boom" not in client.data
    assert len(observe_errors) == 1, "the failure is logged for the operator"
    observe_errors.clear()


# --- TLS ---------------------------------------------------------------------------------


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    return key_path, cert_path, cert_pem


@pytest.mark.stack(image_size=24 * MiB)
@pytest_twisted.ensureDeferred
async def test_https_streams_an_image_to_a_slow_client(stack, tmp_path):
    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    key_path, cert_path, cert_pem = self_signed(tmp_path)
    clock = Clock()
    site = make_site(stack.app.resource(), ServerLimits(), clock)
    port = await serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}").listen(site)
    try:
        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
        slow = RawClient(b"GET /images/talos/v1.11.2/amd64/openstack.raw HTTP/1.1\r\n" + CLOSE + b"\r\n")
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, tls), slow)
        await until(lambda: slow.got_some.called, 30, "the first bytes")
        slow.pause()  # stops reading: the daemon's producer for it is paused by its socket
        await until(lambda: stack.app.cache.entries(), 60, "the download to be committed")
        assert len(slow.data) < 20 * MiB, "the slow client was held back by its own socket"
        clock.advance(10_000)  # no timeout of the server layer cuts a response being streamed
        slow.resume()
        await closed(slow, 60)
        status, headers, body = answer(slow)
        assert status == 200 and headers["x-talos-cache"] == "MISS"
        assert body == stack.expected(Schematic().id)
        assert slow.closed_cleanly
        # plain HTTP to the TLS port fails the handshake, and gives its connection slot back
        plain = RawClient(b"GET /healthz HTTP/1.1\r\n" + CLOSE + b"\r\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), plain)
        await closed(plain)
        assert b"200 OK" not in plain.data
        await until(lambda: site.connections.total == 0, what="every TLS connection released")
    finally:
        await port.stopListening()
