"""Delays between attempts: exponential backoff with full jitter (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """A delay in [0, min(cap, base * 2**attempt)]: retrying daemons do not synchronise."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


@dataclass(frozen=True)
class Backoff:
    """`attempts` calls at most, waiting `delay(n)` after the n-th failure (from 0)."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return full_jitter(attempt, self.base_delay, self.max_delay, rng)
