"""How a consumer reaches a server: a TCP connection, directly or through an HTTP proxy's
``CONNECT`` tunnel, then TLS for an ``https://`` URL.

The proxy comes from the environment as curl and Python's ``urllib`` read it:
``HTTPS_PROXY`` for ``https://`` URLs, ``HTTP_PROXY`` for ``http://`` ones (lower-case names
too, and they win; upper-case ``HTTP_PROXY`` is ignored under CGI, where a request's
``Proxy:`` header would set it), unless ``NO_PROXY`` covers the server: a comma-separated list
of host names (a name covers its subdomains; a leading dot is allowed), addresses, either
with ``:port``, or ``*`` for every host. The
tunnel is always a ``CONNECT`` (the WebSocket tail needs a raw connection, and one way is
simpler than two), to an ``http://`` proxy, with ``Proxy-Authorization: Basic`` when the
proxy's URL carries a user and password. TLS then runs through the tunnel, end to end with
the server: the proxy sees only the host and port.
"""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import h11

from logatron_sync._tls import client_context

from ._tls import wrap_client

__all__ = ["MAX_PROXY_REPLY_BYTES", "Dialer", "ProxyError", "proxy_from_environment"]

# The proxy's answer to CONNECT: a status line and a few headers.
MAX_PROXY_REPLY_BYTES = 16 * 1024


class ProxyError(ConnectionError):
    """The proxy refused the tunnel, or answered something that is not HTTP."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: its address and, if its URL had them, credentials (kept out of repr)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        """Raises ValueError for a URL that is not ``http://[user:password@]host[:port]``."""
        if "://" not in url:
            url = "http://" + url  # curl takes "host:port" too
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected a proxy URL like http://host:port, not {parts.scheme}://…")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


def _environment(name: str) -> str:
    """``name`` from the environment, the lower-case spelling first."""
    value = os.environ.get(name.lower())
    if value is None and not (name == "HTTP_PROXY" and "REQUEST_METHOD" in os.environ):
        value = os.environ.get(name)
    return (value or "").strip()


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether the ``NO_PROXY`` list ``no_proxy`` covers ``host``:``port``."""
    host = host.lower().strip("[]")
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        name, colon, entry_port = entry.rpartition(":")
        if not colon or not entry_port.isdigit() or (":" in name and not name.endswith("]")):
            name, entry_port = entry, ""  # no port (or a bare IPv6 address)
        name = name.strip("[]").lstrip(".")
        if not name or (entry_port and int(entry_port) != port):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_from_environment(scheme: str, host: str, port: int) -> Proxy | None:
    """The proxy the environment names for ``scheme`` (``http``/``https``) to reach ``host``
    (None: none, or ``NO_PROXY`` covers it). Raises ValueError for a proxy URL that is not
    ``http://``."""
    url = _environment(f"{scheme.upper()}_PROXY")
    if not url or _bypassed(host, port, _environment("NO_PROXY")):
        return None
    return Proxy.from_url(url)


class Dialer:
    """Opens connections to one server (``host``:``port``): over TLS with ``ssl_context``
    (None: plain), through ``proxy`` (None: directly)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.proxy = proxy

    @classmethod
    def for_url(
        cls, scheme: str, host: str, port: int, tls: ssl.SSLContext | str | os.PathLike[str] | None
    ) -> Dialer:
        """The dialer of a consumer URL: TLS for ``https`` (with the ``tls`` context, or
        trusting the CA file ``tls`` or ``LOGATRON_TLS_CA``, else the system's CAs), the
        environment's proxy. Raises ValueError for ``tls`` with ``http``, OSError or
        ssl.SSLError for a CA file it cannot use."""
        context = None
        if scheme == "https":
            if isinstance(tls, ssl.SSLContext):
                context = tls
            else:
                context = client_context(tls or os.environ.get("LOGATRON_TLS_CA") or None)
        elif tls is not None:
            raise ValueError("tls= needs an https:// URL")
        return cls(host, port, context, proxy_from_environment(scheme, host, port))

    async def connect(self) -> anyio.abc.ByteStream:
        """A new connection to the server. Raises OSError (ProxyError, ssl.SSLError)."""
        if self.proxy is None:
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(self.host, self.port)
        else:
            stream = await self._tunnel(self.proxy)
        if self.ssl_context is None:
            return stream
        return await wrap_client(stream, self.ssl_context, self.host)

    async def _tunnel(self, proxy: Proxy) -> anyio.abc.ByteStream:
        """A ``CONNECT`` tunnel through ``proxy`` to the server."""
        stream = await anyio.connect_tcp(proxy.host, proxy.port)
        try:
            return await self._open(stream, proxy)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise

    async def _open(self, stream: anyio.abc.SocketStream, proxy: Proxy) -> anyio.abc.ByteStream:
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        headers = [("host", target)]
        if proxy.authorization is not None:
            headers.append(("proxy-authorization", proxy.authorization))
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_PROXY_REPLY_BYTES)
        request = h11.Request(method="CONNECT", target=target, headers=headers)
        try:
            await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    break
                elif not isinstance(event, h11.InformationalResponse):
                    raise ProxyError("the proxy closed the connection before answering CONNECT")
        except h11.ProtocolError as error:
            raise ProxyError(f"the proxy's answer to CONNECT is not HTTP: {error}") from None
        except anyio.BrokenResourceError as error:
            raise ProxyError(f"the connection to the proxy broke: {error}") from None
        if not 200 <= event.status_code < 300:
            reason = event.reason.decode("latin-1", "replace")
            raise ProxyError(f"the proxy refused the tunnel: {event.status_code} {reason}")
        leftover, _ = conn.trailing_data
        if leftover:  # the server spoke before we did: no protocol here does
            raise ProxyError("unexpected bytes from the proxy after its answer to CONNECT")
        return stream
