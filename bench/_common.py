"""Shared helpers of bench/run: children, HTTP(S), the fake factory and the daemon, /proc.

Every child process is started through `Procs`, which kills it on normal exit, on an
exception, on SIGTERM/SIGINT, on the overall `--timeout` alarm, and (PR_SET_PDEATHSIG)
when the bench itself is killed. Everything listens on 127.0.0.1 on ports found by
binding port 0; temporary data lives in one mkdtemp directory removed at the end.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection, HTTPSConnection
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
VERSION = "v1.11.2"
ARCH = "amd64"
PLATFORM = "openstack"
# Extensions of the images the bench asks the daemon for: one image per extension (B7 needs
# four different images downloading at once). POSTing the schematic the daemon builds for
# ?extensions=NAME (canonical YAML, see talos_twisted/schematic.py) to the fake gives the
# same schematic ID, so the fake's compressed body is built ("pre-warmed") before the
# daemon asks for it.
EXTENSIONS = ("qemu-guest-agent", "iscsi-tools", "util-linux-tools", "amd-ucode")

KiB, MiB, GiB = 1024, 1024**2, 1024**3
MB = 1000 * 1000
_UNITS = {"": 1, "B": 1, "K": KiB, "KIB": KiB, "M": MiB, "MIB": MiB, "G": GiB, "GIB": GiB,
          "KB": 1000, "MB": 1000**2, "GB": 1000**3}


class BenchFailure(Exception):
    """A correctness failure (wrong bytes, wrong status, a child that died): exit code 1."""


def parse_size(text: str) -> int:
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if unit not in _UNITS or not num:
        raise ValueError(f"bad size {text!r} (e.g. 1GiB, 512MiB, 1073741824)")
    return int(float(num) * _UNITS[unit])


def fmt_size(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def twistd_path() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "twistd")
    return here if os.path.exists(here) else (shutil.which("twistd") or "twistd")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # with the editable install, twistd finds the plugins (twisted/plugins/) only this way
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    for k in [k for k in env if k.startswith("TALOS_")]:
        del env[k]  # only what the bench sets
    env.update(extra or {})
    return env


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Procs:
    """Children of this bench; all are killed by `kill_all` (also via atexit / signals)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.kill_all)

    def start(self, args: Sequence[str], *, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL,
              stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(args), stdout=stdout, stderr=stderr, stdin=stdin, env=env, cwd=cwd,
                             preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def forget(self, p: subprocess.Popen[bytes]) -> None:
        if p in self.procs:
            self.procs.remove(p)

    def stop(self, p: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        self.forget(p)
        return p.returncode

    def kill_all(self) -> None:
        for p in list(self.procs):
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(5)
                except Exception:
                    pass
            self.forget(p)


def install_deadline(seconds: float) -> None:
    """Turn SIGALRM (after `seconds`), SIGTERM and SIGINT into exceptions, so `finally` cleans up."""

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(f"bench: stopped by {signal.Signals(signum).name}"
                         + (f" (overall --timeout {seconds:g}s reached)" if signum == signal.SIGALRM else ""))

    for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    signal.alarm(int(seconds))


class TempDir:
    def __init__(self, prefix: str, keep: bool = False):
        self.path = tempfile.mkdtemp(prefix=prefix)
        self.keep = keep

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


# --- HTTP ----------------------------------------------------------------------------

def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connection(port: int, tls: bool = False, timeout: float = 30.0) -> HTTPConnection:
    if tls:
        return HTTPSConnection(HOST, port, timeout=timeout, context=_insecure())
    return HTTPConnection(HOST, port, timeout=timeout)


def http(method: str, port: int, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0, tls: bool = False) -> tuple[int, dict[str, str], bytes]:
    conn = connection(port, tls, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def tail(path: str | None, lines: int = 15) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float, what: str,
              log_path: str | None = None, tls: bool = False, method: str = "GET") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {proc.returncode} during start-up; "
                               f"its log ends:\n{tail(log_path)}")
        try:
            status, _, _ = http(method, port, path, timeout=2, tls=tls)
            if status == 200:
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.05)
    raise BenchFailure(f"{what} did not answer {method} {path} within {timeout:g}s; its log ends:\n{tail(log_path)}")


# --- the fake factory and the daemon -----------------------------------------------------

class Twistd:
    """A `twistd -n` child listening on 127.0.0.1:port (TLS if started with a certificate)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: str, tls: bool):
        self.proc, self.port, self.log, self.tls = proc, port, log, tls

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}{path}"

    def check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {self.proc.returncode}; its log ends:\n{tail(self.log)}")


def _start_on_free_port(procs: Procs, tmp: str, log_name: str, command: Callable[[int], list[str]],
                        ready: Callable[[int, subprocess.Popen[bytes], str], None],
                        env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start `command(port)` on a free port, its output in `log_name`, and wait until
    `ready(port, proc, log_path)`; tries another port if the one found was taken in between
    (another process on this shared machine). Returns (proc, port, log path)."""
    log_path = os.path.join(tmp, log_name)
    for attempt in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            p = procs.start(command(port), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            ready(port, p, log_path)
            return p, port, log_path
        except BenchFailure:
            procs.stop(p)
            if attempt < 2 and "Address already in use" in tail(log_path, 1000):
                continue
            raise
    raise AssertionError("unreachable")


def _start_twistd(procs: Procs, tmp: str, args: list[str], env: dict[str, str], log_name: str, ready_path: str,
                  what: str, cert: tuple[str, str] | None = None) -> Twistd:
    """Start `twistd -n ARGS --listen tcp:PORT` (or ssl:) on a free port."""
    def command(port: int) -> list[str]:
        listen = f"tcp:{port}:interface={HOST}"
        if cert is not None:
            listen = f"ssl:{port}:interface={HOST}:privateKey={cert[0]}:certKey={cert[1]}"
        return [twistd_path(), "--pidfile=", "-n", *args, "--listen", listen]

    def ready(port: int, p: subprocess.Popen[bytes], log_path: str) -> None:
        wait_http(port, ready_path, p, 60, what, log_path, tls=cert is not None)

    p, port, log_path = _start_on_free_port(procs, tmp, log_name, command, ready, env)
    return Twistd(p, port, log_path, cert is not None)


class BareWeb:
    """bench/bare_web.py: plain twisted.web serving one file as /openstack.raw (B6's ceiling)."""

    path = "/openstack.raw"

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: str):
        self.proc, self.port, self.log = proc, port, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def check_alive(self, what: str = "bare twisted.web") -> None:
        if self.proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {self.proc.returncode}; its log ends:\n{tail(self.log)}")


def start_bare_web(procs: Procs, tmp: str, file_path: str, log_name: str = "bare-web.log") -> BareWeb:
    """bench/bare_web.py over `file_path` on a free port, with this interpreter (the
    repository's venv); ready once it answers HEAD."""
    script = os.path.join(REPO, "bench", "bare_web.py")

    def ready(port: int, p: subprocess.Popen[bytes], log_path: str) -> None:
        wait_http(port, BareWeb.path, p, 60, "bare twisted.web", log_path, method="HEAD")
        if f"bare twisted.web listening on {port}" not in tail(log_path, 1000):
            raise BenchFailure(f"bare twisted.web answered on {port} but did not say it listens there; "
                               f"its log ends:\n{tail(log_path)}")

    p, port, log_path = _start_on_free_port(
        procs, tmp, log_name, lambda port: [sys.executable, script, "--file", file_path, "--port", str(port)],
        ready, child_env(),
    )
    return BareWeb(p, port, log_path)


def start_fake(procs: Procs, tmp: str, image_size: int, log_name: str = "fake.log") -> Twistd:
    """The fake factory, unthrottled, sending factory-shaped bodies (its default)."""
    return _start_twistd(procs, tmp, ["talos-fake-factory", "--image-size", str(image_size), "--body-shape", "factory"],
                         child_env(), log_name, "/versions", "the fake factory")


def schematic_yaml(extension: str) -> str:
    return ("customization:\n    systemExtensions:\n        officialExtensions:\n"
            f"            - siderolabs/{extension}\n")


def image_path(extension: str = EXTENSIONS[0]) -> str:
    """The daemon's URL of the bench image with `extension`."""
    return f"/images/talos/{VERSION}/{ARCH}/{PLATFORM}.raw?extensions={extension}"


def prewarm_fake(fake: Twistd, compression: str, extension: str = EXTENSIONS[0], timeout: float = 600) -> str:
    """Build the fake's compressed body of the bench image now; returns its upstream URL."""
    status, _, body = http("POST", fake.port, "/schematics", schematic_yaml(extension).encode(),
                           {"Content-Type": "application/yaml"})
    if status != 201:
        raise BenchFailure(f"the fake factory answered {status} to POST /schematics: {body[:200]!r}")
    sid = json.loads(body)["id"]
    path = f"/image/{sid}/{VERSION}/{PLATFORM}-{ARCH}.raw.{compression}"
    status, _, _ = http("HEAD", fake.port, path, timeout=timeout)
    if status != 200:
        raise BenchFailure(f"the fake factory answered {status} to the pre-warm HEAD {path}")
    return fake.url(path)


def upstream_gets(fake: Twistd) -> int:
    """Image GETs the fake has received so far (its own count, kept as each one arrives)."""
    status, _, body = http("GET", fake.port, "/_fake/requests", timeout=10)
    if status != 200:
        raise BenchFailure(f"the fake factory answered {status} to GET /_fake/requests")
    return int(json.loads(body)["counts"].get("image_get", 0))


def start_daemon(procs: Procs, tmp: str, fake: Twistd, cache_dir: str, compression: str, log_name: str,
                 settings: dict[str, str] | None = None, cert: tuple[str, str] | None = None) -> Twistd:
    env = child_env({"TALOS_COMPRESSION": compression, **(settings or {})})
    return _start_twistd(procs, tmp, ["talos-images", "--base-url", fake.url(""), "--cache-dir", cache_dir],
                         env, log_name, "/healthz", "the daemon", cert)


def daemon_sha256(d: Twistd, extension: str = EXTENSIONS[0]) -> str:
    path = image_path(extension).replace(".raw?", ".raw.sha256?")
    status, _, body = http("GET", d.port, path, timeout=120, tls=d.tls)
    if status != 200:
        raise BenchFailure(f"GET .sha256 answered {status}: {body[:200]!r}")
    return body.split()[0].decode()


def cache_entries(d: Twistd) -> list[dict[str, Any]]:
    status, _, body = http("GET", d.port, "/images/talos/cache", timeout=10, tls=d.tls)
    if status != 200:
        raise BenchFailure(f"GET /images/talos/cache answered {status}")
    return list(json.loads(body)["entries"])


def wait_committed(d: Twistd, count: int, timeout: float, poll: float = 0.1) -> float:
    """Poll the cache listing until `count` entries are listed; returns time.monotonic() then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive("the daemon")
        if len(cache_entries(d)) >= count:
            return time.monotonic()
        time.sleep(poll)
    raise BenchFailure(f"the image was not cached within {timeout:g}s")


# a prefetch round's summary counts its failures, usually "0 failed": not a finding
_BENIGN = re.compile(r"prefetch round of .* 0 failed$")
SUSPICIOUS = ("Traceback", "Unhandled", "[ERROR]", "#error", "#critical", "#warn", "failed", "aborting")


def log_findings(path: str) -> list[str]:
    """Lines of a twistd log that deserve a look (errors, warnings, failures)."""
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip() for line in f if any(s in line for s in SUSPICIOUS) and not _BENIGN.search(line)]
    except OSError:
        return []


# --- /proc ---------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                k, _, v = line.partition(":")
                parts = v.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[k] = int(parts[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds until `stop` is set."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self.stop.wait(self.interval)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(c).replace("|", "\\|") for c in r] for r in [list(headers), *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
