"""Small JSON documents the daemon learns from the factory, kept across restarts.

The same rules as the image cache (`talos_twisted.cachefs`): the directory is reached without
following a symlink, files are opened with ``O_NOFOLLOW``, modes are 0750/0640 whatever the
umask.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.logger import Logger

from talos_twisted import cachefs as fs

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class MetadataStore:
    """`{root}/{name}.json`, each written atomically (a crash leaves the old document)."""

    log = Logger()

    def __init__(self, root: str):
        self.root = root

    def _name(self, name: str) -> str:
        if not _NAME_RE.fullmatch(name) or name.startswith("."):
            raise ValueError(f"bad metadata name {name!r}")
        return name + ".json"

    def _dir(self, create: bool) -> int:
        # the parent is the configured cache root (trusted); `root` itself is ours
        parent, base = os.path.split(os.path.abspath(self.root))
        return fs.open_dir(parent, [base], create)

    def load(self, name: str) -> Any | None:
        filename = self._name(name)
        try:
            dfd = self._dir(create=False)
            try:
                return fs.read_json(dfd, filename)["value"]
            finally:
                os.close(dfd)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.log.warn("ignoring unreadable metadata {name}", name=name)
            return None

    def save(self, name: str, value: Any) -> None:
        filename = self._name(name)
        try:
            dfd = self._dir(create=True)
            try:
                fs.write_atomic(dfd, filename, json.dumps({"value": value}).encode("utf-8"))
            finally:
                os.close(dfd)
        except OSError as e:
            # losing a metadata copy only costs offline operation; keep serving
            self.log.warn("could not persist metadata {name}: {error}", name=name, error=str(e))
