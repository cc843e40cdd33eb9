"""`SIGHUP`: the configuration read again, what can change safely applied, the rest logged."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from types import FrameType

from twisted.application import service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from talos_twisted.config import ConfigError, load_config
from talos_twisted.web import TalosImages

# what a reload applies; the others need a restart (logged as such)
RELOADABLE = frozenset({
    "prefetch", "profiles", "default_extensions", "enabled", "platforms", "first_byte_timeout", "checksum_wait",
    "client_stall_timeout", "max_ranges", "progress_interval",
})


class ReloadService(service.Service):
    """SIGHUP: read the configuration again, apply what can change safely, log what changed."""

    def __init__(
        self, app: TalosImages, path: str | None, overrides: dict[str, str | None], reactor: IReactorFromThreads
    ):
        # the namespace it had in tap.py (operators' filters may name it); a Logger class
        # attribute would take this module's name
        self.log = Logger(namespace="talos_twisted.tap.ReloadService", source=self)
        self.app = app
        self.path = path
        self.overrides = overrides
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        import signal

        def handler(signum: int, frame: FrameType | None) -> None:
            self.reactor.callFromThread(self.reload)

        # at once, not when the reactor runs: twistd starts the services (and logs "listening
        # on") before it runs the reactor, and a SIGHUP in between would kill the daemon
        # (SIGHUP's default action); the reload itself waits for the reactor
        signal.signal(signal.SIGHUP, handler)

    def reload(self) -> None:
        try:
            new = load_config(self.path, os.environ, self.overrides).talos
        except ConfigError as e:
            self.log.error("reload refused, the configuration in use stays: {error}", error=str(e))
            return
        old = self.app.config
        changed = [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]
        applied = [k for k in changed if k in RELOADABLE]
        later = [k for k in changed if k not in RELOADABLE]
        kept = {k: getattr(old, k) for k in later}
        self.app.config = replace(new, **kept)  # what needs a restart keeps its running value
        self.app.resolver.set_default_extensions(self.app.config.default_extensions)
        prefetch = getattr(self.app, "prefetch", None)
        if prefetch is not None and "prefetch" in applied:
            prefetch.prefetcher.items = self.app.config.prefetch
            prefetch.run_now()
        self.log.info(
            "configuration reloaded: {applied} applied; {later} need a restart",
            applied=", ".join(applied) or "nothing", later=", ".join(later) or "nothing",
            changed=changed,
        )
