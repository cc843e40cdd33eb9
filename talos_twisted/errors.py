"""One error hierarchy: every failure a client can be told about, with its HTTP status.

Raised anywhere (pure logic, the factory client, downloads, the cache); turned into a
response in one place (`talos_twisted.web.errors`). The status is a fact of the error's
kind, so the code that detects a fault never picks a status code for our clients.
"""

from __future__ import annotations


class TalosError(Exception):
    """Base: `status`, a one-sentence `message`, and `retry_after` seconds (or None)."""

    status: int = 500
    default_retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    def __str__(self) -> str:
        return self.message


# --- the request --------------------------------------------------------------------


class BadRequest(TalosError, ValueError):
    """Input that can never name anything: 400."""

    status = 400


class NotFound(TalosError, LookupError):
    """Well-formed input naming something that does not exist: 404."""

    status = 404


class Disabled(TalosError):
    status = 503


# --- this server ----------------------------------------------------------------------


class Unavailable(TalosError):
    """Not now, maybe later: still building, waiting for a slot, shutting down."""

    status = 503
    default_retry_after = 30


class StorageError(TalosError):
    """The local cache cannot be written (disk full, I/O error, permissions)."""

    status = 503
    default_retry_after = 60


class TooLarge(TalosError):
    """The image is larger than the whole cache, so it was not kept."""

    status = 507


class InternalError(TalosError):
    status = 500


# --- the image factory ----------------------------------------------------------------


class UpstreamError(TalosError):
    """The image factory answered wrongly (unexpected status, bad data): 502.

    `retryable` says whether the same call may succeed when made again.
    """

    status = 502
    # (status, first line of the body) of the factory's own answer, when it gave one: the
    # factory mirror passes a 4xx through as the factory worded it
    upstream: tuple[int, str] | None = None

    def __init__(self, message: str, *, retry_after: int | None = None, retryable: bool = False):
        super().__init__(message, retry_after=retry_after)
        self.retryable = retryable


class UpstreamUnreachable(UpstreamError):
    """Connection refused, DNS failure: 503, try again later."""

    status = 503
    default_retry_after = 30


class UpstreamFailing(UpstreamError):
    """The factory answered 5xx or 429: it is failing or overloaded."""

    status = 503
    default_retry_after = 30


class UpstreamTimeout(UpstreamError):
    status = 504
    default_retry_after = 30


class UpstreamNotFound(UpstreamError):
    """The factory answered 404: it does not know what we asked for."""

    status = 404


class UpstreamCorrupt(UpstreamError):
    """The body failed its integrity check, or the image changed across a resume."""

    status = 502
