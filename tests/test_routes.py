"""Routes, errors and discovery, in memory: the app and the fake factory joined by StubTreq."""

import json

import pytest
import pytest_twisted


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest.mark.parametrize("path,status,fragment", [
    ("/images/talos/v1.99.0/amd64/openstack.raw", 404, "v1.99.0 is not available"),
    ("/images/talos/v1.11/amd64/openstack.raw", 400, "not 'latest' or a Talos version"),
    ("/images/talos/v1.11.2/x86/openstack.raw", 400, "architecture 'x86'"),
    ("/images/talos/v1.11.2/amd64/aws.raw", 404, "platform 'aws' is not served"),
    ("/images/talos/v1.11.2/amd64/openstack.raw?extension=qemu-guest-agent", 400, "unknown query parameter 'extension'"),
    ("/images/talos/v1.11.2/amd64/openstack.raw?extensions=qemu-guest-agnt", 404, "did you mean 'qemu-guest-agent'"),
    ("/images/talos/v1.10.7/amd64/openstack.raw?extensions=newt", 404, "unknown extension 'newt'"),
    ("/images/talos/v1.11.2/amd64/openstack.raw?overlay=rpi_generic,rock4cplus", 400, "at most one overlay"),
    ("/images/talos/v1.11.2/amd64/openstack.raw?overlay=rpi", 404, "unknown overlay 'rpi'"),
    ("/nope", 404, "no such route"),
])
@pytest_twisted.ensureDeferred
async def test_errors_are_clear_json(memory, path, status, fragment):
    resp, body = await memory.get(path)
    assert resp.code == status
    assert header(resp, "Content-Type") == "application/json"
    doc = json.loads(body)
    assert doc["status"] == status and fragment in doc["error"], doc
    assert memory.fake.counts["image_get"] == 0


@pytest_twisted.ensureDeferred
async def test_method_not_allowed(memory):
    resp, body = await memory.request("POST", "/images/talos/v1.11.2/amd64/openstack.raw", data=b"")
    assert resp.code == 405 and json.loads(body)["status"] == 405
    assert set(header(resp, "Allow").split(", ")) == {"GET", "HEAD"}


@pytest.mark.stack(enabled=False)
@pytest_twisted.ensureDeferred
async def test_disabled_answers_503_but_health_still_answers(memory):
    resp, body = await memory.get("/images/talos/v1.11.2/amd64/openstack.raw")
    assert resp.code == 503 and "disabled" in json.loads(body)["error"]
    resp, body = await memory.get("/healthz")
    assert resp.code == 200
    assert sum(memory.fake.counts.values()) == 0


@pytest_twisted.ensureDeferred
async def test_catalog_discovery(memory):
    resp, body = await memory.get("/images/talos/latest/extensions")
    doc = json.loads(body)
    assert doc["version"] == "v1.11.2"
    assert {"name": "siderolabs/qemu-guest-agent", "short": "qemu-guest-agent"} in doc["extensions"]
    resp, body = await memory.get("/images/talos/v1.11.2/overlays")
    assert {"name": "rpi_generic", "image": "siderolabs/sbc-raspberrypi"} in json.loads(body)["overlays"]


@pytest_twisted.ensureDeferred
async def test_versions_listing(memory):
    resp, body = await memory.get("/images/talos/versions")
    doc = json.loads(body)
    assert resp.code == 200 and doc["latest"] == "v1.11.2" and "v1.11.2" in doc["versions"]
    assert header(resp, "Content-Type") == "application/json"


@pytest_twisted.ensureDeferred
async def test_catalog_of_a_bad_version_is_400(memory):
    resp, body = await memory.get("/images/talos/v1.x/extensions")
    assert resp.code == 400 and json.loads(body)["status"] == 400


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(memory):
    resp, body = await memory.get("/healthz")
    assert resp.code == 200 and json.loads(body) == {"status": "ok"}
    resp, body = await memory.get("/metrics")
    assert resp.code == 200 and b"talos_cache_entries" in body


@pytest.mark.stack(default_extensions=("qemu-guest-agnt",))
@pytest_twisted.ensureDeferred
async def test_an_unknown_default_extension_is_named(memory):
    resp, body = await memory.get("/images/talos/v1.11.2/amd64/openstack.raw")
    doc = json.loads(body)
    assert resp.code == 404 and "qemu-guest-agnt" in doc["error"]
