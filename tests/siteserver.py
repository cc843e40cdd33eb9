"""A `make_site` site listening on 127.0.0.1 for the server-layer tests, and raw clients of it.

The conditions these tests wait for (bytes the server has read, its connection table) are
state inside the server with no event of their own: `until` checks them at every reactor
turn (5 ms) up to a deadline, and fails with what it was waiting for.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import deferLater

from .rawhttp import RawClient


async def until(condition, timeout=10.0, what="the condition"):
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


async def closed(client, timeout=10.0):
    await until(lambda: client.closed.called, timeout, "the connection to close")


class SiteUnderTest:
    """`self.site` (set by a subclass) on a port of its own; the clients it connected."""

    site = None

    def __init__(self):
        self.port = None
        self.clients = []

    async def listen(self):
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        return self

    async def connect(self, data=b"", source="127.0.0.1"):
        client = RawClient(data)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port, bindAddress=(source, 0))
        await connectProtocol(endpoint, client)
        self.clients.append(client)
        return client

    async def exchange(self, data, source="127.0.0.1"):
        client = await self.connect(data, source)
        await closed(client)
        return client

    async def stop(self):
        for c in self.clients:
            if c.transport is not None and not c.closed.called:
                c.transport.abortConnection()
        for ch in list(self.site.channels):
            ch.transport.abortConnection()
        await until(lambda: not self.site.channels and self.site.connections.refusing == 0, what="server cleanup")
        await self.port.stopListening()
