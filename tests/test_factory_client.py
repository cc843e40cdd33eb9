"""The factory client against the fake factory on 127.0.0.1; its clock is a fake one."""

import json

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource

from talos_twisted.factory import FactoryClient, RetryPolicy, UpstreamError
from talos_twisted.metastore import MetadataStore
from talos_twisted.schematic import Schematic
from talos_twisted.testing.fakefactory import FakeFactory

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)


from .conftest import listen


@pytest_twisted.async_yield_fixture
async def serve():
    """serve(resource) -> base URL; ports and connections are closed after the test."""
    ports, pool = [], HTTPConnectionPool(reactor, persistent=False)

    async def start(resource):
        port = await listen(resource)
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    start.http = HTTPClient(Agent(reactor, pool=pool))
    yield start
    await pool.closeCachedConnections()
    for port in ports:
        await port.stopListening()


async def client(serve, fake, store=None, ttl=900.0, resource=None):
    clock = Clock()
    url = await serve(resource or fake.resource())
    return FactoryClient(serve.http, url, clock, store=store, metadata_ttl=ttl, retry=NO_WAIT), clock


@pytest_twisted.ensureDeferred
async def test_versions_are_memoised_for_the_ttl(serve):
    fake = FakeFactory()
    fc, clock = await client(serve, fake, ttl=60)
    assert (await fc.versions())[-1] == "v1.12.0-beta.0"
    await fc.versions()
    assert fake.counts["versions"] == 1
    clock.advance(61)
    await fc.versions()
    assert fake.counts["versions"] == 2


@pytest_twisted.ensureDeferred
async def test_stale_answer_survives_a_restart(tmp_path, serve):
    fake = FakeFactory()
    store = MetadataStore(str(tmp_path))
    fc, _ = await client(serve, fake, store=store)
    known = await fc.versions()
    cat = await fc.catalog("v1.11.2")
    fake.fail_next(100, 503, route="versions")
    fake.fail_next(100, 503, route="extensions")
    fresh, _ = await client(serve, fake, store=MetadataStore(str(tmp_path)))  # a new process, same cache
    assert await fresh.versions() == known
    assert (await fresh.catalog("v1.11.2")) == cat


@pytest_twisted.ensureDeferred
async def test_nothing_known_and_failing_is_503_after_bounded_attempts(serve):
    fake = FakeFactory()
    fake.fail_next(100, 500, route="versions")
    fc, _ = await client(serve, fake)
    with pytest.raises(UpstreamError) as e:
        await fc.versions()
    assert e.value.status == 503 and e.value.retry_after == 30
    assert fake.counts["versions"] == 3


@pytest_twisted.ensureDeferred
async def test_a_404_is_not_retried_nor_served_stale(serve):
    fake = FakeFactory()
    fc, _ = await client(serve, fake)
    with pytest.raises(UpstreamError) as e:
        await fc.catalog("v1.99.0")
    assert e.value.status == 404 and "not available" in e.value.message
    assert fake.counts["extensions"] == 1


@pytest_twisted.ensureDeferred
async def test_schematic_is_posted_once_and_a_mismatch_is_a_warning(tmp_path, serve):
    fake = FakeFactory()

    class Lying(Resource):
        """Answers POST /schematics with another ID, as a future factory might."""

        isLeaf = True

        def render_POST(self, request):
            request.setResponseCode(201)
            return json.dumps({"id": "f" * 64}).encode()

    root = Resource()
    root.putChild(b"schematics", Lying())
    fc, _ = await client(serve, fake, resource=root)
    warnings = []
    observer = lambda e: warnings.append(e) if "mismatch" in e.get("log_format", "") else None
    globalLogPublisher.addObserver(observer)
    try:
        assert await fc.ensure_schematic(Schematic()) == "f" * 64
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(warnings) == 1 and warnings[0]["local"] == Schematic().id

    honest, _ = await client(serve, fake)
    assert await honest.ensure_schematic(Schematic()) == Schematic().id
    assert await honest.ensure_schematic(Schematic()) == Schematic().id
    assert fake.counts["schematics_post"] == 1
