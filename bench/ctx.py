"""What the scenarios of bench/run share: the settings of the run, the processes that live
through it, and the figures collected (every figure of every round, keyed by name)."""

from __future__ import annotations

import os
import shutil
import statistics
from dataclasses import dataclass, field

from _common import Procs, Twistd, log_findings, start_daemon
from tools import Nginx


@dataclass
class Settings:
    quick: bool
    rounds: int
    size: int  # the bench image (B1-B4, B6-B8)
    big_size: int  # B5's larger image (compared with `size`)
    concurrent: int = 32  # B2
    herd: int = 50  # B4
    range_size: int = 64 * 1024  # B6
    connections: int = 64  # B6
    load_seconds: float = 10.0  # B6: each wrk / ab run
    slow_rate: str = "2M"  # B5: curl --limit-rate of the slow client
    slow_tail: float = 5.0  # B5: seconds of the slow client after the fast one is done
    idle_seconds: float = 3.0  # B7: /healthz probe of the idle daemon
    tls_clients: tuple[int, ...] = (1, 8)  # B8


class Results:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def has(self, *keys: str) -> bool:
        return all(self.values.get(k) for k in keys)

    def med(self, key: str) -> float:
        xs = self.values.get(key)
        return statistics.median(xs) if xs else float("nan")

    def span(self, key: str) -> tuple[float, float]:
        xs = self.values.get(key) or [float("nan")]
        return min(xs), max(xs)


@dataclass
class Ctx:
    settings: Settings
    procs: Procs
    tmp: str
    cert: tuple[str, str]
    daemon_env: dict[str, str]  # TALOS_* raising connection limits, where such keys exist
    fake: Twistd  # serves `size` images
    big_fake: Twistd  # serves `big_size` images
    upstream: dict[str, str] = field(default_factory=dict)  # "xz"/"zst" -> URL of the bench image on the fake
    results: Results = field(default_factory=Results)
    nginx: Nginx | None = None
    hit_cache: str = ""  # the cache directory holding the bench image (B1, B2, B6, B8)
    hit_file: str = ""  # the cached file, which nginx serves too
    sha256: str = ""  # of the bench image
    _runs: int = 0

    def fresh_daemon(self, compression: str, fake: Twistd | None = None, cert: tuple[str, str] | None = None,
                     cache_dir: str | None = None) -> Twistd:
        """A daemon on an empty cache (or on `cache_dir`), for one measurement."""
        self._runs += 1
        if cache_dir is None:
            cache_dir = os.path.join(self.tmp, f"cache-{self._runs}")
        return start_daemon(self.procs, self.tmp, fake or self.fake, cache_dir, compression,
                            f"daemon-{self._runs}.log", self.daemon_env, cert)

    def stop_daemon(self, d: Twistd, remove_cache: bool = True) -> None:
        rc = self.procs.stop(d.proc)
        # twistd re-raises the signal that stopped it once shut down cleanly: -15 is normal
        if rc not in (0, -15):
            self.results.notes.append(f"{os.path.basename(d.log)}: the daemon exited with status {rc} on SIGTERM")
        for line in log_findings(d.log)[:5]:
            self.results.notes.append(f"{os.path.basename(d.log)}: {line.strip()[:300]}")
        if remove_cache:
            for name in os.listdir(self.tmp):
                path = os.path.join(self.tmp, name)
                if name.startswith("cache-") and path != self.hit_cache and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)


def order(r: int, a: str, b: str) -> tuple[str, str]:
    """The two contestants of round r: a first in even rounds, b first in odd ones."""
    return (a, b) if r % 2 == 0 else (b, a)


def rotation(r: int, names: list[str] | tuple[str, ...]) -> list[str]:
    """The contestants of round r, rotated by r: each one goes first in turn."""
    k = r % len(names)
    return [*names[k:], *names[:k]]
