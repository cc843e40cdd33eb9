"""Delays between attempts: exponential backoff with full jitter (pure)."""

from __future__ import annotations

import random


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """A delay in [0, min(cap, base * 2**attempt)]: retrying daemons do not synchronise."""
    return rng.uniform(0, min(cap, base * (2**attempt)))
