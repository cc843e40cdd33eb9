"""Cache hits, the daemon against nginx serving the same file (B1, B2, B6, B8).

The daemon downloads the bench image once into `ctx.hit_cache`; nginx (`sendfile on`, one
process) then serves the committed file as well. Each round runs both servers back to back,
the daemon first in even rounds and nginx first in odd ones. B6 adds a third server of the
same file, bare twisted.web (bench/bare_web.py), and rotates the order of the three.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Callable

from _common import (GiB, BareWeb, BenchFailure, Twistd, cache_entries, connection, cpu_seconds, daemon_sha256,
                     image_path, start_bare_web, wait_committed)
from clients import ab_heads, curls, wrk_ranges
from ctx import Ctx, order, rotation
from tools import Nginx


class Target:
    """A server under test: its URL of the bench image and the process whose CPU counts."""

    def __init__(self, name: str, url: str, pid: int, check: Callable[[], None]):
        self.name, self.url, self.pid, self.check = name, url, pid, check


def daemon_target(d: Twistd) -> Target:
    return Target("daemon", d.url(image_path()), d.pid, lambda: d.check_alive("the daemon"))


def nginx_target(n: Nginx, tls: bool = False) -> Target:
    return Target("nginx", n.url(tls), n.pid, n.check_alive)


def bare_target(b: BareWeb) -> Target:
    return Target("bare", b.url(), b.pid, b.check_alive)


def full_get_sha(url: str, port: int, tls: bool, size: int, who: str) -> tuple[str, dict[str, str]]:
    """One full GET, hashed here; returns (sha256, headers)."""
    path = url.split(str(port), 1)[1]
    conn = connection(port, tls, timeout=600)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        headers = {k.lower(): v for k, v in r.getheaders()}
        if r.status != 200:
            raise BenchFailure(f"{who}: full GET answered {r.status}")
        h, n = hashlib.sha256(), 0
        while chunk := r.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        if n != size:
            raise BenchFailure(f"{who}: full GET gave {n} bytes, expected {size}")
        return h.hexdigest(), headers
    finally:
        conn.close()


def setup(ctx: Ctx) -> Twistd:
    """The hit daemon (its cache holds the bench image) and nginx serving the same file."""
    size = ctx.settings.size
    ctx.hit_cache = os.path.join(ctx.tmp, "cache-hits")
    d = ctx.fresh_daemon("zst", cache_dir=ctx.hit_cache)
    sha, _ = full_get_sha(d.url(image_path()), d.port, False, size, "daemon (first download)")
    ctx.sha256 = daemon_sha256(d)
    if sha != ctx.sha256:
        raise BenchFailure(f"the first (miss) download has sha256 {sha}, the daemon's .sha256 says {ctx.sha256}")
    wait_committed(d, 1, 600)
    e = cache_entries(d)[0]
    ctx.hit_file = os.path.join(ctx.hit_cache, "images", e["version"], e["arch"], e["schematic"], f"{e['platform']}.raw")
    if os.path.getsize(ctx.hit_file) != size:
        raise BenchFailure(f"{ctx.hit_file} has {os.path.getsize(ctx.hit_file)} bytes, expected {size}")
    ctx.nginx = Nginx(ctx.procs, ctx.tmp, ctx.hit_file, ctx.cert)
    warm_up(ctx, d, tls=False)
    return d


def warm_up(ctx: Ctx, d: Twistd, tls: bool) -> None:
    """A full GET from each server, checked (the daemon's must be a HIT); also puts the
    file in the page cache for both."""
    assert ctx.nginx is not None
    for who, url, port in (("daemon", d.url(image_path()), d.port),
                           ("nginx", ctx.nginx.url(tls), ctx.nginx.tls_port if tls else ctx.nginx.port)):
        sha, hdr = full_get_sha(url, port, tls, ctx.settings.size, who)
        if sha != ctx.sha256:
            raise BenchFailure(f"{who}: full GET{' over TLS' if tls else ''} has sha256 {sha}, expected {ctx.sha256}")
        if who == "daemon" and hdr.get("x-talos-cache") != "HIT":
            raise BenchFailure(f"the daemon answered X-Talos-Cache {hdr.get('x-talos-cache')}, expected HIT")


def _transfer(ctx: Ctx, t: Target, n: int, key: str) -> None:
    t.check()
    size = ctx.settings.size
    cpu0 = cpu_seconds(t.pid)
    batch = curls(ctx.procs, t.url, n, size, t.name)
    cpu = cpu_seconds(t.pid) - cpu0
    mbps = batch.aggregate_mbps(size) if n > 1 else size / batch.fetches[0].seconds / 1e6
    ctx.results.add(f"{key}.{t.name}.mbps", mbps)
    ctx.results.add(f"{key}.{t.name}.cpu_per_gib", cpu / (n * size / GiB))
    if t.name == "daemon" and any(f.cache != "HIT" for f in batch.fetches):
        raise BenchFailure(f"{key}: the daemon answered X-Talos-Cache {[f.cache for f in batch.fetches]}")
    print(f"   {key} {t.name:6} {n:2} client(s): {mbps:8.1f} MB/s  server CPU {cpu:.2f}s", flush=True)


def b1_b2(ctx: Ctx, d: Twistd) -> None:
    assert ctx.nginx is not None
    targets = {"daemon": daemon_target(d), "nginx": nginx_target(ctx.nginx)}
    for key, n in (("B1", 1), ("B2", ctx.settings.concurrent)):
        for r in range(ctx.settings.rounds):
            for name in order(r, "daemon", "nginx"):
                _transfer(ctx, targets[name], n, key)


def check_ranges(ctx: Ctx, port: int, path: str, who: str, count: int = 20) -> None:
    """A few Range GETs on one keep-alive connection, compared with the file."""
    size, length = ctx.settings.size, ctx.settings.range_size
    rng = random.Random(7)
    fd = os.open(ctx.hit_file, os.O_RDONLY)
    conn = connection(port, timeout=60)
    try:
        for _ in range(count):
            off = rng.randrange(0, size - length + 1)
            conn.request("GET", path, headers={"Range": f"bytes={off}-{off + length - 1}"})
            r = conn.getresponse()
            body = r.read()
            want = f"bytes {off}-{off + length - 1}/{size}"
            if r.status != 206 or r.getheader("Content-Range") != want or body != os.pread(fd, length, off):
                raise BenchFailure(f"{who}: Range at {off}: status {r.status}, Content-Range "
                                   f"{r.getheader('Content-Range')!r}, {len(body)} bytes")
        conn.request("HEAD", path)
        r = conn.getresponse()
        r.read()
        if r.status != 200 or r.getheader("Content-Length") != str(size):
            raise BenchFailure(f"{who}: HEAD answered {r.status}, Content-Length {r.getheader('Content-Length')}")
    finally:
        conn.close()
        os.close(fd)


def b6(ctx: Ctx, d: Twistd) -> None:
    """Range GETs and HEADs against three servers of the same file, the order rotating per
    round: the daemon, nginx, and bare twisted.web (bench/bare_web.py, this stack's ceiling)."""
    assert ctx.nginx is not None
    s = ctx.settings
    bare = start_bare_web(ctx.procs, ctx.tmp, ctx.hit_file)
    try:
        check_ranges(ctx, d.port, image_path(), "daemon")
        check_ranges(ctx, ctx.nginx.port, Nginx.path, "nginx")
        check_ranges(ctx, bare.port, bare.path, "bare twisted.web")
        targets = {"daemon": daemon_target(d), "nginx": nginx_target(ctx.nginx), "bare": bare_target(bare)}
        for kind in ("range", "head"):
            for r in range(s.rounds):
                for name in rotation(r, ("daemon", "nginx", "bare")):
                    t = targets[name]
                    t.check()
                    if kind == "range":
                        load = wrk_ranges(t.url, ctx.tmp, s.size, s.range_size, s.connections, s.load_seconds,
                                          seed=r + 1)
                    else:
                        load = ab_heads(t.url, ctx.tmp, s.connections, s.load_seconds)
                    key = f"B6.{kind}.{name}"
                    ctx.results.add(f"{key}.rps", load.rps)
                    ctx.results.add(f"{key}.p99_ms", load.p99_ms)
                    if load.errors:
                        ctx.results.add(f"{key}.errors", load.errors)
                        ctx.results.notes.append(f"B6 {kind} round {r + 1}: {name} gave {load.errors} "
                                                 "errors/non-2xx answers")
                    print(f"   B6 {kind:5} {name:6} {s.connections} connections: {load.rps:8.0f} req/s  "
                          f"p99 {load.p99_ms:.2f} ms  errors {load.errors}", flush=True)
        bare.check_alive()
    finally:
        rc = ctx.procs.stop(bare.proc)
        if rc not in (0, -15):
            ctx.results.notes.append(f"{os.path.basename(bare.log)}: bare twisted.web exited with status {rc} "
                                     "on SIGTERM")


def b8(ctx: Ctx) -> None:
    """HTTPS hits: a daemon on an ssl: endpoint over the same cache, nginx with the same
    certificate. Run after the plain-HTTP daemon has stopped (one daemon per cache)."""
    assert ctx.nginx is not None
    d = ctx.fresh_daemon("zst", cert=ctx.cert, cache_dir=ctx.hit_cache)
    try:
        warm_up(ctx, d, tls=True)
        targets = {"daemon": daemon_target(d), "nginx": nginx_target(ctx.nginx, tls=True)}
        for n in ctx.settings.tls_clients:
            for r in range(ctx.settings.rounds):
                for name in order(r, "daemon", "nginx"):
                    _transfer(ctx, targets[name], n, f"B8.{n}")
    finally:
        ctx.stop_daemon(d, remove_cache=False)
