"""Log output: JSON lines or text for every event, the access-log event, download progress.

JSON output is one flat object per line for every event, Twisted's and twistd's included:
``{"time", "level", "namespace", "message", ...the event's own fields}``; a failure is one
line too, its traceback in the ``traceback`` field. Two ways to turn it on under twistd:

- ``twistd --logger talos_twisted.logs.json_logger ...`` (twistd calls `json_logger()`
  for its observer);
- from the plugin: make `LoggingRoot(observer_for(config.log_format))` the service that
  `makeService` returns; twistd's AppLogger then uses the Application's ILogObserver
  component (``--logger``, if given, still wins).

Both write to stdout, so run twistd with ``-n`` (systemd, containers): a daemonised twistd
points stdout at /dev/null.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, TextIO

from twisted.application.service import MultiService
from twisted.logger import FileLogObserver, ILogObserver, formatEvent, textFileLogObserver
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from talos_twisted.metrics import route_name

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers
    from twisted.web.server import Request

__all__ = [
    "LoggingRoot", "access_event", "json_line", "json_logger", "json_observer", "observer_for",
    "progress_line", "text_logger", "text_observer",
]

# the keys of our own; an event field of the same name is written as "event_<name>"
_OURS = frozenset({"time", "level", "namespace", "system", "message", "exception", "traceback"})
# what the bridge from twisted.python.log adds to a legacy event (already in our keys)
_LEGACY = frozenset({"message", "format", "isError", "system", "time", "failure", "why", "logLevel", "printed"})
_DEPTH = 4  # nested lists/dicts deeper than this are left out, not walked
MAX_LOGGED_TARGET = 1024  # a request target can be 8 KiB; the log keeps its start
_MAX_HEADER = 256


# --- JSON lines ---------------------------------------------------------------------------


def _plain(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """(True, a JSON-ready copy) for what JSON can carry as is (bytes as text), else (False, None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, bytes):
        return True, value.decode("utf-8", "replace")
    if depth >= _DEPTH:
        return False, None
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        pairs = {k: _plain(v, depth + 1) for k, v in value.items()}
        return (True, {k: v for k, (_, v) in pairs.items()}) if all(ok for ok, _ in pairs.values()) else (False, None)
    return False, None


def _iso(t: object) -> str:
    when = datetime.fromtimestamp(t if isinstance(t, (int, float)) else time.time(), timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(event: Mapping[str, Any]) -> str:
    """One event as one line of JSON (no newline at the end)."""
    legacy = isinstance(event.get("message"), tuple)  # twisted.python.log's events
    level = getattr(event.get("log_level"), "name", None)
    doc: dict[str, Any] = {
        "time": _iso(event.get("log_time", event.get("time"))),
        "level": level if isinstance(level, str) else "info",
        "namespace": str(event.get("log_namespace", "")),
    }
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        doc["system"] = system
    failure = event.get("log_failure", event.get("failure"))
    if isinstance(failure, Failure) and legacy:
        # the legacy text has the traceback in it; here it goes in its own field
        doc["message"] = str(event.get("why") or "Unhandled Error")
    else:
        doc["message"] = formatEvent(dict(event))
    if isinstance(failure, Failure):
        doc["exception"] = f"{getattr(failure.type, '__name__', '?')}: {failure.getErrorMessage()}"
        doc["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY):
            continue
        ok, plain = _plain(value)
        if ok:
            doc[f"event_{key}" if key in _OURS else key] = plain
    # ASCII: a stdout whose encoding is not UTF-8 can still write every line
    return json.dumps(doc, allow_nan=False)


def _json_format(event: Mapping[str, Any]) -> str:
    try:
        return json_line(event) + "\n"
    except Exception as e:  # an observer must never raise: the publisher would drop it
        return json.dumps({"time": _iso(event.get("log_time")), "level": "error", "namespace": __name__,
                           "message": f"unloggable event: {e!r}", "event": repr(event)[:2000]}) + "\n"


def json_observer(stream: TextIO) -> ILogObserver:
    """Writes every event to `stream` as one JSON object per line (flushed each line)."""
    return FileLogObserver(stream, _json_format)


def text_observer(stream: TextIO) -> ILogObserver:
    """Twisted's own text lines (a failure spans several lines, its traceback)."""
    return textFileLogObserver(stream)


def json_logger() -> ILogObserver:
    """For ``twistd --logger talos_twisted.logs.json_logger``: JSON lines on stdout.

    twistd calls this before it redirects sys.stdout into the log, so the real stdout is kept.
    """
    return json_observer(sys.stdout)


def text_logger() -> ILogObserver:
    return text_observer(sys.stdout)


def observer_for(log_format: str) -> ILogObserver | None:
    """The observer of a `log_format` setting: "json" -> JSON lines on stdout; "text" ->
    None, twistd's own (which honours --logfile and --syslog)."""
    if log_format == "json":
        return json_logger()
    if log_format == "text":
        return None
    raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")


class LoggingRoot(MultiService):
    """The top service for twistd: when twistd makes it a child of its Application, it gives
    the Application `observer` as its ILogObserver component, which twistd's AppLogger then
    logs everything to (unless ``--logger`` is given). None: twistd's default."""

    def __init__(self, observer: ILogObserver | None):
        MultiService.__init__(self)
        self.observer = observer

    def setServiceParent(self, parent: Any) -> Any:  # as Twisted's (unannotated) Service
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        return MultiService.setServiceParent(self, parent)


# --- the access log -------------------------------------------------------------------------


def _first(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1")[:_MAX_HEADER] if values else None


def _client(request: Request) -> str:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else type(addr).__name__


def access_event(request: Request, duration: float, completed: bool) -> tuple[str, dict[str, Any]]:
    """(format, fields) of the one access-log event of a request.

    `path` is the target with its query (which is part of an image's identity), capped at
    MAX_LOGGED_TARGET characters; `completed` is False when the connection was lost first.
    """
    target = request.uri.decode("latin-1")
    if len(target) > MAX_LOGGED_TARGET:
        target = target[:MAX_LOGGED_TARGET] + f"...({len(target)} characters)"
    fields: dict[str, Any] = {
        "client": _client(request),
        "method": request.method.decode("latin-1"),
        "path": target,
        "route": route_name(request.path),
        "status": request.code,
        "bytes": request.sentLength,
        "duration": round(duration, 6),
        "cache": _first(request.responseHeaders, b"x-talos-cache"),
        "version": _first(request.responseHeaders, b"x-talos-version"),
        "schematic": _first(request.responseHeaders, b"x-talos-schematic"),
        "user_agent": _first(request.requestHeaders, b"user-agent"),
        "completed": completed,
    }
    f = fields
    text = f'{f["client"]} "{f["method"]} {target}" {f["status"]} {f["bytes"]} {duration:.3f}s'
    if f["cache"] is not None:
        text += f' {f["cache"]} {f["version"]} {f["schematic"]}'
    if not completed:
        text += " (connection lost before the end)"
    # the line is rendered here, once: twisted.logger's formatter parses a format string per
    # event in Python, a tenth of a small request's cost with one field per value (bench B6).
    # A log_ key is the logger's own: JSON lines leave it out (their "message" is the line).
    fields["log_text"] = text
    return "{log_text}", fields


# --- download progress ------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def progress_line(bytes_done: int, size: int | None, elapsed: float) -> dict[str, Any]:
    """Fields of a progress event: bytes, size, percent, rate (bytes/s, over `elapsed`), eta
    (seconds; None while the size or the rate is unknown) and `progress`, the same in words.
    Log it as ``log.info("downloading {key}: {progress}", key=..., **progress_line(...))``."""
    rate = bytes_done / elapsed if elapsed > 0 else 0.0
    percent = eta = None
    if size is not None and size > 0:
        percent = round(min(100.0, 100.0 * bytes_done / size), 1)
        left = max(0, size - bytes_done)
        eta = 0.0 if left == 0 else round(left / rate, 1) if rate > 0 else None
    text = _human(bytes_done) + (f" of {_human(size)} ({percent}%)" if percent is not None and size else "")
    text += f", {_human(rate)}/s" + (f", ETA {eta:.0f}s" if eta is not None else "")
    return {"bytes": bytes_done, "size": size, "percent": percent, "rate": round(rate), "eta": eta, "progress": text}
