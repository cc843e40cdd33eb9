"""Real factory trouble: a factory that accepts and never answers, one that lost a schematic."""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from talos_twisted.schematic import Schematic

from .rawhttp import exchange

QGA = Schematic(extensions=("siderolabs/qemu-guest-agent",))


class Silent(Protocol):
    """Accepts the connection, reads the request, never answers."""

    def dataReceived(self, data):
        pass


@pytest.mark.stack(first_byte_timeout=0.5, metadata_timeout=60)
@pytest_twisted.ensureDeferred
async def test_a_hanging_factory_gets_the_client_a_503_within_first_byte_timeout(stack):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
    try:
        await stack.stop_daemon()
        host = f"127.0.0.1:{port.getHost().port}"
        await stack.start_daemon(base_url=f"http://{host}", cache_directory=str(stack.tmp_path / "hang"))
        status, headers, body = await exchange(stack.url, "/images/talos/latest/amd64/openstack.raw")
        doc = json.loads(body)
        assert status == 503 == doc["status"] and headers["retry-after"] == "30"
        assert f"the image factory ({host}) has not answered within 0.5s" in doc["error"]
    finally:
        await stack.stop_daemon()
        await port.stopListening()
        await stack.start_daemon()


@pytest.mark.stack(image_size=2 * 1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_unreachable_names_the_host_and_the_cause(stack):
    from .test_readiness import closed_url

    url = await closed_url()
    await stack.stop_daemon()
    await stack.start_daemon(base_url=url, cache_directory=str(stack.tmp_path / "refused"))
    status, _, body = await exchange(stack.url, "/images/talos/versions")
    message = json.loads(body)["error"]
    assert status == 503
    assert f"the image factory ({url[len('http://'):]}) is unreachable: connection refused (GET /versions)" in message


@pytest.mark.stack(image_size=2 * 1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_a_factory_that_lost_the_schematic_gets_it_posted_again(stack):
    q = "?extensions=qemu-guest-agent"
    status, _, body = await exchange(stack.url, "/images/talos/v1.11.2/amd64/openstack.raw" + q)
    assert status == 200 and stack.fake.counts["schematics_post"] == 1
    stack.fake.schematics.clear()  # a self-hosted factory restarted without its storage
    status, _, body = await exchange(stack.url, "/images/talos/v1.11.2/arm64/metal.raw" + q)
    assert status == 200 and body == stack.fake.raw_image(QGA.id, "v1.11.2", "metal", "arm64")
    assert stack.fake.counts["schematics_post"] == 2, "POSTed again, once"
