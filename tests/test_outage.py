"""An upstream outage in the middle of a transfer, end to end: the download rides it out
with backoff and jitter for up to `resume_window`, and a client that stays connected gets
the exact image once the factory is back; a longer outage fails cleanly.

Real sockets carry every byte (client <-> daemon <-> fake factory) and the writer runs in
its thread pool, but the daemon's time is a `Clock` the test advances: the daemon is built
with a reactor whose `callLater` / `seconds` are the clock's and whose sockets, threads and
name resolution are the real reactor's. Every timer of the daemon — the resume backoff, the
idle and client stall timers, the factory client's retry delays and request timeouts, the
HTTP server's own timeouts — runs on that one clock, so minutes of outage pass in a second
of wall time while nothing of the I/O is simulated. The fake factory (the outside world)
keeps real time.

The daemon's clock stands still except while a test lets it run (`OutageStack.run`): then
it moves in small steps, and never while one of the daemon's factory requests waits for its
answer (`CountingHTTP`): each upstream request the download makes during the outage is a
real one (refused, or answered 503), and no timer of the daemon's overtakes its I/O, however
slow the machine.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import TimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer, providedBy

from talos_twisted.config import Config, TalosConfig
from talos_twisted.download import Download
from talos_twisted.httpserver import make_site
from talos_twisted.schematic import Schematic
from talos_twisted.tap import build, server_limits
from talos_twisted.testing.fakefactory import FakeFactory
from talos_twisted.transfer import ResumePolicy, ScheduleResume, State, Transfer

from .conftest import MiB, sha256
from .rawhttp import assert_aborted, body_of, open_raw
from .siteserver import until

EMPTY_ID = Schematic().id
PATH = "/images/talos/v1.11.2/amd64/openstack.raw"
IMAGE_SIZE = 16 * MiB
POLICY = ResumePolicy()  # the daemon's: base 0.5 s, doubling, capped at 30 s


class SplitReactor:
    """The real reactor for sockets, threads and DNS; time (`callLater`, `seconds`) from
    `clock`. It provides what the real reactor provides, so Twisted's adapters
    (IReactorPluggableNameResolver for the agent's HostnameEndpoint, ...) take it as is."""

    def __init__(self, real: Any, clock: Clock):
        self._real = real
        self.clock = clock
        directlyProvides(self, providedBy(real))

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@implementer(IAgentEndpointFactory)
class _TCPEndpoints:
    def __init__(self, timeout: float):
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, uri.host.decode("ascii"), uri.port, timeout=self._timeout)


class CountingHTTP:
    """The daemon's HTTP client of the factory, counting its requests until each is answered
    (`_count`), so that the test moves the daemon's clock only between its I/O."""

    def __init__(self, http: Any):
        self._http = http
        self.in_flight = 0
        self._waiting: list[Deferred[None]] = []

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._count(self._http.get(url, *args, **kwargs))

    def post(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._count(self._http.post(url, *args, **kwargs))

    def idle(self) -> Deferred[None]:
        """Fires once no request waits for its answer (at once if none does)."""
        if self.in_flight == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _count(self, request: Deferred[Any]) -> Deferred[Any]:
        """The request counts until answered: a failure, a success's head (its body may be an
        image that the test means to stall), or an error answer with its body read."""
        self.in_flight += 1
        answer: Deferred[Any] = Deferred(lambda _: request.cancel())

        def answered(result: Any) -> None:
            error_body = not isinstance(result, Failure) and result.code >= 400
            if error_body:
                self._count_out_when_read(result.original)
            # the daemon's own handling of the answer first (it runs synchronously from
            # here), only then is the request counted out and the test let go on
            if not answer.called:
                answer.errback(result) if isinstance(result, Failure) else answer.callback(result)
            if not error_body:
                self._count_out()

        request.addBoth(answered)
        return answer

    def _count_out_when_read(self, response: Any) -> None:
        deliver = response.deliverBody

        def deliverBody(protocol: Any) -> None:
            lost = protocol.connectionLost

            def connectionLost(reason: Any) -> None:
                try:
                    lost(reason)
                finally:
                    self._count_out()

            protocol.connectionLost = connectionLost
            deliver(protocol)

        response.deliverBody = deliverBody

    def _count_out(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)


class Events:
    """The log events that tell what the daemon did."""

    def __init__(self) -> None:
        self.resumes: list[tuple[int, float, str]] = []  # (attempt, delay, why) of each scheduled resume
        self.restarts = 0  # re-downloads from byte 0 (no Range)
        self.ranged: list[int] = []  # compressed offsets of the ranged resumes that were honoured
        self.failures: list[str] = []
        self.stalled_clients = 0

    def __call__(self, event: dict[str, Any]) -> None:
        fmt = event.get("log_format") or ""
        if fmt.startswith("resuming {key} in {delay:.2f}s"):
            self.resumes.append((event["attempt"], event["delay"], event["why"]))
        elif fmt.startswith("re-downloading {key} from the start"):
            self.restarts += 1
        elif fmt.startswith("resumed {key} at compressed byte"):
            self.ranged.append(event["offset"])
        elif fmt.startswith("download of {key} failed"):
            self.failures.append(event["error"])
        elif fmt.startswith("aborting a client that read nothing"):
            self.stalled_clients += 1


class OutageStack:
    """The fake factory on a port it can be taken off, and the daemon on a clock the test runs."""

    def __init__(self, tmp_path: Any, image_size: int = IMAGE_SIZE, **talos: Any):
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.clock.advance(reactor.seconds())  # the daemon's time starts at the real time
        self.reactor = SplitReactor(reactor, self.clock)
        self.fake = FakeFactory(image_size=image_size)  # the outside world: real time
        # WrappingFactory keeps the factory's open connections, to reset them when it "goes down"
        self.fake_site = WrappingFactory(Site(self.fake.resource()))
        self.talos = talos
        self.events = Events()
        self.fake_port: Any = None
        self.daemon_port: Any = None
        self.service: Any = None

    async def start(self) -> OutageStack:
        globalLogPublisher.addObserver(self.events)
        self.fake_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.fake_site)
        self.factory_port = self.fake_port.getHost().port
        settings = {
            "base_url": f"http://127.0.0.1:{self.factory_port}",
            "cache_directory": str(self.tmp_path / "cache"),
            "scrub_rate": 0,
        }
        talos = TalosConfig(**{**settings, **self.talos})
        self.config = Config(listen="tcp:0", talos=talos)
        # the daemon's client as tap.build makes it, counted (see `quiet`), but connecting
        # with a plain TCP endpoint: HostnameEndpoint paces its attempts with a LoopingCall on
        # the daemon's clock, so a refused connection would be reported only once that clock
        # moved, which `quiet` does not let happen while a request waits. The factory is
        # 127.0.0.1: one address, no attempts to pace.
        self.http_pool = HTTPConnectionPool(self.reactor, persistent=True)
        agent = Agent.usingEndpointFactory(self.reactor, _TCPEndpoints(talos.connect_timeout), pool=self.http_pool)
        self.http = CountingHTTP(HTTPClient(agent))
        self.service, self.app = build(self.config, self.reactor, http=self.http)
        self.service.startService()
        # the server layer on the daemon's clock too: its timeouts see the outage's minutes
        site = make_site(self.app.resource(), server_limits(talos), self.reactor, metrics=self.app.metrics)
        self.daemon_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.url = f"http://127.0.0.1:{self.daemon_port.getHost().port}"
        return self

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self.events)
        self.fake.abort_all()
        for port in (self.daemon_port, self.fake_port):
            if port is not None:
                await port.stopListening()
        if self.service is not None:
            await self.service.stopService()
            await self.http_pool.closeCachedConnections()

    # --- the outage ------------------------------------------------------------------

    async def factory_down(self) -> None:
        """Nothing listens on the factory's port any more and every connection to it is
        reset (the daemon's pooled keep-alive connections too): connections are refused."""
        await self.fake_port.stopListening()
        self.fake_port = None
        for protocol in list(self.fake_site.protocols):
            protocol.transport.abortConnection()

    async def factory_up(self) -> None:
        """The factory is back, on the same port."""
        endpoint = TCP4ServerEndpoint(reactor, self.factory_port, interface="127.0.0.1")
        self.fake_port = await endpoint.listen(self.fake_site)

    # --- the daemon's time -----------------------------------------------------------

    async def run(self, seconds: float, step: float = 0.25, until: Callable[[], bool] | None = None) -> bool:
        """Let `seconds` of the daemon's time pass, `step` at a time, each step only once
        the daemon's factory requests are answered (`quiet`); stop early once `until()`.
        Returns whether `until()` holds (True without one)."""
        end = self.clock.seconds() + seconds
        while True:
            await self.quiet()
            if until is not None and until():
                return True
            if self.clock.seconds() >= end:
                return until is None
            self.clock.advance(min(step, end - self.clock.seconds()))

    async def quiet(self, bound: float = 30.0) -> None:
        """Wait until no factory request of the daemon waits for its answer; the clock does
        not move meanwhile, so no timeout of the daemon's can overtake its real I/O."""
        try:
            await self.http.idle().addTimeout(bound, reactor)
        except TimeoutError:
            raise AssertionError(f"{self.http.in_flight} factory requests unanswered after {bound:g}s") from None

    # --- what the test looks at -------------------------------------------------------

    def download(self) -> Download:
        [download] = self.app.downloads.active()
        return download

    def compressed_size(self) -> int:
        compression = self.config.talos.compression
        return len(self.fake.compressed_image(EMPTY_ID, "v1.11.2", "openstack", "amd64", compression))

    def expected_sha256(self) -> str:
        return self.fake.raw_sha256(EMPTY_ID, "v1.11.2", "openstack", "amd64")

    def range_requests(self) -> list[str]:
        """The Range headers of the GETs that reached the redirect target, in order."""
        return [h["range"] for m, p, h in self.fake.requests if p.startswith("/blob/") and "range" in h]

    def cache_files(self) -> list[str]:
        base = self.tmp_path / "cache" / "images"
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


@pytest_twisted.async_yield_fixture
async def outage_stack(tmp_path):
    stack = await OutageStack(tmp_path).start()
    yield stack
    await stack.stop()


def received(client: Any) -> int:
    """Body bytes the client has received so far."""
    return len(client.split()[1])


def cap(attempt: int) -> float:
    """The most the attempt-th resume (from 1) may wait: full jitter below the doubling cap."""
    return min(POLICY.max_delay, POLICY.base_delay * 2 ** (attempt - 1))


async def start_and_break(stack: OutageStack, fault: str = "cut") -> tuple[Any, Download, int]:
    """A client starts the download; halfway through its body the factory resets the
    connection ("cut") or goes silent ("stall"), and the client gets every byte written
    before that. The daemon's clock has stood still so far. Returns the client, the
    download and the compressed offset reached."""
    at = stack.compressed_size() // 2
    getattr(stack.fake, f"{fault}_next")(at)
    client = await open_raw(stack.url, PATH)
    await until(lambda: bool(stack.app.downloads.active()) and stack.download().machine.received == at,
                what="the body to break off")
    download = stack.download()
    if fault == "cut":
        await until(lambda: download.state is State.RESUMING, what="the reset to be noticed")
    await until(lambda: received(client) == download.available > 0, what="the client to catch up")
    status, headers = client.head()
    assert status == 200 and headers["content-length"] == str(IMAGE_SIZE) and headers["x-talos-cache"] == "MISS"
    assert not client.closed.called and download.available < IMAGE_SIZE
    return client, download, at


def check_backoff(resumes: list[tuple[int, float, str]], outage: float) -> None:
    """Consecutive attempts, each waiting within its jitter range, the ranges doubling up to
    the cap: as many attempts as that allows in `outage`, and far fewer than without it."""
    attempts = [a for a, _, _ in resumes]
    assert attempts == list(range(1, len(attempts) + 1))
    for attempt, delay, _ in resumes:
        assert 0 <= delay <= cap(attempt), (attempt, delay)
    # An attempt is its delay plus the factory client's own tries (3, at most 1.5 s apart
    # in all) and their I/O: well under 5 s of the daemon's time. So at least as many as
    # the caps allow...
    spent, least = 0.0, 0
    while spent + cap(least + 1) + 5.0 <= outage:
        least += 1
        spent += cap(least) + 5.0
    assert len(resumes) >= least + 1, (len(resumes), least)
    # ... and not many more: without backoff (a delay of 0.25 s on average) 30 s would see
    # some 20 attempts and 120 s some 70; with it, 7 and 13 on average
    assert len(resumes) <= 10 + outage // 8, len(resumes)


def check_committed(stack: OutageStack, download: Download) -> None:
    assert download.state is State.COMMITTED
    [entry] = stack.app.cache.entries()
    assert entry.sha256 == stack.expected_sha256() and entry.size == IMAGE_SIZE
    assert [f for f in stack.cache_files() if ".tmp-" in f] == []
    assert stack.events.failures == [] and stack.events.stalled_clients == 0


def check_whole(client: Any, stack: OutageStack, outcome: str = "MISS") -> None:
    status, headers = client.head()
    data, complete = body_of(client)
    assert status == 200 and headers["x-talos-cache"] == outcome
    assert complete and client.closed_cleanly, "a whole image, then a clean close (Connection: close)"
    assert len(data) == IMAGE_SIZE and sha256(data) == stack.expected_sha256()


# --- the factory's port closed: every connection refused -------------------------------------


@pytest.mark.parametrize("outage", [30, 120])
@pytest_twisted.ensureDeferred
async def test_refused_for_a_while_mid_transfer_then_the_rest_exactly(outage_stack, outage):
    stack = outage_stack
    client, download, at = await start_and_break(stack)
    await stack.factory_down()
    t0 = stack.clock.seconds()

    await stack.run(outage / 2)
    joined = await open_raw(stack.url, PATH)  # a second client, while the factory is down
    await until(lambda: received(joined) == download.available, what="the joining client to catch up")
    await stack.run(outage / 2)

    # the factory was down all along: every resume was refused, none reached it
    assert download.state is State.RESUMING and stack.fake.counts["image_get"] == 1
    assert all("connection refused" in why for _, _, why in stack.events.resumes[1:])
    check_backoff(stack.events.resumes, outage)
    # both clients waited, connected, with every byte written so far
    assert not client.closed.called and not joined.closed.called
    assert received(client) == received(joined) == download.available < IMAGE_SIZE
    assert stack.events.failures == [] and stack.events.stalled_clients == 0

    await stack.factory_up()
    # the next resume, at most one backoff cap later, reaches the factory
    assert await stack.run(POLICY.max_delay + 10, until=lambda: download.state is not State.RESUMING)
    assert stack.clock.seconds() - t0 < outage + POLICY.max_delay + 10
    await client.closed
    await joined.closed

    # the factory itself does not honour Range: downloaded again from byte 0, the bytes
    # already written checked to be identical, then the rest
    assert stack.fake.counts["image_get"] == 2 and stack.events.restarts == 1 and stack.range_requests() == []
    check_whole(client, stack)
    check_whole(joined, stack, "JOIN")
    await stack.app.downloads.quiesce()
    check_committed(stack, download)


# --- the factory answering 503 (down behind its load balancer), ranged resumes -----------------


@pytest.mark.parametrize("outage", [30, 120])
@pytest_twisted.ensureDeferred
async def test_503_for_a_while_mid_transfer_then_resumed_at_the_offset(outage_stack, outage):
    stack = outage_stack
    stack.fake.redirect = True  # to a target that honours Range, as the factory's object store
    client, download, at = await start_and_break(stack)
    stack.fake.outage_status = 503
    t0 = stack.clock.seconds()
    gets = stack.fake.counts["image_get"]

    await stack.run(outage)
    # End it between two attempts, not amid one (an attempt is a ranged GET and, on its 503,
    # three GETs of the image): the next attempt is the first after the outage. Attempt k
    # made the k-th ranged GET; the (k+1)-th resume scheduled is its end.
    assert await stack.run(10, until=lambda: len(stack.events.resumes) == len(stack.range_requests()) + 1)
    stack.fake.outage_status = None
    lasted = stack.clock.seconds() - t0
    assert outage <= lasted < outage + 10

    tried = len(stack.events.resumes) - 1
    assert stack.range_requests() == [f"bytes={at}-"] * tried, "every attempt asked for the rest, from the offset"
    # a 503 is not a refused range: each attempt also tried a new GET, with the factory
    # client's own 3 tries, all 503
    assert stack.fake.counts["image_get"] - gets == 3 * tried
    assert all("answered 503" in why for _, _, why in stack.events.resumes[1:])
    check_backoff(stack.events.resumes, lasted)
    assert download.state is State.RESUMING and not client.closed.called
    assert received(client) == download.available < IMAGE_SIZE

    assert await stack.run(POLICY.max_delay + 10, until=lambda: download.state is not State.RESUMING)
    await client.closed

    # the rest came from the compressed offset reached, with no new build or GET of the image
    assert stack.range_requests()[-1] == f"bytes={at}-" and stack.events.ranged == [at]
    assert stack.fake.counts["image_get"] - gets == 3 * tried and stack.events.restarts == 0
    check_whole(client, stack)
    await stack.app.downloads.quiesce()
    check_committed(stack, download)


# --- a factory that goes silent: the idle timer, on the same clock --------------------------------


@pytest_twisted.ensureDeferred
async def test_a_factory_silent_for_two_minutes_is_given_up_on_and_resumed(outage_stack):
    stack = outage_stack
    client, download, at = await start_and_break(stack, "stall")
    # idle_timeout (2m): nothing happens before it, the client waits
    await stack.run(119)
    assert download.state is State.STREAMING and stack.events.resumes == [] and not client.closed.called
    assert await stack.run(2, until=lambda: download.state is not State.STREAMING)
    [(attempt, delay, why)] = stack.events.resumes
    assert attempt == 1 and "sent no data for 120s mid-download" in why

    assert await stack.run(POLICY.max_delay, until=lambda: download.state is not State.RESUMING)
    await client.closed
    assert stack.fake.counts["image_get"] == 2 and stack.events.restarts == 1
    check_whole(client, stack)
    await stack.app.downloads.quiesce()
    check_committed(stack, download)


# --- longer than resume_window: a clean failure ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_outage_longer_than_the_resume_window_fails_cleanly(outage_stack):
    stack = outage_stack
    assert stack.config.talos.resume_window == 600  # the default, 10 minutes
    client, download, at = await start_and_break(stack)
    await stack.factory_down()
    t0 = stack.clock.seconds()

    assert await stack.run(700, step=0.5, until=lambda: download.state is State.FAILED)
    failed_after = stack.clock.seconds() - t0
    # the first attempt to fail after the window gives up: at most one cap and one attempt later
    assert 600 <= failed_after < 600 + POLICY.max_delay + 5
    await client.closed
    assert_aborted(client)  # no clean end: a truncated image never looks complete
    assert received(client) < IMAGE_SIZE

    [error] = stack.events.failures
    assert error.startswith(f"the image factory sent {at} of {stack.compressed_size()} bytes; resuming failed: ")
    assert "connection refused" in error and "(resume_window 600s)" in error
    assert re.search(r"gave up after \d+ resumed attempts over 6\d\ds", error)
    assert error.count("resuming failed") == 1, "one cause and the last failure, however many attempts"
    check_backoff(stack.events.resumes, failed_after)
    assert max(len(why) for _, _, why in stack.events.resumes) < 400

    await stack.app.downloads.quiesce()
    assert stack.app.cache.entries() == [] and stack.cache_files() == []  # nothing kept, no temp file

    # once the factory is back, the next request downloads the image anew
    await stack.factory_up()
    again = await open_raw(stack.url, PATH)
    await again.closed
    check_whole(again, stack)


# --- the reason of a resume (transfer.py) ------------------------------------------------------


def test_the_reason_of_a_resume_is_one_cause_and_one_failure_long():
    """Each failed resume used to append its failure to the previous reason: after a few
    minutes of outage a log line, and the final error, held every failure in turn."""
    m = Transfer(ResumePolicy(window=600.0), random.Random(1), now=lambda: 0.0)
    m.opened(1000, False)
    m.body(m.generation, b"x" * 10)
    [*_, first] = m.body_ended(m.generation, clean=False)
    assert isinstance(first, ScheduleResume) and first.why == "the image factory sent 10 of 1000 bytes"
    for n in range(5):
        m.resume_due()
        [*_, again] = m.resume_failed(m.generation, f"refused {n}")
        assert isinstance(again, ScheduleResume)
        assert again.why == f"the image factory sent 10 of 1000 bytes; resuming failed: refused {n}"


# --- the fake factory's outage knob ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_fake_factory_answers_every_route_with_the_outage_status_until_it_ends():
    from treq.testing import StubTreq

    fake = FakeFactory(image_size=1 * MiB)
    sid = fake.add_schematic("customization: {}\n")
    http = StubTreq(fake.resource())
    image = f"http://factory.test/image/{sid}/v1.11.2/openstack-amd64.raw.zst"
    fake.fail_next(1, 500, route="versions")  # queued failures wait for the outage to end
    fake.outage_status = 503
    for url in ("http://factory.test/versions", image, f"http://factory.test/schematics/{sid}"):
        resp = await http.get(url)
        assert resp.code == 503 and (await resp.text()) == "service unavailable (injected by the fake factory)\n"
    resp = await http.get("http://factory.test/healthz")
    assert resp.code == 200
    assert fake.counts["versions"] == 1 and fake.counts["image_get"] == 1
    fake.outage_status = None
    resp = await http.get("http://factory.test/versions")
    assert resp.code == 500
    resp = await http.get(image)
    assert resp.code == 200 and await resp.content() == fake.compressed_image(sid, "v1.11.2", "openstack", "amd64", "zst")
