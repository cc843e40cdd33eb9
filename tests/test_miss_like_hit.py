"""A miss that clients cannot tell from a hit: the size known early, ranges while downloading.

Over real sockets against the rate-limited fake factory, so the image is still downloading
while each client asks; every body is compared byte for byte with the fake's image.
"""

import hashlib
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

from talos_twisted import zstdformat
from talos_twisted.schematic import Schematic

from .conftest import MiB
from .rawhttp import exchange, open_raw

EMPTY_ID = Schematic().id
PATH = "/images/talos/v1.11.2/amd64/openstack.raw"


def slow(stack, seconds):
    """Rate-limit the fake so the whole compressed body takes about `seconds`."""
    compression = stack.config.talos.compression
    size = len(stack.fake.compressed_image(EMPTY_ID, "v1.11.2", "openstack", "amd64", compression))
    stack.fake.rate_limit = max(64, size // seconds)


async def running(stack):
    """Start the download of PATH (with a HEAD, which waits for the size) and return it."""
    status, headers, _ = await exchange(stack.url, PATH, "HEAD")
    [download] = stack.app.downloads.active()
    assert not download.ended.fired, "the fake must be slow enough for the image to be downloading"
    return status, headers, download


async def tool(*args, env=None):
    """Run a real client without blocking the reactor (which serves it), killed after 90 s."""
    exe = shutil.which(args[0])
    assert exe, f"{args[0]} is needed for these tests (.ci/run installs it)"
    out, err, code = await getProcessOutputAndValue(
        shutil.which("timeout"), ("-k", "5", "90", exe, *args[1:]), env=env or dict(os.environ), reactor=reactor
    )
    return code, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_head_on_a_zst_miss_has_the_final_content_length(stack):
    slow(stack, 8)
    status, headers, download = await running(stack)
    assert status == 200 and headers["content-length"] == str(16 * MiB)
    assert headers["accept-ranges"] == "bytes" and headers["x-talos-cache"] == "MISS"
    assert "transfer-encoding" not in headers and "etag" not in headers
    stack.fake.rate_limit = 0
    await download.ended.when()


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_get_on_a_miss_has_content_length_not_chunks(stack):
    slow(stack, 8)
    status, headers, body = await exchange(stack.url, PATH)
    assert status == 200 and headers["content-length"] == str(16 * MiB) and "transfer-encoding" not in headers
    assert body == stack.expected(EMPTY_ID)


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_ranges_on_a_miss_at_the_start_beyond_what_is_written_and_multipart(stack):
    slow(stack, 8)
    _, _, download = await running(stack)
    full = stack.expected(EMPTY_ID)
    size = len(full)
    first = await exchange(stack.url, PATH, headers={"Range": "bytes=0-1023"})
    assert first[0] == 206 and first[1]["content-range"] == f"bytes 0-1023/{size}" and first[2] == full[:1024]
    assert first[1]["x-talos-cache"] == "JOIN"
    # the middle and the end: not written yet when asked, served as the download gets there
    assert download.available < size - 4096
    tail = Deferred.fromCoroutine(exchange(stack.url, PATH, headers={"Range": f"bytes={size - 4096}-"}))
    multi = Deferred.fromCoroutine(
        exchange(stack.url, PATH, headers={"Range": f"bytes=10-19,{size // 2}-{size // 2 + 99}"})
    )
    slow(stack, 8)
    status, headers, body = await tail
    assert status == 206 and headers["content-range"] == f"bytes {size - 4096}-{size - 1}/{size}"
    assert body == full[-4096:]
    status, headers, body = await multi
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(headers["content-length"]) == len(body)
    assert full[10:20] in body and full[size // 2:size // 2 + 100] in body
    # beyond the size: 416, at once
    status, headers, _ = await exchange(stack.url, PATH, headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_waiting_ranged_client_does_not_slow_the_download_or_others(stack):
    slow(stack, 8)
    _, _, download = await running(stack)
    size = 16 * MiB
    # a client asking for the end, which then reads nothing
    stalled = await open_raw(stack.url, PATH, headers={"Range": f"bytes={size - MiB}-"})
    stalled.pause()
    stack.fake.rate_limit = 0
    status, _, body = await exchange(stack.url, PATH)
    assert status == 200 and body == stack.expected(EMPTY_ID)
    await download.ended.when()
    assert download.state.value == "committed"
    stalled.transport.abortConnection()
    await stalled.closed


@pytest.mark.stack(image_size=8 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_lying_content_size_fails_cleanly_and_the_next_download_does_not_trust_it(
    stack, monkeypatch, download_failures
):
    real = zstdformat.frame_content_size
    monkeypatch.setattr(zstdformat, "frame_content_size", lambda head: 12 * MiB)
    client = await open_raw(stack.url, PATH)
    await client.closed
    # it answered with the lie's length, then the body contradicted it: aborted, short
    status, headers = client.head()
    assert status == 200 and headers["content-length"] == str(12 * MiB)
    assert len(client.split()[1]) < 12 * MiB and not client.closed_cleanly
    await stack.app.downloads.quiesce()
    assert download_failures == [
        "the image factory declared a raw size of 12582912 bytes, but the image holds 8388608 bytes"
    ]
    assert not list((stack.tmp_path / "cache" / "images").rglob("*.raw"))
    monkeypatch.setattr(zstdformat, "frame_content_size", real)
    status, headers, body = await exchange(stack.url, PATH)
    assert status == 200 and body == stack.expected(EMPTY_ID) and "content-length" not in headers


@pytest.mark.stack(image_size=8 * MiB, compression="xz")
@pytest_twisted.ensureDeferred
async def test_xz_without_upstream_range_streams_chunked_and_head_has_no_length(stack):
    slow(stack, 8)
    status, headers, download = await running(stack)
    assert status == 200 and "content-length" not in headers
    stack.fake.rate_limit = 0
    status, headers, body = await exchange(stack.url, PATH)
    assert headers.get("transfer-encoding") == "chunked" and body == stack.expected(EMPTY_ID)


@pytest.mark.stack(image_size=8 * MiB, compression="xz")
@pytest_twisted.ensureDeferred
async def test_xz_behind_a_range_capable_redirect_knows_its_size_from_the_index(stack):
    stack.fake.redirect = True
    slow(stack, 8)
    status, headers, download = await running(stack)
    assert status == 200 and headers["content-length"] == str(8 * MiB)
    ranges = [h.get("range") for m, p, h in stack.fake.requests if p.startswith("/blob/") and h.get("range")]
    assert len(ranges) == 1 and ranges[0].endswith(f"-{len(stack.fake.compressed_image(EMPTY_ID, 'v1.11.2', 'openstack', 'amd64', 'xz')) - 1}")
    stack.fake.rate_limit = 0
    await download.ended.when()


@pytest.mark.stack(image_size=8 * MiB)
@pytest_twisted.ensureDeferred
async def test_checksum_has_its_own_etag_length_and_304(stack):
    await exchange(stack.url, PATH)
    status, headers, body = await exchange(stack.url, PATH + ".sha256")
    digest = hashlib.sha256(stack.expected(EMPTY_ID)).hexdigest()
    assert status == 200 and body == f"{digest}  openstack.raw\n".encode()
    assert headers["content-length"] == str(len(body))
    _, image_headers, _ = await exchange(stack.url, PATH, "HEAD")
    assert headers["etag"] != image_headers["etag"] and headers["etag"].startswith('"')
    status, again, body = await exchange(stack.url, PATH + ".sha256", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""


@pytest_twisted.ensureDeferred
async def test_cache_control_of_operator_and_discovery_routes(stack):
    for path in ("/healthz", "/readyz", "/metrics", "/images/talos/cache", "/status.json"):
        _, headers, _ = await exchange(stack.url, path)
        assert headers["cache-control"] == "no-store", path
    for path in ("/images/talos/versions", "/images/talos/latest/extensions", "/images/talos/latest/overlays"):
        _, headers, _ = await exchange(stack.url, path)
        assert headers["cache-control"] == "max-age=60", path
    _, headers, _ = await exchange(stack.url, PATH)
    assert headers["cache-control"] == "max-age=86400"


@pytest.mark.stack(first_byte_timeout=1.5)
@pytest_twisted.ensureDeferred
async def test_a_delayed_answer_is_dated_when_sent(stack):
    from email.utils import parsedate_to_datetime

    stack.fake.build_delay = 30.0
    sent = reactor.seconds()
    status, headers, _ = await exchange(stack.url, PATH)
    assert status == 503
    # Date has whole seconds: stamped on arrival it would be before sent + 1.5 - 1
    assert parsedate_to_datetime(headers["date"]).timestamp() >= int(sent + 1.5)
    stack.fake.abort_all()
    await stack.app.downloads.quiesce()


# --- the tools operators use ---------------------------------------------------------------


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_qemu_img_info_and_convert_on_a_miss(stack, tmp_path):
    slow(stack, 8)
    url = stack.url + PATH
    code, out, err = await tool("qemu-img", "info", "--output=json", url)
    assert code == 0, err
    assert f'"virtual-size": {16 * MiB}' in out
    out_file = tmp_path / "converted.raw"
    # -m 1: qemu 7.2's curl driver hangs at the end with its default of 8 requests in
    # flight, against nginx serving a plain file too
    code, out, err = await tool("qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", url, str(out_file))
    assert code == 0, err
    assert out_file.read_bytes() == stack.expected(EMPTY_ID)


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_curl_resumes_with_dash_c_while_the_daemon_downloads(stack, tmp_path):
    slow(stack, 8)
    _, _, download = await running(stack)
    out_file = tmp_path / "image.raw"
    full = stack.expected(EMPTY_ID)
    out_file.write_bytes(full[: 3 * MiB + 17])  # what an interrupted curl left behind
    code, out, err = await tool(
        "curl", "--noproxy", "*", "-sS", "-f", "--max-time", "60", "-C", "-", "-o", str(out_file), stack.url + PATH
    )
    assert code == 0, err
    assert out_file.read_bytes() == full
    assert not download.ended.fired or download.state.value == "committed"


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_aria2c_splits_a_miss_and_checks_the_sha256(stack, tmp_path):
    slow(stack, 8)
    digest = hashlib.sha256(stack.expected(EMPTY_ID)).hexdigest()
    code, out, err = await tool(
        "aria2c", "-x", "8", "-s", "8", "-k", "1M", "--allow-overwrite=true", "--auto-file-renaming=false",
        "--console-log-level=warn", "--summary-interval=0", f"--checksum=sha-256={digest}",
        "-d", str(tmp_path), "-o", "image.raw", stack.url + PATH,
    )
    assert code == 0, out + err
    assert (tmp_path / "image.raw").read_bytes() == stack.expected(EMPTY_ID)
