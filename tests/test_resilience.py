"""`logatron serve` outlives running out of file descriptors (it must never lose its store)."""

import re
import select
import socket
import subprocess
import sys
import time
from typing import IO

TIMEOUT = 20


def get_healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as http:
        http.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return http.recv(200)


def wait_for_line(pipe: IO[str] | None, text: str, seen: list[str]) -> None:
    """Read ``pipe`` line by line (into ``seen``) until a line holds ``text``, within TIMEOUT."""
    assert pipe is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], deadline - time.monotonic())
        if ready:
            line = pipe.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return
    raise AssertionError(f"no line with {text!r} in time: {seen}")


def test_serve_survives_running_out_of_file_descriptors() -> None:
    # ulimit -n 60: the 70 idle connections below exhaust the server's descriptors.
    command = f"ulimit -n 60; exec {sys.executable} -m logatron_anyio serve --port 0 --http-port 0"
    with subprocess.Popen(
        ["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        peers: list[socket.socket] = []
        logged: list[str] = []
        try:
            assert server.stdout is not None
            tcp_line, http_line = server.stdout.readline(), server.stdout.readline()
            tcp_port = int(re.findall(r":(\d+)", tcp_line)[-1])
            http_port = int(re.findall(r":(\d+)", http_line)[-1])
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=TIMEOUT) as keeper:
                keeper.sendall(b"IAM keeper\nLOG kept\nPING\n")
                assert keeper.recv(100) == b"PONG\n"
                for _ in range(70):
                    peers.append(socket.create_connection(("127.0.0.1", tcp_port)))
                wait_for_line(server.stderr, "accept failed", logged)
                for peer in peers:
                    peer.close()
                deadline = time.monotonic() + TIMEOUT
                healthy = False
                while server.poll() is None and not healthy and time.monotonic() < deadline:
                    try:
                        healthy = get_healthz(http_port).startswith(b"HTTP/1.1 200")
                    except OSError:
                        time.sleep(0.05)  # poll again after the listener's retry pause
                assert server.poll() is None, "the server exited"
                assert healthy
                keeper.sendall(b"LOG still stored\nPING\n")
                assert keeper.recv(100) == b"PONG\n"
        finally:
            for peer in peers:
                peer.close()
            server.terminate()
            _, err = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, err


def test_sync_server_waits_out_running_out_of_file_descriptors() -> None:
    command = f"ulimit -n 40; exec {sys.executable} -m logatron_sync --port 0"
    with subprocess.Popen(
        ["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        peers: list[socket.socket] = []
        logged: list[str] = []
        try:
            assert server.stdout is not None
            port = int(re.findall(r":(\d+)", server.stdout.readline())[-1])
            for _ in range(50):
                peers.append(socket.create_connection(("127.0.0.1", port)))
            wait_for_line(server.stderr, "accept failed", logged)
            for peer in peers:
                peer.close()
            peers.clear()
            # Queued in the listen backlog; answered once the pause is over.
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                client.sendall(b"IAM after\nPING\n")
                assert client.recv(100) == b"PONG\n"
        finally:
            for peer in peers:
                peer.close()
            server.terminate()
            _, err = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, err
        failures = "".join(logged).count("accept failed") + err.count("accept failed")
        assert 1 <= failures <= 5  # logged once a pause, not in a busy loop
