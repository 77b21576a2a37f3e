"""The ``logatron`` command: ``serve`` (TCP and HTTP) as a real subprocess on both backends,
``send`` against a server run in this process, flags, environment variables and errors.

The consumer commands (clients, state, recent, tail) are in test_cli_consumer.py."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio.from_thread
import click.testing
import pytest

from logatron_anyio import LogatronServer
from logatron_anyio.cli import logatron, main
from logatron_anyio.cli import serve as cli_serve
from logatron_anyio.cli.serve import ServeConfig, build_servers
from logatron_core import Registry

TIMEOUT = 10.0
STARTUP_RE = re.compile(r"^logatron: listening for clients on (.+):(\d+)$")
HTTP_RE = re.compile(r"^logatron: HTTP and status page on http://(.+):(\d+)/$")
COMMAND = [sys.executable, "-m", "logatron_anyio"]


class Lines:
    """The lines of a subprocess's pipe, each waited for at most ``timeout`` seconds."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self.fd = pipe.fileno()
        self.buffer = b""

    def next(self, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], remaining)
            assert ready, f"no line within {timeout} s; so far {self.buffer!r}"
            chunk = os.read(self.fd, 65536)
            assert chunk, f"the output ended; so far {self.buffer!r}"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def rest(self) -> str:
        """Everything until the pipe ends (call once the process has exited)."""
        data = self.buffer
        while chunk := os.read(self.fd, 65536):
            data += chunk
        self.buffer = b""
        return data.decode()


class Served:
    def __init__(
        self, process: subprocess.Popen[bytes], port: int, http_port: int | None, log: Path
    ) -> None:
        self.process = process
        self.port = port
        self.http_port = http_port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(TIMEOUT)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``logatron serve ARGS`` in a subprocess; its startup lines parsed (the second, the HTTP
    one, unless ``--no-http``); killed if left over. Pass ``--http-port 0`` or ``--no-http``:
    the default port may be taken."""
    log = tmp_path / "server.log"
    with (
        log.open("wb") as stderr,
        subprocess.Popen(
            [*COMMAND, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        ) as process,
    ):
        try:
            lines = Lines(process.stdout)
            line = lines.next()
            match = STARTUP_RE.match(line)
            assert match, f"unexpected startup line {line!r}; log: {log.read_text()}"
            http_port = None
            if "--no-http" not in args:
                line = lines.next()
                http_match = HTTP_RE.match(line)
                assert http_match, f"unexpected second line {line!r}; log: {log.read_text()}"
                assert http_match[1] == match[1]
                http_port = int(http_match[2])
            yield Served(process, int(match[2]), http_port, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)


def talk(port: int, data: bytes, until: bytes = b"PONG\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        got = b""
        while not got.endswith(until):
            chunk = sock.recv(4096)
            assert chunk, f"closed early after {got!r}"
            got += chunk
        return got


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_then_sigterm_exits_0(tmp_path: Path, backend: str) -> None:
    args = ("--port", "0", "--http-port", "0", "--backend", backend, "--log-format", "json")
    with serve(tmp_path, *args) as served:
        assert talk(served.port, b"IAM bob\nLOG hello\nPING\n") == b"PONG\n"
        assert served.stop() == 0
    events = [str(record.get("event")) for record in served.records()]
    assert events[:3] == ["starting", "listening", "client-ready"], served.log.read_text()
    # The client's close may be seen before or after the signal.
    assert sorted(events[3:]) == ["client-closed", "stopping"], served.log.read_text()
    starting, _, ready, *_ = served.records()
    assert starting["backend"] == backend
    assert ready["client"] == "bob"


def test_serve_ctrl_c_exits_0_and_closes_clients(tmp_path: Path) -> None:
    with (
        serve(tmp_path, "--port", "0", "--no-http", "--log-format", "json") as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(b"IAM stays\nPING\n")
        assert sock.recv(100) == b"PONG\n"
        assert served.stop(signal.SIGINT) == 0
        assert sock.recv(100) == b""  # closed by the server on its way out
    assert [record["event"] for record in served.records()][-2:] == ["stopping", "client-closed"]


def test_environment_variables_and_flags(tmp_path: Path) -> None:
    env = {
        "LOGATRON_PORT": "1",  # the flag below wins
        "LOGATRON_BACKEND": "trio",
        "LOGATRON_LOG_FORMAT": "json",
        "LOGATRON_MAX_LINE_BYTES": "16",
        "LOGATRON_MAX_STATE_KEYS": "1",
        "LOGATRON_TOKEN": "secret",  # never logged
    }
    with serve(tmp_path, "--port", "0", "--no-http", env=env) as served:
        data = b"IAM bob secret\nLOG 0123456789abcdef\nSET a 1\nSET b 2\nPING\n"
        got = talk(served.port, data)  # the token guards TCP too
        assert served.stop() == 0
    assert got.startswith(b"ERR line-too-long ")
    assert b"ERR too-many-keys " in got
    starting = served.records()[0]
    assert starting["backend"] == "trio"
    assert starting["max_line_bytes"] == 16
    assert "secret" not in served.log.read_text()


def test_text_log_format(tmp_path: Path) -> None:
    with serve(tmp_path, "--port", "0", "--http-port", "0") as served:
        talk(served.port, b"IAM bob\nFOO\nPING\n")
        assert served.stop() == 0
    text = served.log.read_text()
    assert "client bob connected" in text
    assert "ERR unknown-command" in text


def test_the_startup_lines_come_first(tmp_path: Path) -> None:
    """As text, the server's log says nothing the startup lines on stdout say already: the
    startup lines are the first thing a person sees."""
    with serve(tmp_path, "--port", "0", "--http-port", "0") as served:
        assert served.log.read_text() == ""  # read once both startup lines were printed
        assert served.stop() == 0
    (line,) = served.log.read_text().splitlines()
    assert line.endswith(" logatron INFO stopping on SIGTERM")


def test_the_http_line_is_a_url_a_browser_can_open() -> None:
    assert cli_serve.http_url(("127.0.0.1", 2213)) == "http://127.0.0.1:2213/"
    assert cli_serve.http_url(("0.0.0.0", 2213)) == "http://127.0.0.1:2213/"
    assert cli_serve.http_url(("::", 80)) == "http://[::1]:80/"
    assert cli_serve.http_url(("::1", 80)) == "http://[::1]:80/"
    assert cli_serve.http_url(("example.com", 1)) == "http://example.com:1/"


def without_trio(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``logatron ARGS`` in a subprocess where trio cannot be imported (a wheel without it)."""
    program = "import sys; sys.modules['trio'] = None; from logatron_anyio.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "where"),
    [
        (["serve", "--backend", "trio", "--port", "0", "--no-http"], {}, "'--backend'"),
        (["clients", "--backend", "trio"], {}, "'--backend'"),
        (["serve"], {"LOGATRON_BACKEND": "trio"}, "environment variable LOGATRON_BACKEND"),
    ],
)
def test_trio_missing_is_a_usage_error_that_says_what_to_install(
    args: list[str], env: dict[str, str], where: str
) -> None:
    result = without_trio(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for {where}: trio is not installed: pip install 'logatron[trio]'"
    )
    assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*COMMAND, "serve", "--port", str(port), "--no-http"],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"logatron: cannot listen on 127.0.0.1:{port}: address already in use\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "x"],
        ["serve", "--port", "70000"],
        ["serve", "--backend", "curio"],
        ["serve", "--buffer-size", "0"],
        ["send", "not a name"],
        ["send", "bob", "--set", "novalue"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "logatron" in capsys.readouterr().err


def test_bad_environment_value_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOGATRON_PORT", "abc")
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert exited.value.code == 2
    assert "LOGATRON_PORT" in capsys.readouterr().err


def test_serve_help_lists_flags_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--http-port", "--no-http", "--token"):
        assert flag in text
    assert "not yet implemented" not in text
    for variable in (
        "LOGATRON_HOST",
        "LOGATRON_PORT",
        "LOGATRON_HTTP_PORT",
        "LOGATRON_NO_HTTP",
        "LOGATRON_BACKEND",
        "LOGATRON_TOKEN",
    ):
        assert variable in text


# -- parsing, with click's CliRunner -------------------------------------------------------------

SERVE_VARIABLES = {
    "--host": "LOGATRON_HOST",
    "--port": "LOGATRON_PORT",
    "--buffer-size": "LOGATRON_BUFFER_SIZE",
    "--max-line-bytes": "LOGATRON_MAX_LINE_BYTES",
    "--max-clients": "LOGATRON_MAX_CLIENTS",
    "--max-state-keys": "LOGATRON_MAX_STATE_KEYS",
    "--retention-seconds": "LOGATRON_RETENTION_SECONDS",
    "--max-retained": "LOGATRON_MAX_RETAINED",
    "--backend": "LOGATRON_BACKEND",
    "--log-format": "LOGATRON_LOG_FORMAT",
    "--http-port": "LOGATRON_HTTP_PORT",
    "--no-http": "LOGATRON_NO_HTTP",
    "--data-dir": "LOGATRON_DATA_DIR",
    "--flush-interval": "LOGATRON_FLUSH_INTERVAL",
    "--fsync": "LOGATRON_FSYNC",
    "--tls-cert": "LOGATRON_TLS_CERT",
    "--tls-key": "LOGATRON_TLS_KEY",
    "--tls-client-ca": "LOGATRON_TLS_CLIENT_CA",
    "--auth-file": "LOGATRON_AUTH_FILE",
    "--store": "LOGATRON_STORE",
    "--lease-seconds": "LOGATRON_LEASE_SECONDS",
    "--token": "LOGATRON_TOKEN",
}
TLS_CLIENT_VARIABLES = {
    "--tls": "LOGATRON_TLS",
    "--tls-ca": "LOGATRON_TLS_CA",
    "--tls-cert": "LOGATRON_TLS_CLIENT_CERT",
    "--tls-key": "LOGATRON_TLS_CLIENT_KEY",
}
CONSUMER_VARIABLES = {
    "--url": "LOGATRON_URL",
    "--token": "LOGATRON_TOKEN",
    "--backend": "LOGATRON_BACKEND",
    **TLS_CLIENT_VARIABLES,
}
SEND_VARIABLES = {
    "--host": "LOGATRON_HOST",
    "--port": "LOGATRON_PORT",
    "--token": "LOGATRON_TOKEN",
    **TLS_CLIENT_VARIABLES,
}


def invoke(*args: str, **env: str) -> click.testing.Result:
    """``logatron ARGS`` in this process, with only the ``LOGATRON_*`` variables given."""
    unset: dict[str, str | None] = {key: None for key in os.environ if key.startswith("LOGATRON_")}
    return click.testing.CliRunner().invoke(logatron, args, env={**unset, **env})


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        ("serve", SERVE_VARIABLES),
        ("send", SEND_VARIABLES),
        *((command, CONSUMER_VARIABLES) for command in ("clients", "state", "recent", "tail")),
    ],
)
def test_help_shows_each_flags_variable(command: str, variables: dict[str, str]) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    text = one_line(result.output.partition("\nOptions:\n")[2])
    shown = dict(re.findall(r"(--[a-z-]+) [^-].*?\[env var: (\w+)", text))
    assert shown == variables


def test_help_shows_choices_defaults_and_ranges() -> None:
    serve = one_line(invoke("serve", "--help").output)
    for part in (
        "--backend [asyncio|trio]",
        "--log-format [text|json]",
        "LOGATRON_PORT; default: 2212; 0<=x<=65535]",
        "LOGATRON_HTTP_PORT; default: 2213; 0<=x<=65535]",
        "LOGATRON_HOST; default: 127.0.0.1]",
        "LOGATRON_BUFFER_SIZE; default: 128; x>=1]",
        "LOGATRON_RETENTION_SECONDS; default: 3600.0; x>=0]",
        "LOGATRON_BACKEND; default: asyncio]",
        "LOGATRON_LOG_FORMAT; default: text]",
    ):
        assert part in serve
    recent = one_line(invoke("recent", "--help").output)
    assert "--sort [seq|time]" in recent and "[default: seq]" in recent
    assert "default: http://127.0.0.1:2213" in recent


def test_version_and_bare_logatron(capsys: pytest.CaptureFixture[str]) -> None:
    version = invoke("--version")
    assert (version.exit_code, version.output) == (
        0,
        f"logatron, version {importlib.metadata.version('logatron')}\n",
    )
    bare = invoke()
    assert bare.exit_code == 0
    assert bare.output == invoke("--help").output
    assert re.search(r"^Commands:\n +serve +run the server\n +send ", bare.output, re.M)
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: logatron [OPTIONS]")


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["serve", "--port", "x"], {}, "Invalid value for '--port': 'x' is not a valid integer."),
        (["serve", "--port", "70000"], {}, "'--port': 70000 is not in the range 0<=x<=65535."),
        (["serve", "--buffer-size", "0"], {}, "'--buffer-size': 0 is not in the range x>=1."),
        (["serve", "--retention-seconds", "soon"], {}, "'soon' is not a valid number."),
        (["serve", "--max-retained", "-1"], {}, "-1 is not in the range x>=0."),
        (["serve", "--backend", "curio"], {}, "'curio' is not one of 'asyncio', 'trio'."),
        (["serve", "--log-format", "xml"], {}, "'xml' is not one of 'text', 'json'."),
        (["serve", "--bogus"], {}, "No such option"),
        (
            ["serve"],
            {"LOGATRON_MAX_CLIENTS": "many"},
            "Invalid value for environment variable LOGATRON_MAX_CLIENTS: "
            "'many' is not a valid integer.",
        ),
        (
            ["serve"],
            {"LOGATRON_NO_HTTP": "maybe"},
            "environment variable LOGATRON_NO_HTTP: 'maybe' is not a valid boolean.",
        ),
        (["send", "not a name"], {}, "Invalid value for 'NAME': 'not a name' is not a client"),
        (["send", "bob", "--set", "=v"], {}, "'--set': expected KEY=VALUE with a valid key"),
        (["send", "bob"], {"LOGATRON_PORT": "-1"}, "LOGATRON_PORT: -1 is not in the range"),
        (["state"], {}, "Missing argument 'NAME'."),
        (["recent", "--limit", "0"], {}, "'--limit': 0 is not in the range x>=1."),
        (["recent", "-n", "-1"], {}, "'-n' / '--lines': -1 is not in the range x>=0."),
        (["recent", "-n", "2", "--limit", "2"], {}, "-n takes the newest lines, --limit the"),
        (["tail", "-n", "x"], {}, "'-n' / '--lines': 'x' is not a valid integer."),
        (["tail", "--since", "x"], {}, "'--since': 'x' is not a valid integer."),
        (["clients"], {"LOGATRON_BACKEND": "curio"}, "LOGATRON_BACKEND: 'curio' is not one of"),
        (["clients", "--url", "ftp://x"], {}, "'--url': expected a URL like http://host:port"),
        (
            ["clients"],
            {"LOGATRON_URL": "foo"},
            "Invalid value for environment variable LOGATRON_URL: expected a URL like",
        ),
        (["serve", "--token", ""], {}, "'--token': a token cannot be empty"),
        (["clients", "--token", "abc "], {}, "'--token': a token cannot start or end with"),
        (["tail", "--token", " abc"], {}, "'--token': a token cannot start or end with"),
        (["serve", "--token", "a\tb"], {}, "'--token': a token cannot hold control characters"),
        (["serve"], {"LOGATRON_TOKEN": "x\n"}, "LOGATRON_TOKEN: a token cannot start or end"),
    ],
)
def test_usage_errors_are_worded_in_the_commands_usage(
    args: list[str], env: dict[str, str], error: str
) -> None:
    result = invoke(*args, **env)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"Usage: logatron {args[0]} [OPTIONS]")
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: ") and error in last, result.stderr
    for python in ("Traceback", "invalid literal", "must be at least", "Error(", "ValueError"):
        assert python not in result.stderr


def capture_serve(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    """The configs ``logatron serve`` is run with from now on, instead of running them."""
    configs: list[ServeConfig] = []

    def run(config: ServeConfig) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(cli_serve, "run", run)
    return configs


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("yes", True), ("on", True), ("0", False), ("off", False)],
)
def test_boolean_variables(text: str, value: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = capture_serve(monkeypatch)
    assert invoke("serve", LOGATRON_NO_HTTP=text).exit_code == 0
    assert configs == [ServeConfig(no_http=value)]


def test_serve_defaults_and_the_flag_beats_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = capture_serve(monkeypatch)
    assert invoke("serve").exit_code == 0
    env = {
        "LOGATRON_PORT": "abc",  # never read: the flag is given
        "LOGATRON_HOST": "::1",
        "LOGATRON_BACKEND": "asyncio",
        "LOGATRON_NO_HTTP": "false",
        "LOGATRON_RETENTION_SECONDS": "0.5",
        "LOGATRON_TOKEN": "from-env",
    }
    flags = ["--port", "0", "--backend", "trio", "--no-http", "--token", "from-flag"]
    result = invoke("serve", *flags, **env)
    assert result.exit_code == 0, result.output
    assert configs == [
        ServeConfig(),
        ServeConfig(
            host="::1",
            port=0,
            retention_seconds=0.5,
            backend="trio",
            no_http=True,
            token="from-flag",
        ),
    ]
    assert "from-flag" not in repr(configs[1])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_consumer_flag_beats_the_variable(backend: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        env = {"LOGATRON_URL": "ftp://never.read", "LOGATRON_BACKEND": "curio"}
        result = invoke("clients", "--url", url, "--backend", backend, **env)
    assert result.exit_code == 1
    assert result.stderr == f"logatron: cannot reach {url}: connection refused\n"


def test_serve_config_builds_the_servers() -> None:
    servers = build_servers(ServeConfig(port=0, http_port=0, buffer_size=3, max_line_bytes=9))
    tcp, http = servers.tcp, servers.http
    assert (tcp.port, tcp.max_line_bytes, tcp.registry.buffer_size) == (0, 9, 3)
    assert http is not None and http.registry is tcp.registry and http.port == 0
    assert servers.durable is None and tcp.store_driver is None
    assert build_servers(ServeConfig(no_http=True)).http is None


def test_entry_points() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["logatron"].partition(":")
    assert getattr(importlib.import_module(module), name) is main
    result = subprocess.run(
        [*COMMAND, "serve", "--port", "x"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: logatron serve [OPTIONS]\n")


# -- serve: the HTTP interface -------------------------------------------------------------------


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    """One GET over a raw socket: (status, body)."""
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_serve_http_with_token_and_a_tail_open_at_sigterm(tmp_path: Path) -> None:
    args = ("--port", "0", "--http-port", "0", "--log-format", "json")
    with (
        serve(tmp_path, *args, env={"LOGATRON_TOKEN": "s3cret"}) as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as client,
    ):
        assert served.http_port is not None
        client.sendall(b"IAM bob s3cret\nLOG hello\nPING\n")  # --token guards TCP too
        assert client.recv(100) == b"PONG\n"
        assert http_get(served.http_port, "/healthz") == (200, b'{"status":"ok"}')
        assert http_get(served.http_port, "/api/clients")[0] == 401
        assert http_get(served.http_port, "/api/clients", "wrong")[0] == 401
        status, body = http_get(served.http_port, "/api/clients/bob/log", "s3cret")
        assert status == 200
        assert [entry["message"] for entry in json.loads(body)["entries"]] == ["hello"]
        status, body = http_get(served.http_port, "/metrics", "s3cret")
        assert status == 200 and b"logatron_connections 1\n" in body
        # A consumer command end to end, and a tail open while the server stops.
        tail_env = {**os.environ, "LOGATRON_TOKEN": "s3cret"}
        with subprocess.Popen(
            [*COMMAND, "tail", "--json", "--url", served.url],
            stdout=subprocess.PIPE,
            env=tail_env,
        ) as tail:
            try:
                lines = Lines(tail.stdout)
                assert json.loads(lines.next())["message"] == "hello"
                assert json.loads(lines.next())["type"] == "current"
                assert served.stop() == 0
            finally:
                tail.send_signal(signal.SIGTERM)
                assert tail.wait(TIMEOUT) == 0
    assert "s3cret" not in served.log.read_text()


def test_no_http_does_not_listen(tmp_path: Path) -> None:
    # A socket bound (not listening) on the port: serve could not bind it, and connecting to
    # it is refused, so the server starting and the refusal both show it never tried.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with serve(tmp_path, "--port", "0", "--http-port", str(port), "--no-http") as served:
            assert talk(served.port, b"IAM bob\nPING\n") == b"PONG\n"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
            assert served.stop() == 0
            assert Lines(served.process.stdout).rest() == ""


def test_serve_on_a_busy_http_port_exits_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*COMMAND, "serve", "--port", "0", "--http-port", str(port)],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"logatron: cannot listen for HTTP on 127.0.0.1:{port}: address already in use\n"
    )


# -- send ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def server_in_thread(
    max_line_bytes: int = 65536,
) -> Iterator[tuple[LogatronServer, anyio.from_thread.BlockingPortal]]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        registry = Registry(max_state_keys=4)
        server = LogatronServer(port=0, registry=registry, max_line_bytes=max_line_bytes)
        future, _ = portal.start_task(server.serve)
        try:
            yield server, portal
        finally:
            future.cancel()


def send(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*COMMAND, "send", *args, "--port", str(port)],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
    )


def test_send_delivers_state_then_stdin_lines() -> None:
    with server_in_thread() as (server, portal):
        result = send(
            server.port,
            "bob",
            "--set",
            "k=v",
            "--set",
            "mode=a b=c",
            stdin=b"one\ntwo\r\n\xffthree\nlast without newline",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == result.stderr == b""
        info = portal.call(server.registry.client, "bob")
    assert [entry.message for entry in info.log] == [
        "one",
        "two",
        "\ufffdthree",
        "last without newline",
    ]
    assert info.state == {"k": "v", "mode": "a b=c"}


def test_send_many_lines_loses_none() -> None:
    lines = 5000
    with server_in_thread() as (server, portal):
        stdin = b"".join(b"line %d\n" % index for index in range(lines))
        result = send(server.port, "many", stdin=stdin)
        assert result.returncode == 0, result.stderr
        info = portal.call(server.registry.client, "many")
    assert info.lines_received == lines
    assert info.log[-1].message == f"line {lines - 1}"


def test_send_with_a_taken_name_exits_1() -> None:
    with (
        server_in_thread() as (server, _),
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as holder,
    ):
        holder.sendall(b"IAM bob\nPING\n")
        assert holder.recv(100) == b"PONG\n"
        result = send(server.port, "bob", stdin=b"hello\n")
    assert result.returncode == 1
    error = result.stderr.decode()
    assert error.count("\n") == 1 and "name-taken" in error


def test_send_to_an_unreachable_server_exits_1() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        started = time.monotonic()
        result = send(port, "bob", stdin=b"hello\n")
    assert result.returncode == 1
    # In the consumer commands' words, not anyio's "All connection attempts failed".
    assert (
        result.stderr.decode() == f"logatron: cannot send to 127.0.0.1:{port}: connection refused\n"
    )
    assert time.monotonic() - started < TIMEOUT


def test_send_to_the_http_port_says_so_at_once(tmp_path: Path) -> None:
    with serve(tmp_path, "--port", "0", "--http-port", "0") as served:
        assert served.http_port is not None
        started = time.monotonic()
        result = send(served.http_port, "bob", stdin=b"hello\n")
        took = time.monotonic() - started
        assert served.stop() == 0
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"logatron: cannot send to 127.0.0.1:{served.http_port}: unexpected reply from the"
        " server: 'HTTP/1.1 400 Bad Request' (an HTTP port: clients send to the TCP port, 2212"
        " by default)\n"
    )
    assert took < TIMEOUT / 2  # not after the connect timeout: the answer came at once


def test_send_exits_2_and_prints_what_the_server_refused() -> None:
    with server_in_thread(max_line_bytes=100) as (server, portal):
        keys = [f"--set=k{index}=v" for index in range(5)]  # the server keeps 4
        result = send(server.port, "bob", *keys, stdin=b"short\n" + b"x" * 150 + b"\nlast\n")
        info = portal.call(server.registry.client, "bob")
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "logatron: ERR too-many-keys bob holds its limit of 4 keys",
        "logatron: ERR line-too-long line longer than 100 bytes, kept cut to the limit",
    ]
    # What the server took is stored all the same.
    assert [(entry.message, entry.truncated) for entry in info.log] == [
        ("short", False),
        ("x" * 96, True),  # the line, "LOG " included, is cut at 100 bytes
        ("last", False),
    ]
    assert info.state == {f"k{index}": "v" for index in range(4)}


def test_ctrl_c_stops_an_interactive_send_at_once() -> None:
    """Ctrl-C while send waits for stdin: no traceback, exit 130, and stdin is left alone (no
    thread still blocked reading it, that would take the next line typed)."""
    with server_in_thread() as (server, portal):
        with subprocess.Popen(
            [*COMMAND, "send", "bob", "--port", str(server.port)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdin is not None
            process.stdin.write(b"typed\n")
            process.stdin.flush()

            def arrived() -> bool:
                names = portal.call(server.registry.names)
                return "bob" in names and len(portal.call(server.registry.log, "bob")) == 1

            deadline = time.monotonic() + TIMEOUT
            while not arrived():
                assert time.monotonic() < deadline, "the typed line never arrived"
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            assert process.wait(TIMEOUT) == 128 + signal.SIGINT  # stdin still open
            assert process.stderr is not None
            assert process.stderr.read() == b""
