"""The daemon's /metrics move as it serves images and meets faults (the wiring, end to end)."""

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MiB
from .rawhttp import exchange

PATH = "/images/talos/v1.11.2/amd64/openstack.raw"

async def samples(stack):
    status, _, body = await exchange(stack.url, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out

def total(found, name, **labels):
    return sum(v for (n, ls), v in found.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))

@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_downloads_upstream_calls_and_failures(stack, download_failures):
    before = await samples(stack)
    assert total(before, "talos_downloads_committed_total") == 0
    await exchange(stack.url, PATH)  # a miss
    await stack.app.downloads.quiesce()
    await exchange(stack.url, PATH)  # a hit
    await exchange(stack.url, PATH + ".sha256")
    stack.fake.corrupt_next()
    await exchange(stack.url, PATH + "?extensions=qemu-guest-agent")
    await stack.app.downloads.quiesce()
    after = await samples(stack)
    assert total(after, "talos_http_requests_total", route="image", status="200", cache="miss") == 1
    assert total(after, "talos_http_requests_total", route="image", status="200", cache="hit") == 1
    assert total(after, "talos_downloads_committed_total") == 1
    assert total(after, "talos_downloads_failed_total", reason="upstream_corrupt") == 1
    assert total(after, "talos_upstream_requests_total", kind="image", outcome="ok") == 2
    assert total(after, "talos_upstream_requests_total", kind="versions", outcome="ok") >= 1
    assert total(after, "talos_upstream_bytes_total") > 0
    assert total(after, "talos_cache_entries") == 1
    assert total(after, "talos_http_response_bytes_total", route="image") >= 2 * 4 * MiB
    assert download_failures and "corrupt" in download_failures[0]
