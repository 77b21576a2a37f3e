"""The consumer commands ``logatron clients | state | recent | tail`` as subprocesses, against a
TCP and HTTP server run in this process (a background thread with its own event loop).

Every wait is bounded; ports are ephemeral, on 127.0.0.1 only."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.from_thread
import pytest

from logatron_anyio import Current, Gap, HttpServer, Lagged, LogatronServer
from logatron_anyio.cli import main
from logatron_anyio.cli.render import Output, TailPrinter
from logatron_core import ClientClosed, ClientReady, LogEntry, Registry
from test_cli import COMMAND, TIMEOUT, Lines, talk

# A fixed zone, 5:30 east of UTC (POSIX spells it "-05:30"): the commands print local times.
ZONE = timezone(timedelta(hours=5, minutes=30))
ENV = {
    **{key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")},
    "TZ": "IST-05:30",
}
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@dataclass
class Servers:
    registry: Registry
    tcp_port: int
    http_port: int
    portal: anyio.from_thread.BlockingPortal

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def servers(
    token: str | None = None, *, max_line_bytes: int = 65536, **limits: Any
) -> Iterator[Servers]:
    """A TCP server and its HTTP interface over one registry, in a background thread."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        registry = Registry(**limits)
        tcp = LogatronServer(port=0, registry=registry, max_line_bytes=max_line_bytes)
        http = HttpServer(registry, port=0, token=token)
        tcp_future, _ = portal.start_task(tcp.serve)
        http_future, _ = portal.start_task(http.serve)
        try:
            yield Servers(registry, tcp.port, http.port, portal)
        finally:
            http_future.cancel()
            tcp_future.cancel()


def local(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, ZONE)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**ENV, **env},
    )


@contextlib.contextmanager
def connected(port: int, name: str, data: bytes = b"") -> Iterator[socket.socket]:
    """A TCP client ``name`` that stays connected; ``data`` applied before it is yielded."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"IAM " + name.encode() + b"\n" + data + b"PING\n")
        got = b""
        while not got.endswith(b"PONG\n"):
            chunk = sock.recv(4096)
            assert chunk, f"closed early after {got!r}"
            got += chunk
        yield sock


@contextlib.contextmanager
def tail(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Lines, Lines]]:
    """``logatron tail ARGS`` running; its stdout and stderr line readers. Killed if left over."""
    with subprocess.Popen(
        [*COMMAND, "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**ENV, **env},
    ) as process:
        try:
            yield process, Lines(process.stdout), Lines(process.stderr)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    process.send_signal(signum)
    return process.wait(TIMEOUT)


# -- clients, state, recent ----------------------------------------------------------------------


def test_clients_human_and_json() -> None:
    with servers() as served:
        talk(served.tcp_port, b"IAM alice\nLOG gone now\nPING\n")
        with connected(served.tcp_port, "bob", b"SET mode a b\nSET build 42\nLOG 1\nLOG 2\n"):
            human = run("clients", "--url", served.url)
            as_json = run("clients", "--url", served.url, "--json", "--backend", "trio")
    assert human.returncode == as_json.returncode == 0, human.stderr + as_json.stderr
    assert human.stderr == as_json.stderr == ""
    records = {record["name"]: record for record in map(json.loads, as_json.stdout.splitlines())}
    assert set(records) == {"alice", "bob"}
    assert records["bob"]["state"] == {"mode": "a b", "build": "42"}
    assert records["bob"]["connected"] is True and records["alice"]["connected"] is False
    assert records["bob"]["lines_received"] == 2
    header, *rows = human.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "LINES", "CONNECTED", "AT", "STATE"]
    assert rows == [
        f"alice  retained       1  {local(records['alice']['connected_at'])}",
        f'bob    connected      2  {local(records["bob"]["connected_at"])}  mode="a b" build=42',
    ]
    # Aligned: every column starts where its header does.
    assert header.index("STATUS") == rows[0].index("retained") == rows[1].index("connected")
    assert header.index("STATE") == rows[1].index("mode=")


def test_state_human_and_json() -> None:
    with (
        servers() as served,
        connected(served.tcp_port, "bob", b"SET mode fast lane\nSET k \nSET build 42\n"),
    ):
        human = run("state", "bob", "--url", served.url)
        as_json = run("state", "bob", "--url", served.url, "--json")
    assert human.returncode == as_json.returncode == 0, human.stderr + as_json.stderr
    assert human.stdout.splitlines() == ["mode   fast lane", "k", "build  42"]
    assert json.loads(as_json.stdout) == {
        "client": "bob",
        "state": {"mode": "fast lane", "k": "", "build": "42"},
    }
    assert as_json.stdout.count("\n") == 1


def test_recent_human_json_and_options() -> None:
    with servers(max_line_bytes=32) as served:
        talk(served.tcp_port, b"IAM bob\nLOG one\nLOG esc \x1b[31mred\nPING\n")
        talk(served.tcp_port, b"IAM worker-1\nLOG " + b"x" * 40 + b"\nPING\n")
        talk(served.tcp_port, b"IAM bob\nLOG four\nPING\n")
        as_json = run("recent", "--url", served.url, "--json")
        human = run("recent", "--url", served.url)
        by_time = run("recent", "--url", served.url, "--sort", "time")
        bob = run("recent", "bob", "--url", served.url, "--since", "1", "--json")
        limited = run("recent", "--url", served.url, "--since", "1", "--limit", "2", "--json")
    for result in (as_json, human, by_time, bob, limited):
        assert result.returncode == 0 and result.stderr == "", result.stderr
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(e["client"], e["seq"], e["truncated"]) for e in entries] == [
        ("bob", 1, False),
        ("bob", 2, False),
        ("worker-1", 3, True),
        ("bob", 4, False),
    ]
    assert set(entries[0]) == {"client", "seq", "timestamp", "message", "truncated"}
    assert entries[1]["message"] == "esc \x1b[31mred"
    stamps = [local(entry["timestamp"]) for entry in entries]
    assert human.stdout.splitlines() == [
        f"{stamps[0]}  bob       #1  one",
        f"{stamps[1]}  bob       #2  esc \\x1b[31mred",  # no escape reaches the terminal
        f"{stamps[2]}  worker-1  #3  {'x' * 28} [truncated]",
        f"{stamps[3]}  bob       #4  four",
    ]
    assert by_time.stdout == human.stdout  # timestamps taken on receipt follow seq here
    assert [json.loads(line)["seq"] for line in bob.stdout.splitlines()] == [2, 4]
    assert [json.loads(line)["seq"] for line in limited.stdout.splitlines()] == [2, 3]


def test_recent_n_gives_the_newest_lines() -> None:
    with servers() as served:
        talk(served.tcp_port, b"IAM bob\nLOG b1\nLOG b2\nLOG b3\nPING\n")
        talk(served.tcp_port, b"IAM ann\nLOG a4\nPING\n")
        results = {
            args: run("recent", *args, "--url", served.url, "--json")
            for args in (
                ("-n", "2"),
                ("--lines", "2", "bob"),
                ("-n", "5", "--since", "2"),
                ("-n", "0"),
                ("--limit", "2"),  # the oldest, paging forward
            )
        }
    seqs = {}
    for args, result in results.items():
        assert (result.returncode, result.stderr) == (0, ""), args
        seqs[args] = [json.loads(line)["seq"] for line in result.stdout.splitlines()]
    assert seqs == {
        ("-n", "2"): [3, 4],
        ("--lines", "2", "bob"): [2, 3],
        ("-n", "5", "--since", "2"): [3, 4],
        ("-n", "0"): [],
        ("--limit", "2"): [1, 2],
    }


def test_output_never_fails_to_encode() -> None:
    with servers() as served:
        talk(served.tcp_port, "IAM bob\nLOG café ☕\nPING\n".encode())
        result = run("recent", "--url", served.url, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("  bob  #1  caf\\xe9 \\u2615\n")


# -- errors --------------------------------------------------------------------------------------


def test_token_required() -> None:
    with servers(token="s3cret") as served:
        talk(served.tcp_port, b"IAM bob\nLOG hi\nPING\n")
        missing = run("clients", "--url", served.url)
        wrong = run("recent", "--url", served.url, "--token", "nope")
        wrong_tail = run("tail", "--url", served.url, "--token", "nope")
        by_flag = run("recent", "--url", served.url, "--token", "s3cret")
        by_env = run("state", "bob", "--url", served.url, LOGATRON_TOKEN="s3cret")
    for result in (missing, wrong, wrong_tail):
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == "logatron: unauthorized: check --token or LOGATRON_TOKEN\n"
    assert by_flag.returncode == by_env.returncode == 0
    assert by_flag.stdout.endswith("  bob  #1  hi\n")


def test_unknown_client_exits_1() -> None:
    with servers() as served:
        results = [run(command, "bob", "--url", served.url) for command in ("state", "recent")]
    for result in results:
        assert result.returncode == 1
        assert (result.stdout, result.stderr) == ("", "logatron: no such client: bob\n")


def test_unreachable_server_exits_1_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        started = time.monotonic()
        results = [run(command, "--url", url) for command in ("clients", "recent", "tail")]
        results.append(run("state", "bob", LOGATRON_URL=url))
    assert time.monotonic() - started < TIMEOUT
    for result in results:
        assert result.returncode == 1
        assert (result.stdout, result.stderr) == (
            "",
            f"logatron: cannot reach {url}: connection refused\n",
        )


def test_bad_response_exits_1() -> None:
    """A server that answers HTTP with something that is not the API's JSON."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def answer() -> None:
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    body = b"<html>not json</html>"
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            result = run("clients", "--url", url)
        finally:
            thread.join(TIMEOUT)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"logatron: bad response from {url}: not JSON")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["state", "not a name"],
        ["state"],
        ["recent", "--limit", "0"],
        ["recent", "--since", "-1"],
        ["recent", "--sort", "name"],
        ["tail", "--since", "x"],
        ["clients", "--url", "ftp://example.com"],
        ["clients", "--backend", "curio"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "logatron" in capsys.readouterr().err


# -- tail ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_tail_prints_backlog_then_live_lines_and_stops_on_sigterm(backend: str) -> None:
    with servers() as served:
        talk(served.tcp_port, b"IAM bob\nLOG before\nPING\n")
        with tail("--url", served.url, "--backend", backend) as (process, out, err):
            assert re.fullmatch(rf"{TIME}  bob\s+#1  before", out.next())
            with connected(served.tcp_port, "carol", b"SET phase build\nLOG after\n"):
                assert re.fullmatch(rf"{TIME}  carol\s+\* connected", out.next())
                assert re.fullmatch(rf"{TIME}  carol\s+\* set phase=build", out.next())
                assert re.fullmatch(rf"{TIME}  carol\s+#2  after", out.next())
            assert re.fullmatch(rf"{TIME}  carol\s+\* disconnected", out.next())
            assert stop(process) == 0
            assert out.rest() == ""
            assert err.rest() == "-- live --\n"  # after the backlog


def test_tail_json_one_client_since_and_ctrl_c() -> None:
    with servers() as served, connected(served.tcp_port, "bob", b"LOG 1\nLOG 2\nLOG 3\n") as bob:
        talk(served.tcp_port, b"IAM other\nLOG not bob\nPING\n")
        with tail("bob", "--since", "1", "--json", "--url", served.url) as (process, out, _):
            backlog = [json.loads(out.next()) for _ in range(3)]
            assert [(m["type"], m.get("seq")) for m in backlog] == [
                ("log", 2),
                ("log", 3),
                ("current", None),
            ]
            assert backlog[0] == {
                "type": "log",
                "client": "bob",
                "seq": 2,
                "timestamp": backlog[0]["timestamp"],
                "message": "2",
                "truncated": False,
            }
            assert backlog[2] == {"type": "current", "last_seq": 4}
            bob.sendall(b"LOG live\nSET k v\n")
            assert json.loads(out.next())["message"] == "live"
            assert json.loads(out.next())["type"] == "set"
            assert stop(process, signal.SIGINT) == 0


def test_tail_starts_with_the_newest_10_lines_as_tail_f_does() -> None:
    with servers() as served:
        talk(
            served.tcp_port, b"IAM bob\n" + b"".join(b"LOG %d\n" % i for i in range(12)) + b"PING\n"
        )
        # The newest N of a buffer that grows by one line ("now") each round.
        for args, count in (((), 10), (("-n", "2"), 2), (("--since", "0"), None), (("-n", "0"), 0)):
            with tail(*args, "--json", "--url", served.url) as (process, out, _):
                messages = [json.loads(out.next())]
                while messages[-1]["type"] != "current":
                    messages.append(json.loads(out.next()))
                last = messages[-1]["last_seq"]
                first = 1 if count is None else last - count + 1
                assert [message["seq"] for message in messages[:-1]] == list(range(first, last + 1))
                talk(served.tcp_port, b"IAM live\nLOG now\nPING\n")
                while (message := json.loads(out.next()))["type"] != "log":
                    pass
                assert message["message"] == "now"
                assert stop(process) == 0


def test_tail_reports_evicted_lines_on_stderr() -> None:
    with servers(buffer_size=2) as served:
        talk(served.tcp_port, b"IAM bob\nLOG 1\nLOG 2\nLOG 3\nLOG 4\nLOG 5\nPING\n")
        with tail("--since", "0", "--url", served.url) as (process, out, err):
            assert err.next() == "-- 3 lines missed (evicted) --"
            assert out.next().endswith("  #4  4")
            assert out.next().endswith("  #5  5")
            assert stop(process) == 0
        with tail("--since", "0", "--json", "--url", served.url) as (process, out, _):
            assert json.loads(out.next()) == {"type": "gap", "missed": 3}
            assert stop(process) == 0


def test_tail_reconnects_after_the_server_restarts() -> None:
    with servers() as served, contextlib.ExitStack() as cleanup:
        talk(served.tcp_port, b"IAM bob\nLOG first\nPING\n")
        http = HttpServer(served.registry, port=0)
        first, _ = served.portal.start_task(http.serve)
        cleanup.callback(first.cancel)
        with tail("--json", "--url", f"http://127.0.0.1:{http.port}") as (process, out, err):
            assert json.loads(out.next())["message"] == "first"
            assert json.loads(out.next())["type"] == "current"
            first.cancel()  # the tail gets a 1001 close and reconnects, with backoff
            with contextlib.suppress(concurrent.futures.CancelledError):
                first.result(TIMEOUT)
            # Said at once, not only once the server is back.
            assert err.next() == "-- server unreachable, retrying every 2 s --"
            talk(served.tcp_port, b"IAM bob\nLOG while away\nPING\n")
            again = HttpServer(served.registry, port=http.port)
            second, _ = served.portal.start_task(again.serve)
            cleanup.callback(second.cancel)
            assert err.next() == "-- reconnected --"
            messages = [json.loads(out.next()) for _ in range(2)]
            assert [m["type"] for m in messages] == ["log", "current"]
            assert messages[0]["message"] == "while away"  # resumed after seq 1
            assert stop(process) == 0


def test_tail_of_a_client_not_connected_says_it_waits() -> None:
    with servers() as served:
        talk(served.tcp_port, b"IAM gone\nLOG was here\nPING\n")
        with tail("nobody", "--url", served.url) as (process, out, err):
            assert err.next() == "-- live --"
            assert err.next() == "-- waiting for nobody to connect --"
            with connected(served.tcp_port, "nobody", b"LOG at last\n"):
                assert re.fullmatch(rf"{TIME}  nobody\s+\* connected", out.next())
                assert re.fullmatch(rf"{TIME}  nobody\s+#2  at last", out.next())
            assert stop(process) == 0
        with tail("gone", "--json", "--url", served.url) as (process, out, err):
            assert json.loads(out.next())["message"] == "was here"
            assert json.loads(out.next())["type"] == "current"
            assert err.next() == "-- waiting for gone to connect --"  # stdout stays JSON
            assert stop(process) == 0


def test_a_non_ascii_token_works() -> None:
    token = "sécrèt-☕"
    with servers(token=token) as served:
        talk(served.tcp_port, b"IAM bob\nLOG hi\nPING\n")
        result = run("recent", "--url", served.url, "--token", token)
        with tail("--json", "--url", served.url, LOGATRON_TOKEN=token) as (process, out, _):
            assert json.loads(out.next())["message"] == "hi"
            assert stop(process) == 0
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("  bob  #1  hi\n")


def test_clients_fits_the_terminals_width() -> None:
    with servers() as served:
        state = b"".join(b"SET key%d %s\n" % (index, b"v" * 20) for index in range(5))
        with connected(served.tcp_port, "bob", state):
            narrow = run("clients", "--url", served.url, COLUMNS="70")
            wide = run("clients", "--url", served.url, COLUMNS="300")
            piped = run("clients", "--url", served.url)
    for result in (narrow, wide, piped):
        assert result.returncode == 0, result.stderr
    header, row = narrow.stdout.splitlines()
    assert len(row) == 70 and row.endswith("…")
    assert row[header.index("STATE") :].startswith("key0=vvvv")
    summary = " ".join(f"key{index}={'v' * 20}" for index in range(5))
    assert wide.stdout.splitlines()[1].endswith(summary)
    # Not a terminal: the summary is cut at a fixed length, as before.
    assert len(piped.stdout.splitlines()[1][header.index("STATE") :]) == 60


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stdout", [io.StringIO(), Terminal()])
def test_tail_printer_notices(stdout: io.StringIO) -> None:
    stderr = io.StringIO()
    printer = TailPrinter(Output(stdout, stderr), name="a-rather-long-name", connected=False)
    for event in (
        Gap(2),
        LogEntry("a-rather-long-name", 12345, 0.0, "\r\x07bell\u2028", truncated=True),
        Current(12345),
        Lagged(7),
        ClientReady("a-rather-long-name", 0.0),
        ClientClosed("a-rather-long-name", 0.0),
        Current(12345),  # after a reconnect
    ):
        printer.event(event)
    assert stderr.getvalue().splitlines() == [
        "-- 2 lines missed (evicted) --",
        "-- live --",
        "-- waiting for a-rather-long-name to connect --",
        "-- 7 lines missed (this tail fell behind) --",
        "-- live --",
        "-- waiting for a-rather-long-name to connect --",
    ]
    entry, connected, closed = stdout.getvalue().splitlines()  # the same on a terminal
    assert entry.endswith("  a-rather-long-name  #12345  \\x0d\\x07bell\\u2028 [truncated]")
    assert connected.endswith("  a-rather-long-name          * connected")
    assert closed.endswith("  a-rather-long-name          * disconnected")
