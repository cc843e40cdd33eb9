"""The store's start-up recovery: every image directory swept, whole entries found again,
and what a crash or a stranger left behind removed.

Recovery is unambiguous because a ``.raw.json`` only ever describes the ``.raw`` renamed into
place just before it: commit (1) removes the sidecar of an entry it replaces, (2) writes and
fsyncs the new sidecar under a temporary name, (3) renames the image, (4) the sidecar, with
the directory fsynced after each step. Interrupted anywhere, a directory holds a whole entry,
or an image without a sidecar and temporary files, which recovery removes.
"""

from __future__ import annotations

import os
from collections import Counter

from twisted.logger import Logger

from talos_twisted import cachefs as fs
from talos_twisted.cache_entry import SIDECAR, CacheEntry, load_entry
from talos_twisted.cachefs_sweep import sweep_images


def recover_entries(root: str, images: str, temps: fs.TempFiles, log: Logger) -> tuple[list[CacheEntry], Counter[str]]:
    """The whole entries below `images` (in the order found) and the tally of what was removed
    (``removed``, ``symlinks``): temps not in `temps`, orphans, symlinks, strays."""
    found: list[CacheEntry] = []
    tally: Counter[str] = Counter(removed=0, symlinks=0)
    for dfd, parts, files in sweep_images(root, images, temps, tally):
        found.extend(_recover_leaf(dfd, images, parts, set(files), tally, log))
    return found, tally


def _recover_leaf(
    dfd: int, images: str, parts: tuple[str, ...], files: set[str], tally: Counter[str], log: Logger
) -> list[CacheEntry]:
    found = []
    for name in sorted(files):
        path = os.path.join(images, *parts, name)
        if name.endswith(SIDECAR):
            if name[: -len(SIDECAR)] in files:
                continue  # judged with its image
            doomed = [name]  # the sidecar of an image gone: an interrupted removal
        elif name + SIDECAR in files or name.endswith(".raw"):
            # an image (or a mirrored asset) is whole only with a sidecar naming it
            entry = load_entry(dfd, name, path, images)
            if entry is not None:
                found.append(entry)
                continue
            log.warn("discarding cache file without a valid sidecar: {path}", path=path)
            doomed = [name, name + SIDECAR]
        else:
            log.warn("removing unexpected file {path} from the cache", path=path)
            doomed = [name]
        tally["removed"] += 1
        for victim in doomed:
            try:
                fs.unlink(dfd, victim)
            except OSError as e:
                log.warn("could not remove {path}: {error}", path=path, error=str(e))
    return found
