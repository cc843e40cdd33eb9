"""Small JSON documents the daemon learns from the factory, kept across restarts."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

from twisted.logger import Logger

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class MetadataStore:
    """`{root}/{name}.json`, each written atomically (a crash leaves the old document)."""

    log = Logger()

    def __init__(self, root: str):
        self.root = root

    def _path(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad metadata name {name!r}")
        return os.path.join(self.root, name + ".json")

    def load(self, name: str) -> Any | None:
        try:
            with open(self._path(name), encoding="utf-8") as f:
                return json.load(f)["value"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.log.warn("ignoring unreadable metadata {name}", name=name)
            return None

    def save(self, name: str, value: Any) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"value": value}, f)
                os.replace(tmp, self._path(name))
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            # losing a metadata copy only costs offline operation; keep serving
            self.log.warn("could not persist metadata {name}: {error}", name=name, error=str(e))
