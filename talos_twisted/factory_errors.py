"""What a failed factory call means to our clients: a Twisted failure or an HTTP status of
the factory becomes one of the `UpstreamError` kinds of `errors.py`, its message naming the
factory's host and the cause (DNS, refused, timeout, status and the body's first line)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError, ConnectingCancelledError, ConnectionRefusedError, DNSLookupError, TCPTimedOutError,
    TimeoutError as TxTimeoutError,
)
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from talos_twisted.errors import (
    TalosError, UpstreamError, UpstreamFailing, UpstreamNotFound, UpstreamTimeout, UpstreamUnreachable,
)


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else ""


def _factory(host: str) -> str:
    return f"the image factory ({host})" if host else "the image factory"


def _connect_cause(e: BaseException) -> str:
    if isinstance(e, DNSLookupError):
        return "DNS lookup failed"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (TCPTimedOutError, ConnectingCancelledError)):
        return "connecting timed out"
    return str(e).strip() or type(e).__name__


def as_talos_error(
    failure_value: BaseException, what: str, timeout: float | None = None, host: str = ""
) -> TalosError:
    """What a failed upstream call means to our clients (our own errors pass through);
    the message names the factory's host and the cause (DNS, refused, timeout, status)."""
    if isinstance(failure_value, TalosError):
        return failure_value
    if isinstance(failure_value, (ResponseFailed, ResponseNeverReceived)):
        # a timeout cancels the request; the agent reports it wrapped in these
        reasons = [getattr(r, "value", r) for r in failure_value.reasons]
        if any(isinstance(r, (CancelledError, TxTimeoutError)) for r in reasons):
            failure_value = CancelledError()
    if isinstance(failure_value, (CancelledError, TxTimeoutError)):
        t = f" within {timeout:g}s" if timeout else ""
        return UpstreamTimeout(f"{_factory(host)} did not answer {what}{t}", retryable=True)
    if isinstance(failure_value, (ConnectError, DNSLookupError)):
        cause = _connect_cause(failure_value)
        return UpstreamUnreachable(f"{_factory(host)} is unreachable: {cause} ({what})", retryable=True)
    if isinstance(failure_value, (ResponseFailed, ResponseNeverReceived)):
        return UpstreamError(f"{_factory(host)} broke off the connection ({what})", retryable=True)
    return UpstreamError(f"{_factory(host)} call failed ({what}: {type(failure_value).__name__})", retryable=True)


def status_error(code: int, body: bytes, what: str, host: str = "") -> UpstreamError:
    detail = _first_line(body)
    msg = f"{_factory(host)} answered {code} to {what}" + (f": {detail}" if detail else "")
    error: UpstreamError
    if code == 404:
        error = UpstreamNotFound(msg)
    elif code == 429 or code >= 500:
        # the factory is failing or overloaded: a retry later may well succeed
        error = UpstreamFailing(msg, retryable=True)
    else:
        error = UpstreamError(msg)
    error.upstream = (code, detail)
    return error
