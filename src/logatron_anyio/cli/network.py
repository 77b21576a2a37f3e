"""``logatron serve`` on a network: its TLS contexts and tokens from the options' files, and
the warning for a server reachable from the network without TLS or without tokens."""

from __future__ import annotations

import ipaddress
import logging
import ssl

from logatron_core import Authorizer

from .._auth import load_auth_file
from .._tls import server_context

__all__ = ["AccessError", "server_access", "warn_if_exposed"]


class AccessError(Exception):
    """A TLS or auth file of ``logatron serve`` cannot be used: the one line to print."""


def server_access(
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    token: str | None,
    auth_file: str | None,
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None, Authorizer]:
    """The TCP port's and the HTTP port's TLS contexts (None: no TLS; only the TCP port asks
    for client certificates) and the tokens (``--token`` and the auth file's). Raises
    AccessError."""
    tcp_tls = http_tls = None
    try:
        authorizer = Authorizer.single_token(token) if token else Authorizer()
    except ValueError as error:
        raise AccessError(f"cannot use --token: {error}") from None
    try:
        if tls_cert is not None:
            tcp_tls = server_context(tls_cert, tls_key, client_ca=tls_client_ca)
            http_tls = server_context(tls_cert, tls_key)
        if auth_file is not None:
            authorizer = authorizer + load_auth_file(auth_file)
    except (OSError, ValueError) as error:  # ssl.SSLError, AuthFileError
        raise AccessError(f"cannot use the TLS or auth files: {error}") from None
    return tcp_tls, http_tls, authorizer


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or "" for every interface): reachable from the network


def warn_if_exposed(host: str, *, tls: bool, tokens: bool, client_certificates: bool) -> None:
    """Log one warning line when ``host`` is not loopback and TLS or tokens are missing."""
    missing = [what for what, has in (("TLS", tls), ("tokens", tokens)) if not has]
    if is_loopback(host) or not missing:
        return
    harm = []
    if not tls:
        harm.append("logs and tokens cross the network in clear text")
    if not tokens:
        writes = "" if client_certificates else " and write as any client"
        harm.append(f"anyone who can reach the ports can read every log{writes}")
    logging.getLogger("logatron.server").warning(
        "listening on %s without %s: %s",
        host,
        " and without ".join(missing),
        "; ".join(harm),
        extra={"event": "exposed", "missing": missing},
    )
