#!/usr/bin/env python3
"""Memory of the daemon must not grow with the image size.

For each compression and image size, in a fresh temporary cache and fresh processes:

1. start the fake factory with that --image-size and pre-warm it (POST the bench's
   schematic, HEAD its compressed image: the fake builds and caches the body, so the
   build time is not part of the download);
2. start the daemon, GET /healthz, wait 1 s, read its idle VmRSS (the baseline);
3. start two curl clients on the same image URL at the same time: a fast one (its
   output hashed in this process) and one with --limit-rate (default 2M);
4. sample the daemon's VmRSS every --interval seconds; the window lasts until the
   download is committed (polled via GET /images/talos/cache) and the fast client has
   finished, plus --tail seconds more of the slow client, which is then killed;
5. read VmHWM (peak RSS of the process's life), check the fast client's sha256 against
   the daemon's .sha256 answer, stop everything and scan the daemon's log.

Exit status: 0 if all runs were correct, 1 on a correctness failure (wrong sha256, wrong
size, a client cut off, a child that died), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import hashlib
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402


class Reader(threading.Thread):
    """Reads a pipe to its end, counting (and optionally hashing) the bytes."""

    def __init__(self, pipe: Any, hash_it: bool):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.sha = hashlib.sha256() if hash_it else None
        self.bytes = 0
        self.done_at: float | None = None

    def run(self) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = self.pipe.readinto(buf)
            if not n:
                break
            self.bytes += n
            if self.sha is not None:
                self.sha.update(view[:n])
        self.done_at = time.monotonic()


def fd_targets(pid: int) -> dict[str, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def curl(url: str, headers_file: str, extra: list[str]) -> list[str]:
    return ["curl", "-sS", "--max-time", "3600", "-D", headers_file, "-o", "-",
            "-w", "%{stderr}http=%{http_code} bytes=%{size_download} seconds=%{time_total}\n", *extra, url]


def header(path: str, name: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip().lower() == name.lower():
                    return v.strip()
    except OSError:
        pass
    return None


def run_one(procs: c.Procs, size: int, compression: str, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"size": size, "compression": compression, "errors": []}
    with c.TempDir(f"talos-rss-{compression}-{c.fmt_size(size)}-", keep=args.keep_tmp) as tmp:
        print(f"\n== {compression} {c.fmt_size(size)} (tmp {tmp})", flush=True)
        fake, fake_port, fake_log = c.start_fake(procs, tmp, size)
        daemon = None
        clients: list[subprocess.Popen] = []
        files: list[Any] = []
        try:
            sid, build_s = c.prewarm_fake(fake_port, compression)
            res["fake_build_s"] = build_s
            print(f"   fake factory pre-warmed in {build_s:.1f}s (schematic {sid[:12]})", flush=True)
            cache_dir = os.path.join(tmp, "cache")
            daemon, port, daemon_log = c.start_daemon(procs, tmp, fake_port, cache_dir, compression)
            pid = daemon.pid
            c.http("GET", port, "/healthz")
            time.sleep(1.0)
            st = c.proc_status(pid)
            res["idle_rss"] = st["VmRSS"]
            res["idle_hwm"] = st["VmHWM"]
            idle_fds = fd_targets(pid)
            res["idle_fds"] = len(idle_fds)
            cpu0 = c.cpu_seconds(pid)
            print(f"   daemon pid {pid}: idle VmRSS {c.mib(st['VmRSS'])} MiB (VmHWM {c.mib(st['VmHWM'])} MiB)", flush=True)

            sampler = c.Sampler(pid, args.interval)
            sampler.start()
            url = f"http://{c.HOST}:{port}{c.IMAGE_PATH}"
            fast_h, slow_h = os.path.join(tmp, "fast.headers"), os.path.join(tmp, "slow.headers")
            fast_err, slow_err = open(os.path.join(tmp, "fast.err"), "w+b"), open(os.path.join(tmp, "slow.err"), "w+b")
            files += [fast_err, slow_err]
            t0 = time.monotonic()
            fast = procs.start(curl(url, fast_h, []), stdout=subprocess.PIPE, stderr=fast_err)
            slow = procs.start(curl(url, slow_h, ["--limit-rate", args.slow_rate]), stdout=subprocess.PIPE, stderr=slow_err)
            clients = [fast, slow]
            fast_r, slow_r = Reader(fast.stdout, True), Reader(slow.stdout, False)
            fast_r.start()
            slow_r.start()

            committed = c.wait_committed(port, daemon, args.max_wait)
            res["download_s"] = committed - t0
            rss_at_commit = c.proc_status(pid)["VmRSS"]
            fast.wait(max(1.0, args.max_wait - (time.monotonic() - t0)))
            fast_r.join(60)
            fast_done = fast_r.done_at or time.monotonic()
            res["fast_s"] = fast_done - t0
            res["fast_bytes"] = fast_r.bytes
            res["fast_rc"] = fast.returncode
            res["fast_cache"] = header(fast_h, "X-Talos-Cache")
            res["slow_cache"] = header(slow_h, "X-Talos-Cache")
            print(f"   committed after {res['download_s']:.1f}s, fast client done after {res['fast_s']:.1f}s "
                  f"({res['fast_cache']}/{res['slow_cache']}); {args.tail:g}s more of the slow client", flush=True)
            time.sleep(max(0.0, max(committed, fast_done) + args.tail - time.monotonic()))
            res["window_s"] = time.monotonic() - t0
            st = c.proc_status(pid)
            res["end_rss"] = st["VmRSS"]
            res["peak_hwm"] = st["VmHWM"]
            res["cpu_s"] = c.cpu_seconds(pid) - cpu0
            res["slow_alive"] = slow.poll() is None
            res["slow_bytes"] = slow_r.bytes
            slow.terminate()
            slow.wait(10)
            time.sleep(1.0)  # let the daemon notice the slow client is gone
            res["after_rss"] = c.proc_status(pid)["VmRSS"]
            after_fds = fd_targets(pid)
            res["after_fds"] = len(after_fds)
            # sockets: e.g. the persistent connection to the factory; a file here would be a leak
            res["new_fds"] = sorted("socket" if t.startswith("socket:") else t
                                    for fd, t in after_fds.items() if idle_fds.get(fd) != t)
            leaked = [t for t in res["new_fds"] if t != "socket"]
            if leaked:
                res["errors"].append(f"file descriptors left open after the clients left: {leaked}")
            sampler.stop.set()
            sampler.join(5)
            samples = sampler.samples
            res["samples"] = len(samples)
            res["max_sampled_rss"] = max(r for _, r in samples)
            res["rss_at_commit"] = rss_at_commit
            # growth within the run: the largest VmRSS in each quarter of the download
            q = (committed - t0) / 4
            res["rss_quarters"] = [max((r for t, r in samples if t0 + i * q <= t < t0 + (i + 1) * q), default=0)
                                   for i in range(4)]
            # VmHWM is only brought up to date by the kernel at some points (unmapping), so a
            # sampled VmRSS can exceed it: the peak is the larger of the two
            res["peak"] = max(res["peak_hwm"], res["max_sampled_rss"])

            # correctness
            if res["fast_rc"] != 0:
                fast_err.seek(0)
                res["errors"].append(f"fast curl exited {res['fast_rc']}: {fast_err.read().decode(errors='replace').strip()}")
            if fast_r.bytes != size:
                res["errors"].append(f"fast client got {fast_r.bytes} bytes, expected {size}")
            expected = c.daemon_sha256(port)
            res["sha256"] = fast_r.sha.hexdigest() if fast_r.sha else None
            res["sha256_ok"] = res["sha256"] == expected
            if not res["sha256_ok"]:
                res["errors"].append(f"fast client sha256 {res['sha256']} != daemon's .sha256 {expected}")
            if not res["slow_alive"]:
                slow_err.seek(0)
                res["errors"].append(f"the slow client ended before the window did (rc {slow.returncode}, "
                                     f"{slow_r.bytes} bytes): {slow_err.read().decode(errors='replace').strip()}")
            listing = c.cache_listing(port)
            res["disk_usage"] = listing["entries"][0]["disk_usage"] if listing["entries"] else None
            print(f"   idle {c.mib(res['idle_rss'])} MiB, VmHWM {c.mib(res['peak_hwm'])} MiB, "
                  f"max sampled {c.mib(res['max_sampled_rss'])} MiB, at commit {c.mib(rss_at_commit)} MiB, "
                  f"end {c.mib(res['end_rss'])} MiB; slow client at {c.mib(res['slow_bytes'])} MiB; "
                  f"sha256 {'OK' if res['sha256_ok'] else 'MISMATCH'}; after the slow client left: "
                  f"{c.mib(res['after_rss'])} MiB; max VmRSS per quarter of the download: "
                  f"{', '.join(c.mib(x) for x in res['rss_quarters'])} MiB; open fds {res['idle_fds']} idle -> {res['after_fds']} (new: {res['new_fds']})", flush=True)
        finally:
            for p in clients:
                procs.stop(p, 5)
            for f in files:
                f.close()
            if daemon is not None:
                rc = procs.stop(daemon)
                res["daemon_exit"] = rc
                res["daemon_log"] = c.log_findings(os.path.join(tmp, "daemon.log"))
                # twistd re-raises the signal that stopped it once shut down cleanly: -15 is normal
                if rc not in (0, -15, None):
                    res["errors"].append(f"the daemon exited with status {rc} on SIGTERM")
            procs.stop(fake)
            res["fake_log"] = c.log_findings(fake_log)
            for line in res.get("daemon_log", []):
                print(f"   daemon log: {line}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sizes", default="1GiB,4GiB", help="comma-separated image sizes [default: %(default)s]")
    ap.add_argument("--compression", default="xz",
                    help="what the daemon downloads: xz, zst, or both as xz,zst [default: %(default)s]")
    ap.add_argument("--slow-rate", default="2M", help="curl --limit-rate of the slow client [default: %(default)s]")
    ap.add_argument("--tail", type=float, default=20.0,
                    help="seconds of the slow client after the download and the fast client are done [default: %(default)s]")
    ap.add_argument("--interval", type=float, default=0.1, help="VmRSS sampling interval, seconds [default: %(default)s]")
    ap.add_argument("--max-wait", type=float, default=600.0,
                    help="longest wait for one download + fast client, seconds [default: %(default)s]")
    ap.add_argument("--timeout", type=float, default=1800.0, help="overall time limit, seconds [default: %(default)s]")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directories (logs, cache)")
    args = ap.parse_args()
    try:
        sizes = [c.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as e:
        ap.error(str(e))
    comps = [x.strip() for x in args.compression.split(",") if x.strip()]
    if not sizes or not comps or any(x not in ("xz", "zst") for x in comps):
        ap.error("--compression takes xz, zst or xz,zst; --sizes at least one size")

    c.install_deadline(args.timeout)
    procs = c.Procs()
    info = c.machine()
    info["loadavg_start"] = c.loadavg()
    print(f"machine: {info}", flush=True)
    results: list[dict[str, Any]] = []
    failed = False
    try:
        for comp in comps:
            for size in sizes:
                r = run_one(procs, size, comp, args)
                results.append(r)
                if r["errors"]:
                    failed = True
                    for e in r["errors"]:
                        print(f"   FAILURE: {e}", flush=True)
    except c.BenchFailure as e:
        print(f"FAILURE: {e}", file=sys.stderr, flush=True)
        failed = True
    except Exception:
        import traceback
        traceback.print_exc()
        failed = True
    finally:
        procs.kill_all()

    rows = []
    for r in results:
        if "peak" not in r:
            continue
        rows.append([
            r["compression"], c.fmt_size(r["size"]), c.mib(r["idle_rss"]), c.mib(r["peak_hwm"]), c.mib(r["max_sampled_rss"]),
            f"{r['peak'] / r['idle_rss']:.2f}", c.mib(r["peak"] - r["idle_rss"]),
            c.mib(r["end_rss"]), f"{r['download_s']:.1f}", f"{r['fast_s']:.1f}",
            f"{r['size'] / r['fast_s'] / c.MiB:.0f}", f"{r['cpu_s']:.1f}", c.mib(r["slow_bytes"]),
            "OK" if r.get("sha256_ok") else "FAIL",
        ])
    print()
    print(c.table(["comp", "image", "idle RSS MiB", "VmHWM MiB", "max sampled MiB", "peak/idle", "peak-idle MiB",
                   "end RSS MiB", "download s", "fast client s", "fast MiB/s",
                   "daemon CPU s", "slow got MiB", "sha256"], rows))
    ratio_rows = []
    for comp in comps:
        rs = [r for r in results if r["compression"] == comp and "peak" in r]
        if len(rs) >= 2:
            small, big = min(rs, key=lambda r: r["size"]), max(rs, key=lambda r: r["size"])
            d_small, d_big = small["peak"] - small["idle_rss"], big["peak"] - big["idle_rss"]
            ratio_rows.append([comp, f"{c.fmt_size(big['size'])}/{c.fmt_size(small['size'])}",
                               f"{big['size'] / small['size']:.0f}", f"{big['peak'] / small['peak']:.3f}",
                               f"{d_big / d_small:.2f}" if d_small > 0 else "n/a"])
    if ratio_rows:
        print()
        print(c.table(["comp", "sizes", "size ratio", "peak ratio", "growth ratio (peak-idle)"], ratio_rows))
    info["loadavg_end"] = c.loadavg()
    if c.code_version() != info["code"]:
        info["code_end"] = c.code_version()
        print(f"WARNING: the daemon's code changed during the run: {info['code']} -> {info['code_end']}")
    print(f"\nload average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=2)
    print("\nresult:", "FAILED" if failed else "all downloads correct", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
