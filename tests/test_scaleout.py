"""bench/scaleout --quick: three daemons behind nginx (docs/scaling.md's configuration, consistent
hash) serve distinct images to many clients at once; every body matches its `.sha256` and each
image is fetched from the (fake) factory exactly once in total. nginx is installed by .ci/run
(bench/run needs it too): no skip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import pytest_twisted
from treq.testing import StubTreq

from talos_twisted.testing.fakefactory import FakeFactory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALEOUT = os.path.join(REPO, "bench", "scaleout")


def scaleout(*args: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, SCALEOUT, "--quick", *args], capture_output=True, text=True, timeout=85,
                       cwd=REPO, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.timeout(90)
def test_each_image_is_fetched_once_behind_nginx():
    code, out = scaleout()
    assert code == 0, out[-6000:]
    assert "every image fetched once from the factory" in out and "all bodies correct" in out, out[-6000:]
    rows = re.findall(r"^\| (v1\.[^|]*?) +\| (node\d) +\|[^|]*\| (\d+)/(\d+) +\| (node\d) +\| (\d+) +\|", out, re.M)
    assert len(rows) == 6, out[-6000:]
    for image, node, ok, n, sha_node, gets in rows:
        assert ok == n and sha_node == node and gets == "1", image
    assert re.search(r": 6 image GET\(s\) for 6 images", out), out[-6000:]


@pytest.mark.timeout(90)
def test_a_node_down_moves_only_its_images():
    code, out = scaleout("--fail-node")
    assert code == 0, out[-6000:]
    assert re.search(r"fail-over: only node\d's \d image\(s\) moved, each fetched once more", out), out[-6000:]


# lines of the documented configuration that differ from the bench's by nature: addresses
_SITE_SPECIFIC = ("listen", "server", "server_name", "bind")


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith("#") and line.split()[0] not in _SITE_SPECIFIC:
            out.append(line)
    return out


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_the_documented_configuration_is_the_one_tested(proxy):
    """Every line of docs/scaling.md's nginx / HAProxy block (but addresses) is in the
    configuration bench/scaleout runs."""
    with open(os.path.join(REPO, "docs", "scaling.md"), encoding="utf-8") as f:
        blocks = re.findall(rf"^```{proxy}\n(.*?)^```", f.read(), re.S | re.M)
    assert len(blocks) == 1, f"one {proxy} block in docs/scaling.md"
    r = subprocess.run([sys.executable, SCALEOUT, "--print-config", proxy], capture_output=True, text=True,
                       timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    tested = set(_lines(r.stdout))
    assert [line for line in _lines(blocks[0]) if line not in tested] == []


@pytest_twisted.ensureDeferred
async def test_the_fake_factory_tells_what_it_was_asked():
    """GET /_fake/requests (the fake's only, read-only): what bench/scaleout counts fetches with."""
    fake = FakeFactory()
    http = StubTreq(fake.resource())
    base = "http://fake.example"
    await (await http.get(f"{base}/versions")).content()
    await (await http.get(f"{base}/versions?x=1")).content()
    resp = await http.post(f"{base}/schematics", data=b"customization: {}\n")
    sid = json.loads(await resp.content())["id"]
    await (await http.get(f"{base}/image/{sid}/v1.11.2/metal-amd64.raw.zst")).content()
    resp = await http.get(f"{base}/_fake/requests")
    assert resp.code == 200
    doc = json.loads(await resp.content())
    assert doc["requests"]["GET /versions"] == 2  # paths without the query
    assert doc["requests"]["POST /schematics"] == 1
    assert doc["requests"][f"GET /image/{sid}/v1.11.2/metal-amd64.raw.zst"] == 1
    assert doc["counts"]["image_get"] == 1
    assert (await http.post(f"{base}/_fake/requests", data=b"")).code == 405
