"""``logatron serve`` in a subprocess, on ephemeral ports: for the tests that kill it."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TIMEOUT = 20


class Served:
    """``logatron serve --port PORT --http-port 0 OPTIONS…`` (PORT 0: any free port),
    listening when the constructor returns; ``port`` and ``http_port`` are its ports."""

    def __init__(self, *options: str, port: int = 0) -> None:
        command = [
            sys.executable, "-m", "logatron_anyio", "serve", "--port", str(port),
            "--http-port", "0", *options,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        banner = self.process.stdout.readline(), self.process.stdout.readline()
        ports = [int(re.findall(r":(\d+)", line)[-1]) for line in banner if line]
        if len(ports) != 2:
            self.process.kill()
            raise AssertionError(f"no banner: {banner} {self.process.communicate()}")
        self.port, self.http_port = ports

    def get(self, path: str) -> Any:
        """``GET path``, which must answer 200: its JSON."""
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=TIMEOUT) as http:
            http.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := http.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return json.loads(body)

    def kill(self, how: int) -> str:
        """Send ``how`` (SIGKILL, SIGTERM) and wait for the end; the server's stderr."""
        self.process.send_signal(how)
        _, err = self.process.communicate(timeout=TIMEOUT)
        return err


@contextmanager
def served(*options: str, port: int = 0) -> Iterator[Served]:
    """A Served, killed on the way out if it still runs."""
    server = Served(*options, port=port)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill(signal.SIGKILL)
