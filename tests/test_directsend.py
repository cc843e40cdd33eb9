"""Bodies sent past Twisted's buffer on plain TCP (talos_twisted.directsend), over real sockets:
the path is taken, a full socket is waited out, and where it cannot be used the buffered
path serves the same bytes."""

from __future__ import annotations

import errno
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from talos_twisted.directsend import DirectSend
from talos_twisted.schematic import Schematic

from .conftest import MiB
from .rawhttp import body_of, open_raw
from .siteserver import until

PATH = "/images/talos/v1.11.2/amd64/openstack.raw"


@pytest.fixture
def sendfiles(monkeypatch):
    """Bytes sent past Twisted's buffer: by sendfile from image files ("file"), as zeros for
    holes ("zeros"); and how often the socket was full ("full")."""
    counts = {"file": 0, "zeros": 0, "full": 0}
    real_file, real_bytes, real_wait = DirectSend.send_file, DirectSend.send_bytes, DirectSend.resume_when_writable

    def send_file(self, fd, offset, count):
        n = real_file(self, fd, offset, count)
        counts["file"] += n or 0
        return n

    def send_bytes(self, data):
        assert not any(bytes(data)), "only zeros are written from a buffer"
        n = real_bytes(self, data)
        counts["zeros"] += n or 0
        return n

    def resume_when_writable(self):
        counts["full"] += 1
        real_wait(self)

    monkeypatch.setattr(DirectSend, "send_file", send_file)
    monkeypatch.setattr(DirectSend, "send_bytes", send_bytes)
    monkeypatch.setattr(DirectSend, "resume_when_writable", resume_when_writable)
    return counts


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_miss_and_its_hits_go_out_by_sendfile(stack, sendfiles):
    expected = stack.expected(Schematic().id)
    for headers, want in (({}, expected), ({}, expected), ({"Range": "bytes=100-5000000"}, expected[100:5_000_001])):
        client = await open_raw(stack.url, PATH, headers=headers)
        await client.closed
        assert body_of(client) == (want, True)
        await stack.sealed()
    # most of each body (the first chunks go with the headers, through Twisted's buffer)
    sent = sendfiles["file"] + sendfiles["zeros"]
    assert sent > 3 * (2 * len(expected) + 4_900_000) // 4
    assert sendfiles["zeros"] > sendfiles["file"] > 0, "the data by sendfile, the holes as zeros"


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_waited_for_and_gets_every_byte(stack, sendfiles):
    await stack.get(stack.image_url())  # cached
    client = await open_raw(stack.url, PATH)
    client.pause()  # the socket fills up: sendfile would block
    await until(lambda: sendfiles["full"] >= 1, what="the daemon to find the socket full")
    before = sendfiles["file"] + sendfiles["zeros"]
    client.resume()
    await client.closed
    assert body_of(client) == (stack.expected(Schematic().id), True)
    assert sendfiles["file"] + sendfiles["zeros"] > before  # went on with sendfile once writable


@pytest.mark.stack(image_size=8 * MiB)
@pytest_twisted.ensureDeferred
async def test_where_sendfile_cannot_work_the_buffered_path_serves(stack, monkeypatch):
    calls = []

    def unsupported(out_fd, in_fd, offset, count):
        calls.append(count)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    await stack.get(stack.image_url())
    monkeypatch.setattr(os, "sendfile", unsupported)
    for _ in range(2):
        client = await open_raw(stack.url, PATH)
        await client.closed
        assert body_of(client) == (stack.expected(Schematic().id), True)
    assert len(calls) == 2, "tried once per response, then the buffered path"


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_client_gone_mid_sendfile_costs_nothing_else(stack, sendfiles):
    await stack.get(stack.image_url())
    client = await open_raw(stack.url, PATH)
    client.pause()
    await until(lambda: sendfiles["full"] >= 1, what="the socket to fill up")
    client.transport.abortConnection()
    await client.closed
    await until(lambda: not stack.app.cache._pins, what="the response to end (its entry unpinned)")
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(Schematic().id)


@pytest_twisted.ensureDeferred
async def test_drained_follows_the_transports_own_buffer():
    """Pins the Twisted internals `drained` reads: should they change, this fails."""
    server_side = []

    class Server(Protocol):
        def connectionMade(self):
            server_side.append(self)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Server))
    sink = Protocol()
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), sink)
        await until(lambda: bool(server_side), what="the server side")
        transport = server_side[0].transport

        class Request:
            class channel:
                pass

        Request.channel.transport = transport
        direct = DirectSend.of(Request)
        assert direct is not None and direct.drained()
        transport.write(b"x" * 10)
        assert not direct.drained()
        await until(direct.drained, what="Twisted to send its buffer")
    finally:
        sink.transport.loseConnection()
        if server_side:
            server_side[0].transport.loseConnection()
        await port.stopListening()


def test_not_for_tls_or_anything_but_tcp():
    class Request:
        class channel:
            transport = object()  # a TLSMemoryBIOProtocol, a ProtocolWrapper...

    assert DirectSend.of(Request) is None


# --- TLS: the records straight into the socket (DirectTLS) ------------------------------------


async def _tls_get(stack, tmp_path, path, pause_until=None):
    """One HTTPS GET of `path` from a TLS port over the stack's app; with `pause_until`, the
    client stops reading until it holds."""
    from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    from talos_twisted.httpserver import make_site
    from talos_twisted.tap import server_limits

    from .rawhttp import RawClient, request_bytes
    from .test_httpserver import self_signed

    key_path, cert_path, cert_pem = self_signed(tmp_path)
    site = make_site(stack.app.resource(), server_limits(stack.config.talos), reactor)
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    port = await serverFromString(reactor, endpoint).listen(site)
    try:
        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
        client = RawClient(request_bytes("GET", path))
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, tls), client)
        if pause_until is not None:
            await until(lambda: client.got_some.called, what="the first bytes")
            client.pause()
            await until(pause_until, what="the condition, the client not reading")
            client.resume()
        await client.closed
        return client
    finally:
        await port.stopListening()


@pytest.fixture
def tls_sends(monkeypatch):
    """Bytes of cleartext DirectTLS encrypted, and how many of its records' bytes went
    through Twisted's TCP buffer instead of straight into the socket."""
    from talos_twisted.directsend import DirectTLS

    counts = {"clear": 0, "buffered": 0}
    real = DirectTLS.send_bytes

    def send_bytes(self, data):
        n = real(self, data)
        counts["clear"] += n or 0
        counts["buffered"] = len(self._transport.dataBuffer) + self._transport._tempDataLen
        return n

    monkeypatch.setattr(DirectTLS, "send_bytes", send_bytes)
    return counts


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_https_miss_and_hit_go_out_encrypted_past_twisteds_buffer(stack, tmp_path, tls_sends):
    expected = stack.expected(Schematic().id)
    for want in ("MISS", "HIT"):
        client = await _tls_get(stack, tmp_path, PATH)
        head, _ = client.split()
        assert f"X-Talos-Cache: {want}".encode() in head
        assert body_of(client) == (expected, True) and client.closed_cleanly
        await stack.sealed()
    assert tls_sends["clear"] > 3 * (2 * len(expected)) // 4  # most: the first chunks go through Twisted


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_an_https_client_that_stops_reading_is_paced_by_the_tcp_transport(stack, tmp_path, tls_sends):
    await stack.get(stack.image_url())  # cached
    # the socket full, the records left over queue in Twisted's TCP buffer, which pauses us
    client = await _tls_get(stack, tmp_path, PATH, pause_until=lambda: tls_sends["buffered"] > 0)
    assert body_of(client) == (stack.expected(Schematic().id), True) and client.closed_cleanly


@pytest.mark.stack(image_size=8 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_keep_alive_connection_serves_the_next_request_after_a_direct_body(stack, sendfiles):
    from .rawhttp import RawClient, connect, request_bytes

    await stack.get(stack.image_url())  # cached
    expected = stack.expected(Schematic().id)
    both = request_bytes("GET", PATH, close=False) + request_bytes("GET", PATH, {"Range": "bytes=7-4000006"})
    client = await connect(stack.url, RawClient(both))
    await client.closed
    first_head, rest = bytes(client.data).split(b"\r\n\r\n", 1)
    assert first_head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(expected)}".encode() in first_head
    assert rest[:len(expected)] == expected
    second_head, second_body = rest[len(expected):].split(b"\r\n\r\n", 1)
    assert second_head.startswith(b"HTTP/1.1 206") and second_body == expected[7:4_000_007]
    assert sendfiles["file"] + sendfiles["zeros"] > len(expected) // 2  # the first went out directly
    assert client.closed_cleanly
