"""The consumer's errors, one per way a request can fail, and the one for an HTTP status."""

from __future__ import annotations

import json

from logatron_core import LogatronError

__all__ = [
    "BadResponse",
    "ConsumerError",
    "Forbidden",
    "NotFound",
    "Unauthorized",
    "Unreachable",
    "status_error",
]


class ConsumerError(LogatronError):
    """Base of the consumer's errors."""


class Unauthorized(ConsumerError):
    """The server wants a (different) bearer token: HTTP 401."""


class Forbidden(Unauthorized):
    """The token is valid but may not read: HTTP 403."""


class NotFound(ConsumerError):
    """No such client (or route): HTTP 404."""


class BadResponse(ConsumerError):
    """The server answered with an unexpected status or something that is not the API's JSON."""


class Unreachable(ConsumerError):
    """No connection to the server could be made (refused, unknown host, timed out, a TLS
    certificate not trusted, a proxy that refused the tunnel)."""


def status_error(status: int, body: bytes) -> ConsumerError:
    """The error for a failure ``status`` whose body (the API's JSON, or not) is ``body``."""
    try:
        detail = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace")
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 401:
        return Unauthorized(message)
    if status == 403:
        return Forbidden(message)
    if status == 404:
        return NotFound(message)
    return BadResponse(message)
