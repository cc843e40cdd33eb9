"""Cold misses (B3, B4, B5, B7): every daemon measured here is started on an empty cache
and stopped afterwards; the fake factory's bodies are built before (pre-warmed), so the
figures are the download's, not the fake's build."""

from __future__ import annotations

import hashlib
import os
import time

from _common import (EXTENSIONS, MB, BenchFailure, Sampler, Twistd, image_path, proc_status, upstream_gets,
                     wait_committed)
from clients import Curl, HealthProbe, curls, percentile, pipeline
from ctx import Ctx, order

CLI = {"xz": "xz -T0", "zst": "zstd"}


def cold_single(ctx: Ctx, compression: str, key: str | None = None) -> float:
    """One client of a cold miss; returns its seconds (curl's time_total). With `key`, also
    records when the daemon had committed the file (from the client's start)."""
    d = ctx.fresh_daemon(compression)
    try:
        t0 = time.monotonic()
        f = curls(ctx.procs, d.url(image_path()), 1, ctx.settings.size, f"daemon ({compression} miss)").fetches[0]
        if f.cache != "MISS":
            raise BenchFailure(f"a cold request answered X-Talos-Cache {f.cache!r}, expected MISS")
        committed = wait_committed(d, 1, 600, poll=0.02)
        if key:
            ctx.results.add(key, committed - t0)
        return f.seconds
    finally:
        ctx.stop_daemon(d)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def b3(ctx: Ctx) -> None:
    s = ctx.settings
    out = os.path.join(ctx.tmp, "cli.raw")
    for comp in ("xz", "zst"):
        for r in range(s.rounds):
            for who in order(r, "daemon", "cli"):
                if who == "daemon":
                    secs = cold_single(ctx, comp, f"B3.{comp}.daemon.commit_s")
                else:
                    secs = pipeline(ctx.upstream[comp], CLI[comp], out, s.size)
                    if r == 0 and sha256_file(out) != ctx.sha256:
                        raise BenchFailure(f"`curl | {CLI[comp]} -dc` wrote other bytes than the daemon serves")
                    os.unlink(out)
                ctx.results.add(f"B3.{comp}.{who}.s", secs)
                print(f"   B3 {comp:3} {who:6} cold miss, 1 client: {secs:6.2f} s", flush=True)


def b4(ctx: Ctx) -> None:
    s = ctx.settings
    assert ctx.nginx is not None
    for r in range(s.rounds):
        for who in order(r, "daemon", "nginx"):
            if who == "nginx":
                ctx.nginx.check_alive()
                batch = curls(ctx.procs, ctx.nginx.url(), s.herd, s.size, "nginx")
                ctx.results.add("B4.nginx.s", batch.wall)
                print(f"   B4 nginx  {s.herd} clients of the cached file: {batch.wall:6.2f} s", flush=True)
                continue
            d = ctx.fresh_daemon("zst")
            try:
                before = upstream_gets(ctx.fake)
                batch = curls(ctx.procs, d.url(image_path()), s.herd, s.size, "daemon (cold, many clients)")
                wait_committed(d, 1, 600)
            finally:
                ctx.stop_daemon(d)
            fetches = upstream_gets(ctx.fake) - before
            ctx.results.add("B4.daemon.s", batch.wall)
            ctx.results.add("B4.fetches", fetches)
            answers = sorted({f.cache for f in batch.fetches})
            print(f"   B4 daemon {s.herd} clients of a cold miss: {batch.wall:6.2f} s, {fetches} upstream "
                  f"fetch(es), X-Talos-Cache {answers}", flush=True)


def pair(ctx: Ctx, fake: Twistd, size: int, key: str) -> None:
    """A fast client and a slow one (curl --limit-rate) on a cold miss, at the same time.
    The window lasts until the fast client is done and the download committed, plus
    `slow_tail` seconds of the slow client (by then far behind: a server that buffered
    what it has not taken would hold most of the image), which is then killed."""
    s = ctx.settings
    d = ctx.fresh_daemon("zst", fake)
    try:
        idle = proc_status(d.pid)["VmRSS"]
        sampler = Sampler(d.pid)
        sampler.start()
        url = d.url(image_path())
        fast = Curl(ctx.procs, url)
        slow = Curl(ctx.procs, url, limit_rate=s.slow_rate)
        f = fast.result(size, "the fast client")
        wait_committed(d, 1, 600)
        time.sleep(s.slow_tail)
        if not slow.alive():
            raise BenchFailure("the slow client ended before the window did: " + repr(slow.result(size, "slow")))
        peak = max(proc_status(d.pid)["VmHWM"], proc_status(d.pid)["VmRSS"], sampler.peak)
        sampler.stop.set()
        slow.kill()
    finally:
        ctx.stop_daemon(d)
    ctx.results.add(f"{key}.fast_s", f.seconds)
    ctx.results.add(f"{key}.peak", peak)
    ctx.results.add(f"{key}.idle", idle)
    print(f"   B5 {key.split('.')[1]:5} fast + slow ({s.slow_rate}/s) client, {size / 2**20:.0f} MiB: fast "
          f"{f.seconds:6.2f} s, peak RSS {peak / MB:.1f} MB (idle {idle / MB:.1f} MB)", flush=True)


def b5(ctx: Ctx) -> None:
    s = ctx.settings
    for r in range(s.rounds):
        for who in order(r, "alone", "pair"):
            if who == "alone":
                secs = cold_single(ctx, "zst")
                ctx.results.add("B5.alone.s", secs)
                print(f"   B5 alone fast client alone, cold: {secs:6.2f} s", flush=True)
            else:
                pair(ctx, ctx.fake, s.size, "B5.pair")
        pair(ctx, ctx.big_fake, s.big_size, "B5.big")


def b7(ctx: Ctx) -> None:
    """/healthz latency of an idle daemon, then during four cold xz misses (four images)."""
    s = ctx.settings
    for r in range(s.rounds):
        d = ctx.fresh_daemon("xz")
        try:
            probe = HealthProbe(d.port)
            probe.start()
            time.sleep(s.idle_seconds)
            idle = probe.finish()
            probe = HealthProbe(d.port)
            probe.start()
            t0 = time.monotonic()
            clients = [Curl(ctx.procs, d.url(image_path(ext))) for ext in EXTENSIONS[:4]]
            fetches = [c.result(s.size, f"client {i} of B7") for i, c in enumerate(clients)]
            wall = time.monotonic() - t0
            busy = probe.finish()
            wait_committed(d, 4, 600)
            errors = probe.errors
        finally:
            ctx.stop_daemon(d)
        if errors:
            raise BenchFailure(f"/healthz failed during the misses: {errors[:3]}")
        if any(f.cache != "MISS" for f in fetches):
            raise BenchFailure(f"B7 expected four MISS answers, got {[f.cache for f in fetches]}")
        ctx.results.add("B7.idle.p99_ms", percentile(idle, 99))
        ctx.results.add("B7.busy.p99_ms", percentile(busy, 99))
        ctx.results.add("B7.busy.max_ms", max(busy))
        ctx.results.add("B7.busy.samples", len(busy))
        print(f"   B7 /healthz p99: idle {percentile(idle, 99):.2f} ms ({len(idle)} probes), during 4 xz misses "
              f"{percentile(busy, 99):.2f} ms (max {max(busy):.2f} ms, {len(busy)} probes, {wall:.1f} s)", flush=True)
