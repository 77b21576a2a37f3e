"""Access on the anyio side: the auth file read into the core's ``Authorizer``, and the HTTP
server's bearer-token check.

The auth file (``--auth-file``) is TOML, one ``[[token]]`` table per token::

    [[token]]
    secret_sha256 = "9f86d0…"      # or: secret = "…" (a digest keeps the secret out of the file)
    read = true                    # the HTTP API, the tail and the status page (default false)
    write = ["worker-*", "ci-*"]   # names it may identify as, shell-style (default none)

Anything else (an unknown key, a value of the wrong type, no token at all) is refused with the
file's name and the token's number, never its secret.

``HttpGate`` answers a request without a valid token with 401 (``unauthorized``, with
``WWW-Authenticate: Bearer``) and one whose token may not read with 403 (``forbidden``); it
counts both (``logatron_http_auth_failures_total`` in ``/metrics``) and logs each with the
peer's address and the path, never the token or the query string that may carry it.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections import Counter
from typing import Any

from logatron_core import Access, Authorizer, TokenGrant

from ._routes import HttpError

__all__ = ["AuthFileError", "HttpGate", "load_auth_file", "parse_auth"]

logger = logging.getLogger("logatron.http")

_KEYS = {"secret", "secret_sha256", "read", "write"}


class AuthFileError(ValueError):
    """The auth file cannot be read or does not say what it must."""


def load_auth_file(path: str | os.PathLike[str]) -> Authorizer:
    """The tokens of the auth file at ``path``. Raises AuthFileError."""
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AuthFileError(f"cannot read the auth file {os.fspath(path)}: {error}") from None
    return parse_auth(text, os.fspath(path))


def parse_auth(text: str, source: str = "<auth file>") -> Authorizer:
    """The tokens of an auth file's ``text`` (``source`` names it in errors). Raises
    AuthFileError."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AuthFileError(f"{source}: not valid TOML: {error}") from None
    extra = set(document) - {"token"}
    if extra:
        raise AuthFileError(f"{source}: unknown table or key {sorted(extra)[0]!r}")
    tables = document.get("token")
    if not isinstance(tables, list) or not tables:
        raise AuthFileError(f"{source}: no [[token]] table")
    return Authorizer(_grant(table, f"{source}: token {n}") for n, table in enumerate(tables, 1))


def _grant(table: Any, where: str) -> TokenGrant:
    if not isinstance(table, dict):
        raise AuthFileError(f"{where}: expected a [[token]] table")
    unknown = set(table) - _KEYS
    if unknown:
        raise AuthFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    read = table.get("read", False)
    write = table.get("write", [])
    if not isinstance(read, bool):
        raise AuthFileError(f"{where}: read must be true or false")
    if not isinstance(write, list) or not all(isinstance(p, str) and p for p in write):
        raise AuthFileError(f"{where}: write must be a list of name patterns")
    secrets = [key for key in ("secret", "secret_sha256") if key in table]
    if len(secrets) != 1:
        raise AuthFileError(f"{where}: give either secret or secret_sha256")
    value = table[secrets[0]]
    try:
        if not isinstance(value, str):
            raise ValueError(f"{secrets[0]} must be a string")
        if secrets[0] == "secret":
            return TokenGrant.from_secret(value, read=read, write=write)
        return TokenGrant.from_sha256(value, read=read, write=write)
    except ValueError as error:
        raise AuthFileError(f"{where}: {error}") from None


class HttpGate:
    """The bearer-token check of every HTTP route that needs one; ``failures`` counts the
    refusals by code (``unauthorized``, ``forbidden``)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        self.failures: Counter[str] = Counter()

    def check(
        self, authorization: bytes | None, query_token: str | None, peer: str, path: str
    ) -> None:
        """Return if the request may read; raise HttpError (401 or 403) otherwise. The token
        comes from ``Authorization: Bearer`` or, for a browser's WebSocket, ``?token=``."""
        offered: str | None = query_token
        if authorization is not None:
            scheme, _, credentials = authorization.partition(b" ")
            offered = None
            if scheme.lower() == b"bearer":
                try:
                    offered = credentials.strip().decode("utf-8")  # as the consumer sends it
                except UnicodeDecodeError:
                    pass  # no token could match
        access = self.authorizer.read_access(offered)
        if access is Access.ALLOWED:
            return
        code = access.value
        self.failures[code] += 1
        logger.warning(
            "HTTP %s from %s for %s",
            code,
            peer,
            path,
            extra={"event": "http-" + code, "peer": peer, "path": path},
        )
        if access is Access.FORBIDDEN:
            raise HttpError(403, "forbidden", "this token may not read")
        challenge = (("www-authenticate", 'Bearer realm="logatron"'),)
        raise HttpError(401, "unauthorized", "a valid bearer token is required", challenge)
