"""The clients of bench/run: curl (one or many at once), the command-line baselines
(curl | xz / zstd > file), wrk, ab, and a /healthz latency probe."""

from __future__ import annotations

import csv
import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

from _common import BenchFailure, Procs, connection

CURL_W = "%{http_code} %{size_download} %{time_total} %header{x-talos-cache}"


@dataclass
class Fetch:
    status: int
    size: int
    seconds: float  # curl's time_total
    cache: str  # X-Talos-Cache ("" from nginx)


@dataclass
class Batch:
    fetches: list[Fetch]
    wall: float  # from the first start to the last exit

    def aggregate_mbps(self, size: int) -> float:
        return len(self.fetches) * size / self.wall / 1e6


def curl_cmd(url: str, out: str = "/dev/null", limit_rate: str | None = None) -> list[str]:
    cmd = ["curl", "-sS", "--http1.1", "-k", "--max-time", "1800", "-o", out, "-w", CURL_W]
    return cmd + (["--limit-rate", limit_rate] if limit_rate else []) + [url]


def _parse(out: bytes, err: bytes, rc: int, size: int, who: str) -> Fetch:
    parts = out.decode(errors="replace").split()
    if rc != 0 or len(parts) < 3:
        raise BenchFailure(f"{who}: curl exited {rc}: {err.decode(errors='replace').strip()} {out!r}")
    f = Fetch(int(parts[0]), int(float(parts[1])), float(parts[2]), parts[3] if len(parts) > 3 else "")
    if f.status != 200 or f.size != size:
        raise BenchFailure(f"{who}: status {f.status}, {f.size} bytes; expected 200 and {size}")
    return f


def curls(procs: Procs, url: str, n: int, size: int, who: str, timeout: float = 1800) -> Batch:
    """`n` curls of `url` to /dev/null started at once; waits for all of them."""
    t0 = time.monotonic()
    ps = [procs.start(curl_cmd(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    fetches = []
    try:
        for p in ps:
            out, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            fetches.append(_parse(out, err, p.returncode, size, who))
    finally:
        for p in ps:
            procs.stop(p, 1)
    return Batch(fetches, time.monotonic() - t0)


class Curl:
    """One curl in the background (e.g. the 2 MB/s client), read when it ends or killed."""

    def __init__(self, procs: Procs, url: str, limit_rate: str | None = None):
        self.procs = procs
        self.t0 = time.monotonic()
        self.proc = procs.start(curl_cmd(url, limit_rate=limit_rate), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self, size: int, who: str, timeout: float = 1800) -> Fetch:
        out, err = self.proc.communicate(timeout=timeout)
        self.procs.forget(self.proc)
        return _parse(out, err, self.proc.returncode, size, who)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.procs.stop(self.proc, 1)


def pipeline(upstream_url: str, decompressor: str, out: str, size: int, timeout: float = 1800) -> float:
    """`curl URL | xz -T0 -dc > out` (or zstd): the command line's cold miss; returns seconds."""
    cmd = f"set -o pipefail; curl -sS --fail '{upstream_url}' | {decompressor} -dc > '{out}'"
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchFailure(f"{cmd!r} exited {r.returncode}: {r.stderr.strip()}")
    got = os.path.getsize(out)
    if got != size:
        raise BenchFailure(f"{cmd!r} wrote {got} bytes, expected {size}")
    return seconds


# --- wrk and ab ---------------------------------------------------------------------------

@dataclass
class Load:
    rps: float  # successful requests per second
    p99_ms: float
    errors: int  # non-2xx answers, socket errors, failed requests


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}

WRK_LUA = """\
local size, len = {size}, {length}
math.randomseed({seed})
request = function()
  local off = math.random(0, size - len)
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. off .. "-" .. (off + len - 1)}})
end
"""


def wrk_ranges(url: str, tmp: str, size: int, length: int, connections: int, seconds: float, seed: int = 1) -> Load:
    script = os.path.join(tmp, "ranges.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA.format(size=size, length=length, seed=seed))
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
           "-s", script, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise BenchFailure(f"wrk exited {r.returncode}: {r.stderr.strip()}")
    out = r.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(\w+)", out, re.M)
    if not m or not p99:
        raise BenchFailure(f"cannot read wrk's output:\n{out}")
    duration = float(m.group(2)) * _UNIT[m.group(3)] / 1e3
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    ok = int(m.group(1)) - (int(non2xx.group(1)) if non2xx else 0)
    return Load(ok / duration, float(p99.group(1)) * _UNIT[p99.group(2)], errors)


def ab_heads(url: str, tmp: str, connections: int, seconds: float) -> Load:
    pct = os.path.join(tmp, "ab.csv")
    # -t first: it resets -n to 50000, which a fast server would finish before the time is up
    cmd = ["ab", "-k", "-i", "-q", "-c", str(connections), "-t", str(max(1, round(seconds))), "-n", "2000000",
           "-e", pct, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise BenchFailure(f"ab exited {r.returncode}: {r.stderr.strip()[-500:]}")
    out = r.stdout
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if not rps or not complete:
        raise BenchFailure(f"cannot read ab's output:\n{out}")
    with open(pct, newline="") as f:
        rows = {row[0]: row[1] for row in csv.reader(f) if row and row[0].isdigit()}
    errors = (int(failed.group(1)) if failed else 0) + (int(non2xx.group(1)) if non2xx else 0)
    done = int(complete.group(1))
    ok_fraction = (done - errors) / done if done else 0.0
    return Load(float(rps.group(1)) * ok_fraction, float(rows["99"]), errors)


# --- /healthz latency -------------------------------------------------------------------------

class HealthProbe(threading.Thread):
    """GET /healthz on one keep-alive connection every `interval` seconds, until stopped."""

    def __init__(self, port: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []  # ms
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = connection(self.port, timeout=30)
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.request("GET", "/healthz")
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        self.errors.append(f"status {r.status}")
                except OSError as e:
                    self.errors.append(repr(e))
                    conn.close()
                    conn = connection(self.port, timeout=30)
                self.latencies.append((time.perf_counter() - t0) * 1e3)
                self.stop.wait(self.interval)
        finally:
            conn.close()

    def finish(self) -> list[float]:
        self.stop.set()
        self.join(30)
        return self.latencies


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1]

