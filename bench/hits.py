#!/usr/bin/env python3
"""Cache-hit serving throughput of the daemon against nginx serving the same file.

1. Start the fake factory (--size) and the daemon in a temporary directory, let the
   daemon download the image once (checked against its .sha256), then serve the committed
   file (cache/images/.../openstack.raw) with nginx too (`sendfile on`, one process:
   `master_process off` so that process is the worker, access log off, a config written to
   the temporary directory).
2. Warm-up and correctness: one full GET from each server, its sha256 checked.
3. --rounds rounds, the order of the two servers alternating (ABBA...) to cancel drift:
   (a) one curl of the whole image to /dev/null (curl's speed_download), with the
       server's CPU seconds (utime+stime from /proc) during the transfer;
   (b) --clients concurrent curls of the whole image: aggregate MB/s = bytes / wall time;
   (c) --ranges sequential Range requests of --range-size at random offsets (same offsets
       for both servers) on one keep-alive connection: requests/s; every body is compared
       with the file afterwards.
4. Print medians per server and the daemon/nginx ratios: of the medians, and the median
   of the per-round ratios (each round runs the two servers back to back).

Exit status: 0 if every response was correct, 1 on a correctness failure (wrong bytes,
status or length, a server that died), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from http.client import HTTPConnection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

MB = 1000 * 1000  # throughput in MB/s (10^6), as curl's speed_download is bytes/s


def nginx_conf(tmp: str, port: int, file_path: str) -> str:
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""\
daemon off;
master_process off;
worker_processes 1;
{user}error_log stderr;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {c.HOST}:{port};
        location = /openstack.raw {{ alias {file_path}; }}
    }}
}}
"""


class Server:
    def __init__(self, name: str, port: int, path: str, proc: subprocess.Popen, cpu_pid: int):
        self.name, self.port, self.path, self.proc, self.cpu_pid = name, port, path, proc, cpu_pid

    @property
    def url(self) -> str:
        return f"http://{c.HOST}:{self.port}{self.path}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise c.BenchFailure(f"{self.name} exited with status {self.proc.returncode}")

    def cpu(self) -> float:
        return c.cpu_seconds(self.cpu_pid)


CURL_W = "%{http_code} %{size_download} %{time_total} %{speed_download}"


def curl_cmd(url: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "600", "-o", "/dev/null", "-w", CURL_W, url]


def parse_curl(out: bytes, size: int, who: str) -> tuple[float, float]:
    parts = out.decode().split()
    if len(parts) != 4 or parts[0] != "200" or int(float(parts[1])) != size:
        raise c.BenchFailure(f"{who}: curl reported {out.decode().strip()!r}, expected 200 and {size} bytes")
    return float(parts[2]), float(parts[3])  # time_total s, speed_download bytes/s


def full_get_sha(server: Server, size: int) -> tuple[str, dict[str, str]]:
    """One full GET, hashed here; returns (sha256, headers)."""
    conn = HTTPConnection(c.HOST, server.port, timeout=300)
    try:
        conn.request("GET", server.path)
        r = conn.getresponse()
        headers = {k.lower(): v for k, v in r.getheaders()}
        if r.status != 200:
            raise c.BenchFailure(f"{server.name}: full GET answered {r.status}")
        h, n = hashlib.sha256(), 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if n != size:
            raise c.BenchFailure(f"{server.name}: full GET gave {n} bytes, expected {size}")
        return h.hexdigest(), headers
    finally:
        conn.close()


def children_cpu() -> float:
    """CPU seconds of this script's waited-for children (the curl clients)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def single(procs: c.Procs, server: Server, size: int) -> dict[str, float]:
    ccpu0 = children_cpu()
    cpu0 = server.cpu()
    t0 = time.monotonic()
    p = procs.start(curl_cmd(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=620)
    wall = time.monotonic() - t0
    cpu = server.cpu() - cpu0
    procs.procs.remove(p)
    if p.returncode != 0:
        raise c.BenchFailure(f"{server.name}: curl exited {p.returncode}: {err.decode().strip()}")
    seconds, speed = parse_curl(out, size, server.name)
    return {"mbps": speed / MB, "seconds": seconds, "wall": wall, "cpu_s": cpu, "client_cpu_s": children_cpu() - ccpu0}


def concurrent(procs: c.Procs, server: Server, size: int, n: int) -> dict[str, float]:
    ccpu0 = children_cpu()
    cpu0 = server.cpu()
    t0 = time.monotonic()
    ps = [procs.start(curl_cmd(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    speeds = []
    for p in ps:
        out, err = p.communicate(timeout=max(1.0, 1200 - (time.monotonic() - t0)))
        procs.procs.remove(p)
        if p.returncode != 0:
            raise c.BenchFailure(f"{server.name}: one of {n} curls exited {p.returncode}: {err.decode().strip()}")
        speeds.append(parse_curl(out, size, server.name)[1])
    wall = time.monotonic() - t0
    cpu = server.cpu() - cpu0
    return {"mbps": n * size / wall / MB, "wall": wall, "cpu_s": cpu, "client_cpu_s": children_cpu() - ccpu0,
            "client_min_mbps": min(speeds) / MB, "client_max_mbps": max(speeds) / MB}


def ranges(server: Server, offsets: list[int], length: int, fd: int, size: int) -> dict[str, float]:
    bodies = []
    cpu0 = server.cpu()
    conn = HTTPConnection(c.HOST, server.port, timeout=60)
    try:
        t0 = time.monotonic()
        for off in offsets:
            conn.request("GET", server.path, headers={"Range": f"bytes={off}-{off + length - 1}"})
            r = conn.getresponse()
            body = r.read()
            bodies.append((r.status, r.getheader("Content-Range"), body))
        elapsed = time.monotonic() - t0
    finally:
        conn.close()
    cpu = server.cpu() - cpu0
    for off, (status, crange, body) in zip(offsets, bodies):
        want = f"bytes {off}-{off + length - 1}/{size}"
        if status != 206 or crange != want or body != os.pread(fd, length, off):
            raise c.BenchFailure(f"{server.name}: Range at {off}: status {status}, Content-Range {crange!r}, "
                                 f"{len(body)} bytes {'matching' if body == os.pread(fd, length, off) else 'NOT matching'} the file")
    return {"rps": len(offsets) / elapsed, "mbps": len(offsets) * length / elapsed / MB, "seconds": elapsed, "cpu_s": cpu}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--size", default="1GiB", help="image size [default: %(default)s]")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per server and test [default: %(default)s]")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients in test (b) [default: %(default)s]")
    ap.add_argument("--ranges", type=int, default=200, help="Range requests in test (c) [default: %(default)s]")
    ap.add_argument("--range-size", default="64KiB", help="length of each Range request [default: %(default)s]")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random Range offsets [default: %(default)s]")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx binary [default: %(default)s]")
    ap.add_argument("--timeout", type=float, default=1800.0, help="overall time limit, seconds [default: %(default)s]")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, cache, nginx.conf)")
    args = ap.parse_args()
    try:
        size = c.parse_size(args.size)
        rlen = c.parse_size(args.range_size)
    except ValueError as e:
        ap.error(str(e))
    if args.rounds < 1 or args.clients < 1 or args.ranges < 1 or not 0 < rlen <= size:
        ap.error("--rounds, --clients, --ranges must be positive and --range-size at most --size")
    if not os.path.exists(args.nginx):
        ap.error(f"nginx not found at {args.nginx} (apt-get install nginx-light)")

    c.install_deadline(args.timeout)
    procs = c.Procs()
    info = c.machine()
    info["nginx"] = subprocess.run([args.nginx, "-v"], capture_output=True, text=True).stderr.strip()
    info["loadavg_start"] = c.loadavg()
    print(f"machine: {info}", flush=True)
    results: dict[str, Any] = {"single": {"daemon": [], "nginx": []}, "concurrent": {"daemon": [], "nginx": []},
                               "ranges": {"daemon": [], "nginx": []}}
    failed = False
    notes: list[str] = []
    with c.TempDir("talos-hits-", keep=args.keep_tmp) as tmp:
        print(f"tmp {tmp}", flush=True)
        fd = -1
        try:
            fake, fake_port, fake_log = c.start_fake(procs, tmp, size)
            sid, build_s = c.prewarm_fake(fake_port, "xz")
            daemon, dport, daemon_log = c.start_daemon(procs, tmp, fake_port, os.path.join(tmp, "cache"))
            d = Server("daemon", dport, c.IMAGE_PATH, daemon, daemon.pid)
            t0 = time.monotonic()
            sha_miss, hdr = full_get_sha(d, size)
            c.wait_committed(dport, daemon, 600)
            print(f"daemon downloaded the {c.fmt_size(size)} image in {time.monotonic() - t0:.1f}s "
                  f"({hdr.get('x-talos-cache')})", flush=True)
            expected = c.daemon_sha256(dport)
            if sha_miss != expected:
                raise c.BenchFailure(f"the first (miss) download has sha256 {sha_miss}, the daemon says {expected}")
            entry = c.cache_listing(dport)["entries"][0]
            file_path = os.path.join(tmp, "cache", "images", entry["version"], entry["arch"], entry["schematic"],
                                     f"{entry['platform']}.raw")
            st = os.stat(file_path)
            if st.st_size != size:
                raise c.BenchFailure(f"{file_path} has {st.st_size} bytes, expected {size}")
            print(f"cached file {file_path}: {st.st_size} bytes, {st.st_blocks * 512} allocated (sparse)", flush=True)

            ndir = os.path.join(tmp, "nginx")
            os.makedirs(ndir)
            nport = c.free_port()
            conf = os.path.join(ndir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(nginx_conf(ndir, nport, file_path))
            nlog = open(os.path.join(ndir, "nginx.log"), "wb")
            nginx = procs.start([args.nginx, "-p", ndir + "/", "-c", conf, "-e", "stderr"],
                                stdout=nlog, stderr=subprocess.STDOUT, cwd=ndir)
            nlog.close()
            deadline = time.monotonic() + 30
            while True:
                if nginx.poll() is not None:
                    raise c.BenchFailure(f"nginx exited with status {nginx.returncode}; see {ndir}/nginx.log")
                try:
                    status, _, _ = c.http("HEAD", nport, "/openstack.raw", timeout=2)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise c.BenchFailure("nginx did not answer within 30s")
                time.sleep(0.1)
            # master_process off: one process that does the serving (as the one worker would), and
            # which PR_SET_PDEATHSIG reaches if this script is killed (a forked worker would outlive it)
            n = Server("nginx", nport, "/openstack.raw", nginx, nginx.pid)

            # warm-up and correctness of a full GET from each (a HIT from the daemon)
            for s in (d, n):
                sha, hdr = full_get_sha(s, size)
                if sha != expected:
                    raise c.BenchFailure(f"{s.name}: full GET has sha256 {sha}, expected {expected}")
                if s is d and hdr.get("x-talos-cache") != "HIT":
                    raise c.BenchFailure(f"the daemon answered X-Talos-Cache {hdr.get('x-talos-cache')}, expected HIT")
            print(f"warm-up: full GET from both servers has sha256 {expected[:16]}... (daemon: HIT)", flush=True)

            fd = os.open(file_path, os.O_RDONLY)
            rss_before = c.proc_status(d.proc.pid)["VmRSS"]
            sampler = c.Sampler(d.proc.pid, 0.1)
            sampler.start()
            rng = random.Random(args.seed)
            offsets = [rng.randrange(0, size - rlen + 1) for _ in range(args.ranges)]
            for r in range(args.rounds):
                order = (d, n) if r % 2 == 0 else (n, d)
                for s in order:
                    s.check_alive()
                    x = single(procs, s, size)
                    results["single"][s.name].append(x)
                    print(f"round {r + 1} (a) {s.name:6}: 1 client  {x['mbps']:8.1f} MB/s  wall {x['wall']:.2f}s  "
                          f"server cpu {x['cpu_s']:.2f}s  curl cpu {x['client_cpu_s']:.2f}s", flush=True)
                for s in order:
                    x = concurrent(procs, s, size, args.clients)
                    results["concurrent"][s.name].append(x)
                    print(f"round {r + 1} (b) {s.name:6}: {args.clients} clients {x['mbps']:8.1f} MB/s  "
                          f"wall {x['wall']:.1f}s  server cpu {x['cpu_s']:.2f}s  curl cpu {x['client_cpu_s']:.2f}s", flush=True)
                for s in order:
                    x = ranges(s, offsets, rlen, fd, size)
                    results["ranges"][s.name].append(x)
                    print(f"round {r + 1} (c) {s.name:6}: {args.ranges} ranges {x['rps']:8.1f} req/s  server cpu {x['cpu_s']:.2f}s",
                          flush=True)
            sampler.stop.set()
            sampler.join(5)
            results["daemon_rss"] = {"before": rss_before, "max_during": max(r for _, r in sampler.samples)}
            print(f"daemon VmRSS: {c.mib(rss_before)} MiB before the measurements, at most "
                  f"{c.mib(results['daemon_rss']['max_during'])} MiB during them", flush=True)
            d.check_alive()
            n.check_alive()
            # the daemon served everything from its cache: the fake saw exactly one image GET
            with open(fake_log, errors="replace") as f:
                image_gets = sum(1 for line in f if '"GET /image/' in line)
            if image_gets != 1:
                notes.append(f"the fake factory logged {image_gets} image GETs (expected 1)")
        except c.BenchFailure as e:
            print(f"FAILURE: {e}", file=sys.stderr, flush=True)
            failed = True
        except Exception:
            import traceback
            traceback.print_exc()
            failed = True
        finally:
            if fd >= 0:
                os.close(fd)
            for p in list(procs.procs):
                procs.stop(p)
            for name in ("daemon.log", "fake.log", "nginx/nginx.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    results.setdefault("logs", {})[name] = c.log_findings(path)
                    for line in results["logs"][name][:20]:
                        print(f"{name}: {line}", flush=True)
            procs.kill_all()

    rows: list[list[str]] = []
    util_rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for test, key, unit in (("single", "mbps", "MB/s"), ("concurrent", "mbps", "MB/s (aggregate)"),
                            ("ranges", "rps", "req/s")):
        dv = [x[key] for x in results[test]["daemon"]]
        nv = [x[key] for x in results[test]["nginx"]]
        if not dv or not nv:
            continue
        dm, nm = median(dv), median(nv)
        dcpu, ncpu = median([x["cpu_s"] for x in results[test]["daemon"]]), median([x["cpu_s"] for x in results[test]["nginx"]])
        label = {"single": "(a) 1 client, full image", "concurrent": f"(b) {args.clients} clients, full image",
                 "ranges": f"(c) {args.ranges} x {c.fmt_size(rlen)} Range, keep-alive"}[test]
        paired = median([a / b for a, b in zip(dv, nv)])  # each round's two servers ran back to back
        rows.append([label, unit, f"{dm:.1f}", f"{min(dv):.1f}-{max(dv):.1f}", f"{nm:.1f}", f"{min(nv):.1f}-{max(nv):.1f}",
                     f"{dm / nm:.3f}", f"{paired:.3f}", f"{dcpu:.2f}", f"{ncpu:.2f}"])
        if test != "ranges":
            for name in ("daemon", "nginx"):
                xs = results[test][name]
                util_rows.append([label, name, f"{median([x['wall'] for x in xs]):.2f}",
                                  f"{median([x['cpu_s'] / x['wall'] for x in xs]):.2f}",
                                  f"{median([x['client_cpu_s'] / x['wall'] for x in xs]):.2f}"])
        summary[test] = {"daemon_median": dm, "nginx_median": nm, "ratio": dm / nm, "paired_ratio": paired, "daemon_cpu_s": dcpu, "nginx_cpu_s": ncpu}
    print()
    print(c.table(["test", "unit", "daemon median", "daemon range", "nginx median", "nginx range",
                   "daemon/nginx (medians)", "daemon/nginx (median of per-round ratios)", "daemon CPU s", "nginx CPU s"], rows))
    if util_rows:
        print()
        print(c.table(["test", "server", "wall s (median)", "server CPU / wall", "curl CPU / wall"], util_rows))
    if "single" in summary:
        s = summary["single"]
        gib = size / c.GiB
        print(f"\nCPU per GiB served by one client: daemon {s['daemon_cpu_s'] / gib:.2f} s, nginx {s['nginx_cpu_s'] / gib:.2f} s")
    info["loadavg_end"] = c.loadavg()
    if c.code_version() != info["code"]:
        info["code_end"] = c.code_version()
        print(f"WARNING: the daemon's code changed during the run: {info['code']} -> {info['code_end']}")
    print(f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results, "summary": summary, "notes": notes},
                      f, indent=2)
    print("\nresult:", "FAILED" if failed else "all responses correct", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
