"""Shared helpers for the benchmarks in bench/ (not a test suite: run the scripts directly).

Every child process is started through `Procs`, which kills it on normal exit, on an
exception, on SIGTERM/SIGINT, on the overall `--timeout` alarm, and (PR_SET_PDEATHSIG)
when this script itself is killed. Everything listens on 127.0.0.1 on ports found by
binding port 0; temporary data lives in one mkdtemp directory removed at the end.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import hashlib
from http.client import HTTPConnection
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
VERSION = "v1.11.2"
ARCH = "amd64"
PLATFORM = "openstack"
EXTENSION = "siderolabs/qemu-guest-agent"
# The schematic the daemon builds for ?extensions=qemu-guest-agent (canonical YAML, see
# talos_twisted/schematic.py); POSTing it to the fake gives the same schematic ID, so the
# fake's compressed body can be built ("pre-warmed") before the daemon asks for it.
SCHEMATIC_YAML = (
    "customization:\n"
    "    systemExtensions:\n"
    "        officialExtensions:\n"
    f"            - {EXTENSION}\n"
)
IMAGE_PATH = f"/images/talos/{VERSION}/{ARCH}/{PLATFORM}.raw?extensions=qemu-guest-agent"
SHA_PATH = f"/images/talos/{VERSION}/{ARCH}/{PLATFORM}.raw.sha256?extensions=qemu-guest-agent"

KiB, MiB, GiB = 1024, 1024**2, 1024**3
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
            return f"{n // div}{unit}"
    return f"{n}B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def twistd_path() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "twistd")
    return here if os.path.exists(here) else (shutil.which("twistd") or "twistd")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
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
        self.procs: list[subprocess.Popen] = []
        atexit.register(self.kill_all)

    def start(self, args: Sequence[str], *, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL,
              stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
        p = subprocess.Popen(list(args), stdout=stdout, stderr=stderr, stdin=stdin, env=env, cwd=cwd,
                             preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> int | None:
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
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def kill_all(self) -> None:
        for p in list(self.procs):
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(5)
                except Exception:
                    pass
            self.procs.remove(p)


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


def http(method: str, port: int, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    conn = HTTPConnection(HOST, port, timeout=timeout)
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


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float, what: str,
              log_path: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {proc.returncode} during start-up; "
                               f"its log ends:\n{tail(log_path)}")
        try:
            status, _, _ = http("GET", port, path, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchFailure(f"{what} did not answer GET {path} within {timeout:g}s; its log ends:\n{tail(log_path)}")


# --- the fake factory and the daemon -----------------------------------------------------


def _start_twistd(procs: Procs, tmp: str, args: list[str], env: dict[str, str], log_name: str, ready_path: str,
                  what: str) -> tuple[subprocess.Popen, int, str]:
    """Start `twistd -n ARGS --listen tcp:PORT` on a free port; tries another port if the one
    found was taken in between (another process on this shared machine binding port 0)."""
    log_path = os.path.join(tmp, log_name)
    for attempt in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            p = procs.start([twistd_path(), "--pidfile=", "-n", *args, "--listen", f"tcp:{port}:interface={HOST}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            wait_http(port, ready_path, p, 30, what, log_path)
            return p, port, log_path
        except BenchFailure:
            procs.stop(p)
            if attempt < 2 and "Address already in use" in tail(log_path, 1000):
                print(f"   {what}: port {port} was taken meanwhile, trying another", flush=True)
                continue
            raise
    raise AssertionError("unreachable")


def start_fake(procs: Procs, tmp: str, image_size: int, log_name: str = "fake.log") -> tuple[subprocess.Popen, int, str]:
    return _start_twistd(procs, tmp, ["talos-fake-factory", "--image-size", str(image_size)], child_env(),
                         log_name, "/versions", "the fake factory")


def prewarm_fake(fake_port: int, compression: str, timeout: float = 300) -> tuple[str, float]:
    """Build the fake's compressed body of the bench image now; returns (schematic id, seconds)."""
    status, _, body = http("POST", fake_port, "/schematics", SCHEMATIC_YAML.encode(),
                           {"Content-Type": "application/yaml"})
    if status != 201:
        raise BenchFailure(f"the fake factory answered {status} to POST /schematics: {body[:200]!r}")
    sid = json.loads(body)["id"]
    suffix = {"xz": ".xz", "zst": ".zst", "none": ""}[compression]
    t0 = time.monotonic()
    status, headers, _ = http("HEAD", fake_port, f"/image/{sid}/{VERSION}/{PLATFORM}-{ARCH}.raw{suffix}",
                              timeout=timeout)
    if status != 200:
        raise BenchFailure(f"the fake factory answered {status} to the pre-warm HEAD")
    return sid, time.monotonic() - t0


def start_daemon(procs: Procs, tmp: str, fake_port: int, cache_dir: str, compression: str = "xz",
                 log_name: str = "daemon.log") -> tuple[subprocess.Popen, int, str]:
    return _start_twistd(procs, tmp, ["talos-images", "--base-url", f"http://{HOST}:{fake_port}", "--cache-dir", cache_dir],
                         child_env({"TALOS_COMPRESSION": compression}), log_name, "/healthz", "the daemon")


def daemon_sha256(port: int) -> str:
    status, _, body = http("GET", port, SHA_PATH, timeout=120)
    if status != 200:
        raise BenchFailure(f"GET .sha256 answered {status}: {body[:200]!r}")
    return body.split()[0].decode()


def wait_committed(port: int, proc: subprocess.Popen, timeout: float, poll: float = 0.25) -> float:
    """Poll GET /images/talos/cache until an entry is listed; returns time.monotonic() then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"the daemon exited with status {proc.returncode}")
        status, _, body = http("GET", port, "/images/talos/cache", timeout=10)
        if status == 200 and json.loads(body)["entries"]:
            return time.monotonic()
        time.sleep(poll)
    raise BenchFailure(f"the image was not cached within {timeout:g}s")


def cache_listing(port: int) -> dict[str, Any]:
    status, _, body = http("GET", port, "/images/talos/cache", timeout=10)
    if status != 200:
        raise BenchFailure(f"GET /images/talos/cache answered {status}")
    return json.loads(body)


SUSPICIOUS = ("Traceback", "Unhandled", "[ERROR]", "#error", "#critical", "#warn", "failed", "aborting")


def log_findings(path: str) -> list[str]:
    """Lines of a twistd log that deserve a look (errors, warnings, failures)."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if any(s in line for s in SUSPICIOUS):
                out.append(line.rstrip())
    return out


# --- /proc ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm") or line.startswith("Rss"):
                k, _, v = line.partition(":")
                parts = v.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[k] = int(parts[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds until `stop` is set."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), proc_status(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self.stop.wait(self.interval)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


def code_version() -> str:
    """The commit checked out, whether the daemon's code differs from it, and a digest of
    that code (talos_twisted/ and twisted/plugins/*.py) as it is on disk now."""
    h = hashlib.sha256()
    for top in ("talos_twisted", os.path.join("twisted", "plugins")):
        for root, dirs, files in sorted(os.walk(os.path.join(REPO, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    h.update(os.path.relpath(path, REPO).encode() + b"\0")
                    with open(path, "rb") as f:
                        h.update(f.read())
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "diff", "--quiet", "HEAD", "--", "talos_twisted", "twisted"],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "?", False
    return f"{commit}{' + uncommitted changes' if dirty else ''} (code sha256 {h.hexdigest()[:12]})"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"
