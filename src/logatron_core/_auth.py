"""Who may read, and which names a peer may identify as: the server's access policy, no I/O.

An :class:`Authorizer` holds the access tokens a server knows, each a :class:`TokenGrant`:
the SHA-256 digest of its secret (the secret itself is never kept), whether it may ``read``
(the HTTP API, the tail, the status page) and the names it may ``write`` as (shell-style
patterns, case-sensitive). Adapters build one (from ``--token``, an auth file) and give it to
every :class:`~logatron_core.Session`, with the names the peer's verified TLS client
certificate carries (:func:`certificate_names`; ``None`` for a connection without one).

The rules for ``IAM <name> [<token>]`` (:meth:`Authorizer.identify_refusal`):

1. with tokens configured, a token that is sent must be one of them;
2. the name is allowed if the token's ``write`` patterns match it, or if the peer's
   certificate carries it (its common name or a DNS subject alternative name, exactly);
3. otherwise it is allowed only on an open server: no tokens configured and no client
   certificate in use; everything else is refused (``ERR unauthorized``).

Without tokens a token that is sent is ignored, so clients can be given theirs before the
server requires them. Secrets are compared as digests with :func:`hmac.compare_digest`,
against every grant (no early exit). No message here ever contains a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase
from typing import Any

from ._wire import TOKEN_RULE, is_valid_token

__all__ = ["Access", "Authorizer", "TokenGrant", "certificate_names"]

_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One access token: the SHA-256 ``digest`` of its secret (kept out of ``repr``), whether
    it may ``read``, and the shell-style patterns of the names it may ``write`` as."""

    digest: bytes = field(repr=False)
    read: bool = False
    write: tuple[str, ...] = ()

    @classmethod
    def from_secret(
        cls, secret: str, *, read: bool = False, write: Iterable[str] = ()
    ) -> TokenGrant:
        """A grant for ``secret``. Raises ValueError for a secret that cannot be sent (see
        ``TOKEN_RULE``); the message does not show it."""
        if not is_valid_token(secret):
            raise ValueError(TOKEN_RULE)
        return cls(_digest(secret), read, tuple(write))

    @classmethod
    def from_sha256(
        cls, hexdigest: str, *, read: bool = False, write: Iterable[str] = ()
    ) -> TokenGrant:
        """A grant for the secret whose SHA-256 (of its UTF-8) is ``hexdigest`` (64 hex digits,
        as ``sha256sum`` prints it). Raises ValueError otherwise."""
        if not _SHA256_HEX_RE.fullmatch(hexdigest):
            raise ValueError("secret_sha256 must be 64 hexadecimal digits")
        return cls(bytes.fromhex(hexdigest), read, tuple(write))

    def may_write(self, name: str) -> bool:
        """Whether one of the ``write`` patterns matches ``name``."""
        return any(fnmatchcase(name, pattern) for pattern in self.write)


class Access(Enum):
    """The answer to a reader: allowed, no valid token (HTTP 401), or a token that may not
    read (HTTP 403)."""

    ALLOWED = "allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"


class Authorizer:
    """The access policy of one server (see the module comment). ``Authorizer()``, without
    grants, is an open server: anyone may read, and identify as any name unless a client
    certificate is in use."""

    __slots__ = ("_grants",)

    def __init__(self, grants: Iterable[TokenGrant] = ()) -> None:
        self._grants = tuple(grants)

    @classmethod
    def single_token(cls, secret: str) -> Authorizer:
        """``--token``: one token that may read and write as any name. Raises ValueError as
        :meth:`TokenGrant.from_secret`."""
        return cls([TokenGrant.from_secret(secret, read=True, write=("*",))])

    def __add__(self, other: Authorizer) -> Authorizer:
        """Both policies' grants."""
        return Authorizer(self._grants + other._grants)

    def __repr__(self) -> str:
        return f"Authorizer({len(self._grants)} tokens)"

    @property
    def tokens_required(self) -> bool:
        """Whether any token is configured (then readers need one, and so do writers without
        a client certificate that carries their name)."""
        return bool(self._grants)

    def grant(self, secret: str | None) -> TokenGrant | None:
        """The grant of ``secret``, or None (no secret, one that is not a valid token, or an
        unknown one). Every grant is compared, in constant time each."""
        if not secret or not is_valid_token(secret):
            return None
        offered = _digest(secret)
        found = None
        for grant in self._grants:
            if hmac.compare_digest(offered, grant.digest):
                found = grant
        return found

    def read_access(self, secret: str | None) -> Access:
        """May a reader holding ``secret`` (None: none sent) use the HTTP API?"""
        if not self._grants:
            return Access.ALLOWED
        grant = self.grant(secret)
        if grant is None:
            return Access.UNAUTHORIZED
        return Access.ALLOWED if grant.read else Access.FORBIDDEN

    def identify_refusal(
        self, name: str, secret: str, certificate_names: frozenset[str] | None
    ) -> str | None:
        """None if a peer may identify as ``name`` with ``secret`` ("" for none) and the names
        of its verified client certificate (None: no certificate in use); else why not, for
        ``ERR unauthorized`` (never showing the secret)."""
        has_certificate = certificate_names is not None
        if self._grants and secret:
            grant = self.grant(secret)
            if grant is None:
                return "the token is not valid"
            if grant.may_write(name):
                return None
        if certificate_names is not None and name in certificate_names:
            return None
        if not self._grants and not has_certificate:
            return None
        if has_certificate and self._grants:
            return f"{name!r} is neither a name of the client certificate nor granted by a token"
        if has_certificate:
            return f"the client certificate does not carry the name {name!r}"
        if secret:
            return f"the token may not identify as {name!r}"
        return "this server needs a token: IAM <name> <token>"


def certificate_names(peer_certificate: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a verified certificate carries, as :meth:`ssl.SSLSocket.getpeercert` gives
    it: its subject's common names and its DNS subject alternative names (empty for None)."""
    if not peer_certificate:
        return frozenset()
    names: set[str] = set()
    for rdn in peer_certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in peer_certificate.get("subjectAltName", ()):
        if kind == "DNS":
            names.add(str(value))
    return frozenset(names)
