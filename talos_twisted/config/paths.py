"""Where the cache lives: ``~`` and XDG resolved against a given environment, not the process's."""

from __future__ import annotations

import os
from typing import Mapping


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home:
        return home
    # Daemons started by init systems may run without HOME; the password database still knows.
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir


def expand_path(path: str, environ: Mapping[str, str]) -> str:
    """``~`` expanded against *environ*'s HOME, made absolute (twistd may chdir when daemonizing)."""
    if path == "~" or path.startswith("~/"):
        path = _home(environ) + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)  # ~user: only the password database can answer
    return os.path.abspath(path)


def default_cache_directory(environ: Mapping[str, str] | None = None) -> str:
    """``${XDG_CACHE_HOME:-~/.cache}/talos-images``."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = xdg if os.path.isabs(xdg) else os.path.join(_home(env), ".cache")
    return expand_path(os.path.join(base, "talos-images"), env)
