"""Errors of the core: the wire's error codes and the exceptions raised to callers.

A *remote* error means the peer broke the protocol; a *local* error means our own caller asked
for something illegal (an invalid name given to the encoder, data after end of input).
"""

from enum import Enum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "LogatronError",
    "NameTaken",
    "NoSuchClient",
    "RegistryRefusal",
    "RemoteProtocolError",
    "ServerRefused",
    "TooManyClients",
    "TooManyKeys",
]


class ErrorCode(Enum):
    """The codes a server sends in ``ERR <code> <text>``; ``fatal`` ones close the connection."""

    BAD_IAM = "bad-iam"
    NAME_TAKEN = "name-taken"
    TOO_MANY_CLIENTS = "too-many-clients"
    UNKNOWN_COMMAND = "unknown-command"
    BAD_SET = "bad-set"
    TOO_MANY_KEYS = "too-many-keys"
    LINE_TOO_LONG = "line-too-long"
    UNAUTHORIZED = "unauthorized"

    @property
    def fatal(self) -> bool:
        return self in _FATAL


_FATAL = frozenset(
    {ErrorCode.BAD_IAM, ErrorCode.NAME_TAKEN, ErrorCode.TOO_MANY_CLIENTS, ErrorCode.UNAUTHORIZED}
)


class LogatronError(Exception):
    """Base class of every error this package raises on purpose."""


class RemoteProtocolError(LogatronError):
    """The peer broke the protocol in a way that ends the connection.

    ``code`` is the :class:`ErrorCode` a server sends back before closing; it is ``None`` when a
    client finds a server's reply it cannot parse.
    """

    def __init__(self, code: ErrorCode | None, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}" if code else detail)
        self.code = code
        self.detail = detail


class LocalProtocolError(LogatronError, ValueError):
    """Our caller asked for something the protocol forbids; nothing was changed or sent."""


class ServerRefused(LogatronError):
    """Seen by a client: the server answered a fatal ``ERR`` (``bad-iam``, ``name-taken``,
    ``too-many-clients``, ``unauthorized``) and closed the connection. ``code`` is the
    ErrorCode, ``text`` the server's explanation. Every transport's client raises this same
    class.
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"the server refused the connection: {code.value}: {text}")
        self.code = code
        self.text = text


class RegistryRefusal(LogatronError):
    """The registry refused a request; ``code`` is what the server answers on the wire."""

    code: ErrorCode

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NameTaken(RegistryRefusal):
    """A client of that name is connected already."""

    code = ErrorCode.NAME_TAKEN


class TooManyClients(RegistryRefusal):
    """The limit of connected clients is reached."""

    code = ErrorCode.TOO_MANY_CLIENTS


class TooManyKeys(RegistryRefusal):
    """The client holds its limit of state keys; the new key was not stored."""

    code = ErrorCode.TOO_MANY_KEYS


class NoSuchClient(LogatronError, KeyError):
    """No client of that name is connected or retained."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no such client: {self.name!r}"
