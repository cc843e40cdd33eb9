"""The verdicts of bench/run (ratio, target, PASS/FAIL per scenario), the absolute figures,
and the results section of docs/benchmarks.md."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from _common import MB, REPO, fmt_size, table
from ctx import Results, Settings

DOC = os.path.join(REPO, "docs", "benchmarks.md")
START, END = "<!-- bench/run results: start -->", "<!-- bench/run results: end -->"


@dataclass
class Check:
    id: str
    what: str
    value: float
    shown: str  # the value as printed ("0.83x", "12.1 ms")
    target: str
    ok: bool
    info: bool = False  # informational: no target, verdict "info", never a failure

    @property
    def verdict(self) -> str:
        return "info" if self.info else "PASS" if self.ok else "**FAIL**"


def _ratio(res: Results, num: str, den: str) -> float:
    a, b = res.med(num), res.med(den)
    return a / b if b and not math.isnan(b) else float("nan")


def checks(res: Results, s: Settings) -> list[Check]:
    out: list[Check] = []

    def ratio(id: str, what: str, num: str, den: str, op: str, limit: float) -> None:
        if not res.has(num, den):
            return
        v = _ratio(res, num, den)
        ok = v >= limit if op == ">=" else v <= limit
        out.append(Check(id, what, v, f"{v:.2f}x", f"{op} {limit}x", ok))

    def absolute(id: str, what: str, v: float, shown: str, target: str, ok: bool) -> None:
        out.append(Check(id, what, v, shown, target, ok))

    def info(id: str, what: str, num: str, den: str) -> None:
        """A ratio shown for information: target "info", never failing."""
        if not res.has(num, den):
            return
        v = _ratio(res, num, den)
        out.append(Check(id, what, v, f"{v:.2f}x", "info", True, info=True))

    ratio("B1", "hit, 1 client: throughput daemon/nginx", "B1.daemon.mbps", "B1.nginx.mbps", ">=", 1.0)
    ratio("B1", "hit, 1 client: CPU s per GiB daemon/nginx", "B1.daemon.cpu_per_gib", "B1.nginx.cpu_per_gib", "<=", 1.3)
    ratio("B2", f"hit, {s.concurrent} clients: aggregate daemon/nginx", "B2.daemon.mbps", "B2.nginx.mbps", ">=", 1.0)
    ratio("B3", "cold miss xz, 1 client: time daemon/`curl | xz -T0 -dc`", "B3.xz.daemon.s", "B3.xz.cli.s", "<=", 1.0)
    ratio("B3", "cold miss zst, 1 client: time daemon/`curl | zstd -dc`", "B3.zst.daemon.s", "B3.zst.cli.s", "<=", 1.1)
    # the floor of B3 zst: a hit of the same image (B1, one curl) already takes longer than the
    # pipeline, which writes to a file and sends nothing over a socket
    for who in ("nginx", "daemon"):
        if res.has(f"B1.{who}.mbps", "B3.zst.cli.s"):
            v = s.size / (res.med(f"B1.{who}.mbps") * MB) / res.med("B3.zst.cli.s")
            out.append(Check("B3", f"a hit of the same image (B1, {who}): time / `curl | zstd -dc`", v, f"{v:.2f}x",
                             "info", True, info=True))
    if res.has("B4.daemon.s", "B4.nginx.s", "B3.zst.cli.s"):
        base = max(res.med("B3.zst.cli.s"), res.med("B4.nginx.s"))
        v = res.med("B4.daemon.s") / base
        fetches = max(res.values["B4.fetches"])
        absolute("B4", f"cold miss zst, {s.herd} clients: time daemon/max(B3 cli, nginx x{s.herd})", v, f"{v:.2f}x",
                 "<= 1.2x", v <= 1.2)
        absolute("B4", "upstream fetches per cold miss (most of any round)", fetches, f"{fetches:.0f}", "1",
                 fetches == 1)
    ratio("B5", "fast client with a 2 MB/s one, cold: time with/alone", "B5.pair.fast_s", "B5.alone.s", "<=", 1.1)
    if res.has("B5.pair.peak"):
        peak = max(res.values["B5.pair.peak"] + res.values.get("B5.big.peak", []))
        absolute("B5", "peak RSS of the daemon (largest of all runs)", peak, f"{peak / MB:.1f} MB", "<= 100 MB",
                 peak <= 100 * MB)
    if res.has("B5.pair.peak", "B5.big.peak"):
        growth = res.med("B5.big.peak") - res.med("B5.pair.peak")
        absolute("B5", f"peak RSS {fmt_size(s.big_size)} minus {fmt_size(s.size)}", growth, f"{growth / MB:+.1f} MB",
                 "<= 10 MB", abs(growth) <= 10 * MB)
    for kind, what in (("range", f"{fmt_size(s.range_size)} Range GETs (wrk)"), ("head", "HEADs (ab -k -i)")):
        ratio("B6", f"{what}, {s.connections} conns: req/s daemon/nginx", f"B6.{kind}.daemon.rps",
              f"B6.{kind}.nginx.rps", ">=", 0.25)
        ratio("B6", f"{what}: p99 latency daemon/nginx", f"B6.{kind}.daemon.p99_ms", f"B6.{kind}.nginx.p99_ms",
              "<=", 4.0)
        # the ceiling of the stack: plain twisted.web serving the same file (bench/bare_web.py)
        info("B6", f"{what}, {s.connections} conns: req/s daemon/bare twisted.web", f"B6.{kind}.daemon.rps",
             f"B6.{kind}.bare.rps")
        info("B6", f"{what}, {s.connections} conns: req/s bare twisted.web/nginx", f"B6.{kind}.bare.rps",
             f"B6.{kind}.nginx.rps")
    if res.has("B7.busy.p99_ms", "B7.idle.p99_ms"):
        v = res.med("B7.busy.p99_ms")
        absolute("B7", f"/healthz p99 during 4 cold xz misses ({_ratio(res, 'B7.busy.p99_ms', 'B7.idle.p99_ms'):.1f}x idle)",
                 v, f"{v:.1f} ms", "<= 20 ms", v <= 20)
    for n in s.tls_clients:
        ratio("B8", f"HTTPS hit, {n} client{'s' if n > 1 else ''}: throughput daemon/nginx", f"B8.{n}.daemon.mbps",
              f"B8.{n}.nginx.mbps", ">=", 0.7)
    return out


def verdict_table(cs: list[Check]) -> str:
    return table(["#", "what", "ratio / value", "target", "verdict"],
                 [[c.id, c.what, c.shown, c.target, c.verdict] for c in cs])


# (scenario, what, unit, daemon key, baseline key, baseline name, scale)
FIGURES = [
    ("B1", "hit, 1 client", "MB/s", "B1.daemon.mbps", "B1.nginx.mbps", "nginx", 1),
    ("B1", "hit, 1 client: server CPU per GiB", "s", "B1.daemon.cpu_per_gib", "B1.nginx.cpu_per_gib", "nginx", 1),
    ("B2", "hit, {concurrent} clients, aggregate", "MB/s", "B2.daemon.mbps", "B2.nginx.mbps", "nginx", 1),
    ("B2", "hit, {concurrent} clients: server CPU per GiB", "s", "B2.daemon.cpu_per_gib", "B2.nginx.cpu_per_gib",
     "nginx", 1),
    ("B3", "cold miss xz, 1 client", "s", "B3.xz.daemon.s", "B3.xz.cli.s", "curl | xz -T0 -dc > file", 1),
    ("B3", "cold miss xz: until the daemon committed the file", "s", "B3.xz.daemon.commit_s", "", "", 1),
    ("B3", "cold miss zst, 1 client", "s", "B3.zst.daemon.s", "B3.zst.cli.s", "curl | zstd -dc > file", 1),
    ("B3", "cold miss zst: until the daemon committed the file", "s", "B3.zst.daemon.commit_s", "", "", 1),
    ("B4", "cold miss zst, {herd} clients, all done", "s", "B4.daemon.s", "B4.nginx.s", "nginx, cached file", 1),
    ("B5", "fast client, cold zst: with a slow one / alone", "s", "B5.pair.fast_s", "B5.alone.s", "alone", 1),
    ("B5", "fast client of {big}, with a slow one", "s", "B5.big.fast_s", "", "", 1),
    ("B5", "daemon peak RSS, {size} / idle", "MB", "B5.pair.peak", "B5.pair.idle", "idle", 1 / MB),
    ("B5", "daemon peak RSS, {big} / idle", "MB", "B5.big.peak", "B5.big.idle", "idle", 1 / MB),
    ("B6", "Range GETs, {connections} conns", "req/s", "B6.range.daemon.rps", "B6.range.nginx.rps", "nginx", 1),
    ("B6", "Range GETs: p99", "ms", "B6.range.daemon.p99_ms", "B6.range.nginx.p99_ms", "nginx", 1),
    ("B6", "Range GETs, bare twisted.web (not the daemon), {connections} conns", "req/s", "B6.range.bare.rps",
     "B6.range.nginx.rps", "nginx", 1),
    ("B6", "Range GETs, bare twisted.web (not the daemon): p99", "ms", "B6.range.bare.p99_ms",
     "B6.range.nginx.p99_ms", "nginx", 1),
    ("B6", "HEADs, {connections} conns", "req/s", "B6.head.daemon.rps", "B6.head.nginx.rps", "nginx", 1),
    ("B6", "HEADs: p99", "ms", "B6.head.daemon.p99_ms", "B6.head.nginx.p99_ms", "nginx", 1),
    ("B6", "HEADs, bare twisted.web (not the daemon), {connections} conns", "req/s", "B6.head.bare.rps",
     "B6.head.nginx.rps", "nginx", 1),
    ("B6", "HEADs, bare twisted.web (not the daemon): p99", "ms", "B6.head.bare.p99_ms", "B6.head.nginx.p99_ms",
     "nginx", 1),
    ("B7", "/healthz p99, 4 cold xz misses / idle", "ms", "B7.busy.p99_ms", "B7.idle.p99_ms", "idle", 1),
    ("B7", "/healthz max, 4 cold xz misses", "ms", "B7.busy.max_ms", "", "", 1),
    ("B8", "HTTPS hit, 1 client", "MB/s", "B8.1.daemon.mbps", "B8.1.nginx.mbps", "nginx", 1),
    ("B8", "HTTPS hit, 8 clients, aggregate", "MB/s", "B8.8.daemon.mbps", "B8.8.nginx.mbps", "nginx", 1),
]


def _fig(res: Results, key: str, scale: float) -> str:
    if not key or not res.has(key):
        return ""
    lo, hi = res.span(key)
    med = res.med(key) * scale
    digits = 0 if abs(med) >= 100 else 2 if abs(med) < 10 else 1
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo * scale:.{digits}f}–{hi * scale:.{digits}f})"


def figures_table(res: Results, s: Settings) -> str:
    fmt = {"concurrent": s.concurrent, "herd": s.herd, "connections": s.connections, "big": fmt_size(s.big_size),
           "size": fmt_size(s.size)}
    rows = []
    for sid, what, unit, dk, bk, bname, scale in FIGURES:
        if res.has(dk):
            rows.append([sid, what.format(**fmt), unit, _fig(res, dk, scale), bname, _fig(res, bk, scale)])
    return table(["#", "what", "unit", "daemon: median (min–max)", "baseline", "baseline: median (min–max)"], rows)


def facts_lines(facts: dict[str, str], s: Settings, seconds: float) -> str:
    run = "`bench/run --quick`" if s.quick else "`bench/run`"
    return "\n".join([
        f"- **run**: {run}, {facts['date']}, {seconds / 60:.1f} min: {fmt_size(s.size)} image "
        f"({fmt_size(s.big_size)} for B5's second), {s.rounds} round(s), load runs of {s.load_seconds:g} s",
        f"- **commit**: `{facts['commit']}`",
        f"- **machine**: {facts['cores']} cores ({facts['cpu']}), {facts['ram']} RAM, kernel {facts['kernel']}; "
        f"load average {facts.get('load', '?')}",
        f"- **versions**: Python {facts['python']}, Twisted {facts['twisted']}, {facts['nginx']}, {facts['curl']}, "
        f"{facts['wrk']}, {facts['ab']}, {facts['xz']}, zstd {facts['zstd'].split()[-1]}",
    ])


def results_markdown(res: Results, s: Settings, facts: dict[str, str], seconds: float) -> str:
    cs = checks(res, s)
    parts = ["Verdicts (medians of the rounds; ratios are daemon / baseline; "
             "\"info\" rows have no target and never fail):", "", verdict_table(cs), "",
             "Absolute figures (MB = 10^6 bytes):", "", figures_table(res, s), "", facts_lines(facts, s, seconds)]
    if res.notes:
        parts += ["", "Notes from the run:", ""] + [f"- {n}" for n in res.notes[:30]]
    return "\n".join(parts)


def write_doc(markdown: str, path: str = DOC) -> None:
    with open(path) as f:
        text = f.read()
    block = f"{START}\n{markdown}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
