"""Readiness: can this daemon serve images now? One reason per check, for `/readyz`."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from talos_twisted.cache import CacheStore
from talos_twisted.factory import FactoryClient

# below this much free space a download cannot make progress, whatever min_free_space says
FLOOR = 16 * 1024 * 1024


def _writable(root: str) -> tuple[bool, str]:
    # os.access says yes to root on a read-only mount or a full disk: try for real
    try:
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        return False, f"cannot create a file in {root}: {e.strerror or e}"
    return True, "ok"


def readiness(cache: CacheStore, factory: FactoryClient, min_free: int) -> dict[str, Any]:
    checks: dict[str, dict[str, Any]] = {}
    ok, why = _writable(cache.root) if os.path.isdir(cache.root) else (False, f"{cache.root} does not exist")
    checks["cache_writable"] = {"ok": ok, "reason": why}
    try:
        free = shutil.disk_usage(cache.root).free
        need = max(min_free, FLOOR)
        checks["free_space"] = {
            "ok": free >= need, "free": free,
            "reason": "ok" if free >= need else f"{free} bytes free, below {need} (min_free_space)",
        }
    except OSError as e:
        checks["free_space"] = {"ok": False, "reason": f"cannot read the free space: {e.strerror or e}"}
    reachable = factory.reachable()
    entries = len(cache.entries())
    serving = reachable or entries > 0
    if reachable:
        reason = "a factory call worked in the last 60 s"
    elif entries:
        reason = f"the factory is not reachable ({factory.last_error or 'no call yet'}), but {entries} images are cached"
    else:
        reason = f"the factory is not reachable ({factory.last_error or 'no call yet'}) and nothing is cached"
    checks["factory_or_cache"] = {"ok": serving, "factory_reachable": reachable, "cached_images": entries, "reason": reason}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}
