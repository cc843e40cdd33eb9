"""Log output (talos_twisted.logs): the access-log event of the server layer, JSON and text
observers, twistd's --logger and Application-component paths, and progress fields."""

import io
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.web.server import Site

from talos_twisted.logs import (
    MAX_LOGGED_TARGET, LoggingRoot, json_line, json_logger, json_observer, observer_for, progress_line,
    text_observer,
)

from .rawhttp import RawClient, request_bytes
from .test_httpserver import answer, closed, until
from .test_metrics import IMAGE, SCHEMATIC, Images, served  # noqa: F401  (served: a fixture)

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"  # the venv running the tests


@pytest.fixture
def events():
    """Every event published during the test."""
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def access(events):
    return [e for e in events if e.get("log_namespace") == "talos_twisted.access"]


# --- the access log ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_access_event_per_request_with_its_fields(served, events):
    s = await served()
    client = await s.exchange(request_bytes("GET", IMAGE + "?extensions=siderolabs/iscsi-tools",
                                            headers={"User-Agent": "curl/8.5"}))
    assert answer(client)[0] == 200
    [event] = access(events)
    assert {k: event[k] for k in (
        "client", "method", "path", "route", "status", "bytes", "cache", "version", "schematic", "user_agent",
        "completed",
    )} == {
        "client": "127.0.0.1", "method": "GET", "path": IMAGE + "?extensions=siderolabs/iscsi-tools",
        "route": "image", "status": 200, "bytes": 1000, "cache": "HIT", "version": "v1.11.2",
        "schematic": SCHEMATIC, "user_agent": "curl/8.5", "completed": True,
    }
    assert event["duration"] == 0.0  # the site's clock did not move
    assert event["log_level"] is LogLevel.info
    text = formatEvent(event)
    assert text.startswith(f'127.0.0.1 "GET {IMAGE}?extensions=') and " 200 1000 " in text and "HIT" in text


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_one_event_each_and_nothing_else_logs_them(served, events):
    s = await served()
    keep = request_bytes("GET", "/healthz", close=False)
    client = await s.exchange(keep + request_bytes("HEAD", IMAGE, close=False) + request_bytes("GET", "/nope"))
    assert client.data.count(b"HTTP/1.1 ") == 3
    got = access(events)
    assert [(e["method"], e["route"], e["status"], e["bytes"]) for e in got] == [
        ("GET", "healthz", 200, 17), ("HEAD", "image", 200, 0), ("GET", "other", 404, 3),
    ]
    assert got[0]["cache"] is None and got[0]["version"] is None and got[0]["schematic"] is None
    others = [formatEvent(e) for e in events if e.get("log_namespace") != "talos_twisted.access"]
    assert not [t for t in others if "/healthz" in t or "HTTP/1.1" in t], "twisted.web's combined line is off"


@pytest_twisted.ensureDeferred
async def test_twisted_webs_own_access_line_is_what_we_replace(events):
    # the control for the test above: a plain Site does log a combined line for a request
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Images()))
    try:
        from .rawhttp import connect
        client = await connect(f"http://127.0.0.1:{port.getHost().port}", RawClient(request_bytes("GET", "/healthz")))
        await closed(client)
        await until(lambda: any('"GET /healthz HTTP/1.1"' in formatEvent(e) for e in events), what="the line")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_duration_and_a_client_gone_mid_answer(served, events):
    s = await served()
    client = await s.connect(request_bytes("GET", "/hold"))
    await until(lambda: s.resource.held)
    request = s.resource.held[0]
    request.write(b"part of it")
    s.clock.advance(1.25)
    client.transport.abortConnection()
    await until(lambda: access(events), what="the access event")
    [event] = access(events)
    assert event["completed"] is False and event["duration"] == 1.25 and event["bytes"] == 10
    assert "connection lost" in formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_a_long_target_is_cut_and_a_refused_request_is_not_an_access_event(served, events):
    s = await served()
    long = "/x?" + "a" * 5000
    await s.get(long)
    [event] = access(events)
    assert event["path"].startswith(long[:MAX_LOGGED_TARGET]) and len(event["path"]) < MAX_LOGGED_TARGET + 40
    client = await s.exchange(b"GET /" + b"b" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer(client)[0] == 414
    client = await s.exchange(b"GET /x HTTP/1.1\r\n\r\n")  # no Host
    assert answer(client)[0] == 400
    assert len(access(events)) == 1, "refusals have their own (throttled) event"
    assert any(e.get("limit") == "max_request_line" for e in events)


# --- JSON lines -------------------------------------------------------------------------------


def lines_of(stream):
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_observer_writes_one_flat_object_per_event():
    out = io.StringIO()
    log = Logger(namespace="talos_twisted.download", observer=json_observer(out))
    log.info("cached {key}: {size} bytes", key="v1.11.2/amd64/x", size=4096)
    log.warn("odd: {what}\nsecond line", what=b"bytes\xff", message="a field named message",
             obj=object(), nan=float("nan"), nested={"a": [1, 2.5, None, True]})
    first, second = lines_of(out)
    assert first["message"] == "cached v1.11.2/amd64/x: 4096 bytes"
    assert first["level"] == "info" and first["namespace"] == "talos_twisted.download"
    assert first["key"] == "v1.11.2/amd64/x" and first["size"] == 4096
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert not [k for k in first if k.startswith("log_")]
    assert second["level"] == "warn" and second["message"].endswith("\nsecond line")
    assert second["what"] == "bytes\ufffd", "bytes become text"
    assert second["event_message"] == "a field named message", "our keys are never overwritten"
    assert second["nested"] == {"a": [1, 2.5, None, True]}
    assert "obj" not in second and "nan" not in second, "what JSON cannot carry is left out"


def test_a_failure_is_one_line_with_its_traceback():
    out = io.StringIO()
    log = Logger(namespace="t", observer=json_observer(out))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.failure("writing {key} failed", key="k")
    [doc] = lines_of(out)
    assert doc["level"] == "critical" and doc["message"] == "writing k failed" and doc["key"] == "k"
    assert doc["exception"] == "RuntimeError: boom"
    assert doc["traceback"].startswith("Traceback") and "raise RuntimeError" in doc["traceback"]


def test_legacy_events_and_failures_are_flat_too(observe_errors):
    out = io.StringIO()
    observer = json_observer(out)
    globalLogPublisher.addObserver(observer)
    try:
        legacy_log.msg("Site starting on %d" % 8080, port=8080)
        legacy_log.err(Failure(ValueError("legacy boom")), "while starting")
    finally:
        globalLogPublisher.removeObserver(observer)
        observe_errors.clear()  # the legacy error above is this test's own
    msg, err = [d for d in lines_of(out) if d["namespace"] == "log_legacy"]
    assert msg["message"] == "Site starting on 8080" and msg["port"] == 8080
    assert not {"isError", "format", "why", "event_message", "event_time", "system"} & set(msg)
    assert err["message"] == "while starting" and err["exception"] == "ValueError: legacy boom"
    assert "Traceback" in err["traceback"] and "Traceback" not in err["message"]


def test_an_unformattable_event_still_makes_a_line():
    out = io.StringIO()
    json_observer(out)({"log_format": "{missing", "log_time": 0.0, "log_level": LogLevel.info})
    [doc] = lines_of(out)
    assert doc["time"] == "1970-01-01T00:00:00.000Z" and "Unable to format" in doc["message"]


def test_json_line_takes_any_event():
    doc = json.loads(json_line({"weird": {1: 2}, "ok": [1, (2, 3)]}))
    assert doc["level"] == "info" and doc["ok"] == [1, [2, 3]] and "weird" not in doc


def test_text_observer_writes_twisted_text():
    out = io.StringIO()
    Logger(namespace="t", observer=text_observer(out)).info("hello {who}", who="you")
    assert out.getvalue().rstrip().endswith("[t#info] hello you")


def test_observer_for_a_log_format():
    assert ILogObserver.providedBy(observer_for("json")) and ILogObserver.providedBy(json_logger())
    assert observer_for("text") is None
    with pytest.raises(ValueError):
        observer_for("xml")


def test_logging_root_gives_twistds_application_its_observer():
    observer = json_observer(io.StringIO())
    app = service.Application("talos-images")
    root = LoggingRoot(observer)
    root.setServiceParent(app)
    assert app.getComponent(ILogObserver) is observer
    assert root in list(service.IServiceCollection(app))
    plain = service.Application("talos-images")
    LoggingRoot(None).setServiceParent(plain)
    assert plain.getComponent(ILogObserver) is None, "text: twistd's own observer"


# --- twistd -------------------------------------------------------------------------------------


def run_twistd(args, until_text, tmp_path, running=None, deadline=60.0):
    """Run twistd, SIGTERM it once its stdout contains `until_text` and `running(stdout)`
    returned (the reactor runs: it has its signal handlers); (stdout lines, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [str(TWISTD), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = bytearray(), bytearray()
    end = time.monotonic() + deadline
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            signalled = False
            while sel.get_map():
                left = end - time.monotonic()
                assert left > 0, f"twistd did not {'stop' if signalled else 'start'} in time: {bytes(out)!r}"
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    key.data.extend(chunk)
                if not signalled and until_text.encode() in out:
                    if running is not None:
                        running(bytes(out))
                    proc.send_signal(signal.SIGTERM)
                    signalled = True
            assert signalled, f"twistd exited before {until_text!r}: {bytes(out + err)!r}"
        # twistd stopped by a signal ends by re-raising it, so its status tells the signal
        assert proc.wait(max(0.1, end - time.monotonic())) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return bytes(out).decode().splitlines(), bytes(err).decode()


def fetch_versions(out):
    """GET /versions of the fake factory, whose port the JSON line 'Site starting on N' says."""
    [port] = [json.loads(line)["message"].split()[-1] for line in out.decode().splitlines() if "Site starting on" in line]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/versions", timeout=30) as resp:
        assert resp.status == 200


def test_twistd_with_the_json_logger_prints_only_json_lines(tmp_path):
    lines, err = run_twistd(
        ["--logger", "talos_twisted.logs.json_logger", "-n", "--pidfile=", "talos-fake-factory", "--listen", "tcp:0"],
        "Site starting on", tmp_path, running=fetch_versions,
    )
    docs = [json.loads(line) for line in lines]  # every line is JSON
    messages = [d["message"] for d in docs]
    assert any(m.startswith("twistd ") and "starting up" in m for m in messages)
    assert any(m.startswith("Site starting on") for m in messages)
    assert any('"GET /versions HTTP/1.1" 200' in m for m in messages), "twisted.web's access line, as JSON"
    assert messages[-1] == "Server Shut Down.", "stopped by its SIGTERM handler"
    assert all({"time", "level", "namespace", "message"} <= set(d) for d in docs)
    assert err == ""


TAC = """
import sys
from twisted.application import service
from twisted.logger import Logger
from talos_twisted.logs import LoggingRoot, observer_for

class Noisy(service.Service):
    log = Logger(namespace="tac")

    def startService(self):
        service.Service.startService(self)
        print("printed to stdout")
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("a failure at {where}", where="start")
        self.log.info("started {n} things", n=3)
        from twisted.internet import reactor
        reactor.callWhenRunning(self.log.info, "running")  # signal handlers are installed

application = service.Application("t")
root = LoggingRoot(observer_for("json"))
root.setServiceParent(application)
Noisy().setServiceParent(root)
"""


def test_a_logging_root_makes_twistd_print_json_lines(tmp_path):
    (tmp_path / "app.tac").write_text(TAC)
    lines, err = run_twistd(["-n", "--pidfile=", "-y", "app.tac"], '"message": "running"', tmp_path)
    docs = [json.loads(line) for line in lines]
    [failure] = [d for d in docs if d["message"] == "a failure at start"]
    assert failure["where"] == "start" and "ZeroDivisionError" in failure["traceback"]
    assert any(d["message"] == "printed to stdout" for d in docs), "stdout is redirected into the log"
    assert any(d["message"] == "started 3 things" and d["n"] == 3 for d in docs)
    assert docs[-1]["message"] == "Server Shut Down.", "stopped by its SIGTERM handler"
    assert err == ""


# --- progress ------------------------------------------------------------------------------------


@pytest.mark.parametrize("done, size, elapsed, expect", [
    (0, None, 0.0, {"bytes": 0, "size": None, "percent": None, "rate": 0, "eta": None}),
    (50 * 2**20, None, 10.0, {"bytes": 50 * 2**20, "size": None, "percent": None, "rate": 5 * 2**20, "eta": None}),
    (256 * 2**20, 1024 * 2**20, 16.0, {"percent": 25.0, "rate": 16 * 2**20, "eta": 48.0}),
    (1024, 1024, 2.0, {"percent": 100.0, "rate": 512, "eta": 0.0}),
    (0, 4096, 5.0, {"percent": 0.0, "rate": 0, "eta": None}),
    (5000, 4096, 1.0, {"percent": 100.0, "eta": 0.0}),
])
def test_progress_line(done, size, elapsed, expect):
    got = progress_line(done, size, elapsed)
    assert {k: got[k] for k in expect} == expect
    json.dumps(got)


def test_progress_line_in_words():
    assert progress_line(256 * 2**20, 2**30, 16.0)["progress"] == "256.0 MiB of 1.0 GiB (25.0%), 16.0 MiB/s, ETA 48s"
    assert progress_line(100, None, 1.0)["progress"] == "100 B, 100 B/s"
