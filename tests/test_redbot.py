"""REDbot, the HTTP linter, finds nothing bad in the daemon's answers.

REDbot (from the `test` extra) runs as a child process, `redbot -o har URL` plus a method and
request headers (DRIVER), against the daemon and the fake factory on 127.0.0.1; besides the
request it makes its own (a Range, If-None-Match, If-Modified-Since, Accept-Encoding: gzip) and
lints each answer. It needs no network beyond the URL. A miss is checked while the image
downloads (the fake rate-limited), and so is a `.sha256` that waits for the end of the download.
"""

import importlib.util
import json
import os
import shutil
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue


from .conftest import MiB
from .rawhttp import exchange
from .test_miss_like_hit import PATH, running, slow

async def downloading(stack):
    """Start the download of PATH (a HEAD waits for the size only) and return it, still running."""
    _, _, download = await running(stack)
    return download


def _flatten(notes):
    for note in notes:
        yield note
        yield from _flatten(note.get("subnotes") or [])


# redbot.cli's main() with a method and request headers, which its command line lacks
DRIVER = """
import json, sys
from configparser import ConfigParser
import thor
from redbot.formatter import find_formatter
from redbot.resource import HttpResource
url, method, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
parser = ConfigParser()
parser.read_dict({"redbot": {"enable_local_access": "True"}})
config = parser["redbot"]
resource = HttpResource(config)
resource.set_request(url, method, [tuple(h) for h in headers])
formatter = find_formatter("har")(config, resource, sys.stdout.write, {"tty_out": False, "descend": False})
formatter.bind_resource(resource)
formatter.on("formatter_done", thor.stop)
resource.check()
thor.run()
"""


async def redbot(url, method="GET", headers=()):
    """REDbot's HAR of `url`: (the main response, its notes), without blocking the reactor."""
    assert importlib.util.find_spec("redbot"), "REDbot is needed for these tests (the test extra installs it)"
    args = (url, method, json.dumps([list(h) for h in headers]))
    out, err, code = await getProcessOutputAndValue(
        shutil.which("timeout"),
        ("-k", "5", "50", sys.executable, "-c", DRIVER, *args),
        env=dict(os.environ),
        reactor=reactor,
    )
    text = out.decode(errors="replace")
    assert code == 0, f"redbot exited {code}: {err.decode(errors='replace')}"
    har = json.loads(text)["log"]
    assert har["entries"] and "_red_error" not in har, f"redbot got no complete response: {text}"
    entry = har["entries"][0]
    return entry["response"], list(_flatten(entry["_red_messages"]))


def assert_nothing_bad(response, notes, allowed=()):
    bad = [n for n in notes if n["level"] == "BAD" and n["note_id"] not in allowed]
    report = "\n".join(f"  {n['level']:5} {n['category']:12} {n['note_id']}: {n['summary']}" for n in notes)
    headers = "\n".join(f"  {h['name']}:{h['value']}" for h in response["headers"])
    assert not bad, f"REDbot found {len(bad)} bad:\n{report}\nresponse {response['status']}:\n{headers}"


def header(response, name):
    [value] = [h["value"].strip() for h in response["headers"] if h["name"].lower() == name]
    return value


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_hit(stack):
    status, _, _ = await exchange(stack.url, PATH)
    assert status == 200
    response, notes = await redbot(stack.url + PATH)
    assert_nothing_bad(response, notes)
    assert response["status"] == 200 and header(response, "x-talos-cache") == "HIT"
    ids = {n["note_id"] for n in notes}
    assert {"RANGE_CORRECT", "INM_304", "IMS_304"} <= ids, notes


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_miss_while_downloading(stack):
    slow(stack, 4)
    download = await downloading(stack)
    response, notes = await redbot(stack.url + PATH)
    assert_nothing_bad(response, notes)
    # JOIN: a miss served from the download the HEAD started
    assert response["status"] == 200 and header(response, "x-talos-cache") == "JOIN"
    assert header(response, "content-length") == str(4 * MiB)
    await download.ended.when()


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_sha256_that_waited_for_the_download(stack):
    slow(stack, 4)
    download = await downloading(stack)
    response, notes = await redbot(stack.url + PATH + ".sha256")
    assert download.ended.fired
    assert_nothing_bad(response, notes)
    assert response["status"] == 200 and "INM_304" in {n["note_id"] for n in notes}, notes


@pytest_twisted.ensureDeferred
async def test_healthz(stack):
    response, notes = await redbot(stack.url + "/healthz")
    assert_nothing_bad(response, notes)
    assert response["status"] == 200


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_range_on_a_miss_while_downloading(stack):
    slow(stack, 4)
    download = await downloading(stack)
    response, notes = await redbot(stack.url + PATH, headers=[("Range", "bytes=1024-2047")])
    assert not download.ended.fired, "the range must be answered while the image downloads"
    assert_nothing_bad(response, notes)
    assert response["status"] == 206 and header(response, "content-range") == f"bytes 1024-2047/{4 * MiB}"
    await download.ended.when()


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_head_on_a_miss(stack):
    slow(stack, 4)
    response, notes = await redbot(stack.url + PATH, "HEAD")
    [download] = stack.app.downloads.active()
    assert not download.ended.fired
    assert_nothing_bad(response, notes)
    assert response["status"] == 200 and header(response, "content-length") == str(4 * MiB)
    await download.ended.when()


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_conditional_and_range_answers_of_a_hit(stack):
    await exchange(stack.url, PATH)
    await stack.sealed()
    _, headers, _ = await exchange(stack.url, PATH, "HEAD")
    etag = headers["etag"]
    response, notes = await redbot(stack.url + PATH, headers=[("If-None-Match", etag)])
    assert_nothing_bad(response, notes)
    assert response["status"] == 304
    response, notes = await redbot(stack.url + PATH, headers=[("If-Range", etag), ("Range", "bytes=5-9")])
    assert_nothing_bad(response, notes)
    assert response["status"] == 206 and header(response, "content-range") == f"bytes 5-9/{4 * MiB}"
    response, notes = await redbot(stack.url + PATH, headers=[("Range", f"bytes={4 * MiB}-")])
    assert_nothing_bad(response, notes)
    assert response["status"] == 416 and header(response, "content-range") == f"bytes */{4 * MiB}"
    # httplint wants a Content-Range in the header section of every 206; RFC 9110 section 14.6
    # forbids one there in a multipart/byteranges answer (each part has its own)
    response, notes = await redbot(stack.url + PATH, headers=[("Range", "bytes=0-10,100-200")])
    assert_nothing_bad(response, notes, allowed={"PARTIAL_WITHOUT_RANGE"})
    assert response["status"] == 206 and header(response, "content-type").startswith("multipart/byteranges;")
    assert not [h for h in response["headers"] if h["name"].lower() == "content-range"]
