"""A ``redis-server`` of the tests' own: a subprocess on a free loopback port, in a temporary
directory, without persistence unless asked (``SHUTDOWN SAVE`` writes it), never a system
service. ``redis-server`` missing is a failure, not a skip: the README's test command and
``.ci/run`` install it. With ``tls`` (certificate, key and CA files) it speaks TLS only."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``, its files in ``directory``; with ``tls``
    (certificate, key, CA) on TLS only; with ``client_cert`` (a file with a key and the
    certificate the CA signed, which :meth:`command` presents) it asks clients for one."""

    def __init__(
        self,
        directory: Path,
        tls: tuple[Path, Path, Path] | None = None,
        *,
        client_cert: Path | None = None,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.client_cert = client_cert
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start it (on the same port and directory as before) and wait until it answers."""
        options = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--dir": str(self.directory),
            "--save": "",
            "--appendonly": "no",
            "--logfile": str(self.directory / "redis.log"),
        }
        if self.tls is not None:
            cert, key, ca = self.tls
            asks = "no" if self.client_cert is None else "yes"
            options |= {"--port": "0", "--tls-port": str(self.port), "--tls-cert-file": str(cert),
                        "--tls-key-file": str(key), "--tls-ca-cert-file": str(ca),
                        "--tls-auth-clients": asks}  # fmt: skip
        command = ["redis-server", *(item for pair in options.items() for item in pair)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def command(self, *args: str) -> bytes:
        """Send one command; its raw reply (read until the first line: simple replies only)."""
        request = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            request += b"$%d\r\n%s\r\n" % (len(data), data)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls[2])
            context.check_hostname = False  # a certificate for any name will do here
            if self.client_cert is not None:
                context.load_cert_chain(self.client_cert)
            sock = context.wrap_socket(sock)  # which takes the plain socket over
        with sock:
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def stop(self, *, save: bool = False) -> None:
        """Shut it down (``save``: writing its data first, as a graceful restart does)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.command("SHUTDOWN", "SAVE" if save else "NOSAVE")
        except OSError:
            pass
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: everything it held is lost (no persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)


def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The body of a module's ``redis`` fixture: one server for the module's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The body of an ``own_redis`` fixture: a Redis of the test's own, to stop, kill and
    restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def emptied(redis: RedisServer) -> str:
    """The body of a ``store_url`` fixture: the module's Redis, emptied; its URL."""
    assert redis.command("FLUSHALL") == b"+OK\r\n"
    return redis.url()
