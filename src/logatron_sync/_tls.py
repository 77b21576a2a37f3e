"""TLS settings shared by every transport: the contexts a server and a client use, and the
names of a peer's verified certificate. Standard library only (``ssl``), so that the anyio
adapter uses these same functions.

Both sides refuse anything older than TLS 1.2. A server context asks for a client
certificate only when it is given a CA to check it against (``client_ca``), and then requires
one; the names such a certificate carries are what ``peer_names`` hands to the core's
``Session`` (see ``logatron_core.Authorizer``).
"""

from __future__ import annotations

import os
import ssl
from typing import Final

from logatron_core import certificate_names

__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "MINIMUM_VERSION",
    "client_context",
    "peer_names",
    "server_context",
]

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2

# Time a peer has to complete its TLS handshake once connected; past it the connection is
# closed. A handshake is two round trips: even at a satellite link's 600 ms that is under 3 s.
# nginx's stream module allows 60 s (ssl_handshake_timeout); a peer that stalls here holds a
# socket and a little memory, never the server's loop.
HANDSHAKE_TIMEOUT_SECONDS: Final = 10.0

StrPath = str | os.PathLike[str]


def server_context(
    cert: StrPath, key: StrPath | None = None, *, client_ca: StrPath | None = None
) -> ssl.SSLContext:
    """A server's context: its certificate chain ``cert`` (PEM) and private ``key`` (None:
    in ``cert``), TLS 1.2 at least; with ``client_ca``, clients must present a certificate that
    CA signed. Raises OSError for a file it cannot read, ssl.SSLError for one it cannot use."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    # No TLS 1.3 session tickets: they are sent after the handshake, unasked, and a client
    # that never reads (a fire-and-forget sender) would close with them unread, which resets
    # the connection and can lose the lines it sent last. Sessions are not resumed.
    context.num_tickets = 0
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: StrPath | None = None, *, cert: StrPath | None = None, key: StrPath | None = None
) -> ssl.SSLContext:
    """A client's context, TLS 1.2 at least: it trusts the CA certificates in ``ca`` (PEM;
    None: the system's), checks the server's host name, and presents the client certificate
    ``cert`` with its ``key`` when given. Raises OSError or ssl.SSLError for unusable files."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = MINIMUM_VERSION
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def peer_names(connection: ssl.SSLObject | ssl.SSLSocket | None) -> frozenset[str] | None:
    """The names the peer's verified certificate carries, or None when the connection is not
    TLS or its context does not ask for client certificates."""
    if connection is None or connection.context.verify_mode == ssl.CERT_NONE:
        return None
    return certificate_names(connection.getpeercert())
