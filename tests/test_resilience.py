"""`logatron serve` outlives running out of file descriptors (it must never lose its store)."""

import re
import socket
import subprocess
import sys
import time

TIMEOUT = 20


def get_healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as http:
        http.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return http.recv(200)


def test_serve_survives_running_out_of_file_descriptors() -> None:
    # ulimit -n 60: the 70 idle connections below exhaust the server's descriptors.
    command = f"ulimit -n 60; exec {sys.executable} -m logatron_anyio serve --port 0 --http-port 0"
    with subprocess.Popen(
        ["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        peers: list[socket.socket] = []
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
                time.sleep(0.5)  # the server fails to accept some of them
                for peer in peers:
                    peer.close()
                deadline = time.monotonic() + TIMEOUT
                while server.poll() is None and time.monotonic() < deadline:
                    try:
                        if get_healthz(http_port).startswith(b"HTTP/1.1 200"):
                            break
                    except OSError:
                        time.sleep(0.2)
                assert server.poll() is None, "the server exited"
                keeper.sendall(b"LOG still stored\nPING\n")
                assert keeper.recv(100) == b"PONG\n"
        finally:
            for peer in peers:
                peer.close()
            server.terminate()
            _, err = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, err
        assert "accept failed" in err


def test_sync_server_waits_out_running_out_of_file_descriptors() -> None:
    command = f"ulimit -n 40; exec {sys.executable} -m logatron_sync --port 0"
    with subprocess.Popen(
        ["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        peers: list[socket.socket] = []
        try:
            assert server.stdout is not None
            port = int(re.findall(r":(\d+)", server.stdout.readline())[-1])
            for _ in range(50):
                peers.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(2)  # about two ticks out of descriptors
            for peer in peers:
                peer.close()
            peers.clear()
            time.sleep(1.5)  # the next tick accepts again
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                client.sendall(b"IAM after\nPING\n")
                assert client.recv(100) == b"PONG\n"
        finally:
            for peer in peers:
                peer.close()
            server.terminate()
            _, err = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, err
        assert 1 <= err.count("accept failed") <= 5  # logged once a tick, not in a busy loop
