"""The ``logatron`` command on a network: ``serve`` with TLS, an auth file and client
certificates (a subprocess, on both backends), ``send`` and the consumer commands against it,
the warning for an exposed server, usage errors, and the auth file's format."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click.testing
import pytest

from logatron_anyio._auth import AuthFileError, parse_auth
from logatron_anyio.cli import logatron
from logatron_anyio.cli.network import is_loopback, warn_if_exposed
from logatron_core import Access
from pki import Pki
from test_cli import COMMAND, TIMEOUT, Lines

TCP_RE = re.compile(r"^logatron: listening for TLS clients on 127\.0\.0\.1:(\d+)$")
HTTPS_RE = re.compile(r"^logatron: HTTP and status page on https://127\.0\.0\.1:(\d+)/$")
ENV = {key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")}

AUTH_FILE = f"""
[[token]]   # a reader
secret = "r-secret"
read = true

[[token]]   # the workers' writer, kept as a digest
secret_sha256 = "{hashlib.sha256(b"w-secret").hexdigest()}"
write = ["worker-*"]
"""


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def serve_tls(tmp_path: Path, pki: Pki, *args: str) -> Iterator[Served]:
    """``logatron serve`` with TLS on both ports (and ``args``), its ports read from its
    startup lines; killed if left over."""
    log = tmp_path / "server.log"
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    command = [*COMMAND, "serve", "--port", "0", "--http-port", "0", *tls, *args]
    with (
        log.open("wb") as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=ENV) as process,
    ):
        try:
            lines = Lines(process.stdout)
            tcp, https = TCP_RE.match(lines.next()), HTTPS_RE.match(lines.next())
            assert tcp and https, log.read_text()
            yield Served(process, int(tcp[1]), int(https[1]), log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)


def logatron_run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    (result,) = logatron_runs((args, stdin))
    return result


def logatron_runs(*runs: tuple[tuple[str, ...], bytes]) -> list[subprocess.CompletedProcess[str]]:
    """``logatron ARGS`` with STDIN, for each (ARGS, STDIN), all at once; their results."""
    processes = [
        (
            subprocess.Popen(
                [*COMMAND, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=ENV,
            ),
            stdin,
        )
        for args, stdin in runs
    ]
    results = []
    for process, stdin in processes:
        with process:
            out, err = process.communicate(stdin, timeout=TIMEOUT)
        results.append(
            subprocess.CompletedProcess(
                process.args, process.returncode, out.decode(), err.decode()
            )
        )
    return results


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_with_tls_an_auth_file_and_client_certificates(
    tmp_path: Path, pki: Pki, backend: str
) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH_FILE)
    options = ("--auth-file", str(auth), "--tls-client-ca", str(pki.ca_file), "--backend", backend)
    with serve_tls(tmp_path, pki, *options) as served:
        port = ("--port", str(served.port), "--tls-ca", str(pki.ca_file))
        worker = ("--tls-cert", str(pki.client_pem("worker-1")))
        url = ("--url", served.url, "--tls-ca", str(pki.ca_file))
        own_certificate = ("--tls-cert", str(pki.client_pem("worker-1b")))
        sent, own, refused, no_certificate, forbidden, unauthorized, plain = logatron_runs(
            (("send", "worker-1", *port, *worker, "--token", "w-secret"), b"one\ntwo\n"),
            (("send", "worker-1b", *port, *own_certificate), b""),  # no token needed
            (("send", "db", *port, *worker, "--token", "w-secret"), b"x\n"),
            (("send", "worker-2", *port, "--token", "w-secret"), b""),
            (("clients", *url, "--token", "w-secret"), b""),
            (("clients", *url), b""),
            (("clients", "--url", served.url), b""),
        )
        assert sent.returncode == 0, sent.stderr
        assert own.returncode == 0, own.stderr
        assert refused.returncode == 1
        assert refused.stderr.startswith("logatron: the server refused 'db': unauthorized: ")
        assert no_certificate.returncode == 1 and no_certificate.stderr.count("\n") == 1
        assert forbidden.returncode == 1 and forbidden.stderr.startswith("logatron: forbidden:")
        assert unauthorized.stderr.startswith("logatron: unauthorized:")
        assert plain.returncode == 1 and "--tls-ca" in plain.stderr  # not the system's CAs
        recent = logatron_run("recent", *url, "--token", "r-secret", "--json")
        assert recent.returncode == 0, recent.stderr
        assert [json.loads(line)["message"] for line in recent.stdout.splitlines()] == [
            "one",
            "two",
        ]

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(TIMEOUT) == 0
    log = served.log.read_text()
    assert "ERR unauthorized" in log and "secret" not in log.replace("secret_sha256", "")
    assert re.search(r"WARNING 127\.0\.0\.1:\d+: ERR unauthorized", log)


def test_an_exposed_server_warns_in_one_line(pki: Pki) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then binding
    # fails, so nothing listens beyond the loopback.
    runner = click.testing.CliRunner()
    ports = ("--port", "0", "--http-port", "0")
    result = runner.invoke(logatron, ["serve", "--host", "192.0.2.1", *ports], env=ENV)
    assert result.exit_code == 1
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert "listening on 192.0.2.1 without TLS and without tokens: " in warnings[0]
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    safe = runner.invoke(
        logatron, ["serve", "--host", "192.0.2.1", *ports, *tls, "--token", "t"], env=ENV
    )
    assert safe.exit_code == 1 and " WARNING " not in safe.stderr


def test_what_the_warning_says(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="logatron.server"):
        for host in ("127.0.0.1", "::1", "localhost", "127.3.2.1"):
            warn_if_exposed(host, tls=False, tokens=False, client_certificates=False)
        assert caplog.records == []
        warn_if_exposed("10.0.0.1", tls=True, tokens=False, client_certificates=True)
        warn_if_exposed("logs.example.org", tls=False, tokens=True, client_certificates=False)
        warn_if_exposed("", tls=True, tokens=True, client_certificates=False)
    assert [record.getMessage() for record in caplog.records] == [
        "listening on 10.0.0.1 without tokens: anyone who can reach the ports can read every log",
        "listening on logs.example.org without TLS: logs and tokens cross the network in clear "
        "text",
    ]
    assert not is_loopback("0.0.0.0") and not is_loopback("::")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--tls-key", "KEY"], "--tls-key and --tls-client-ca go with --tls-cert"),
        (["serve", "--tls-client-ca", "KEY"], "--tls-key and --tls-client-ca go with --tls-cert"),
        (["serve", "--tls-cert", "/no/such/file"], "does not exist"),
        (["send", "bob", "--tls-key", "KEY"], "--tls-key goes with --tls-cert"),
        (["recent", "--tls-ca", "/no/such/file"], "does not exist"),
    ],
)
def test_tls_usage_errors_exit_2(pki: Pki, argv: list[str], message: str) -> None:
    argv = [str(pki.server_key) if arg == "KEY" else arg for arg in argv]
    result = click.testing.CliRunner().invoke(logatron, argv, env=ENV)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("contents", ["[[token]]\nsecret = ' a-b'\n", "not toml ["])
def test_an_unusable_auth_file_is_one_line_and_exit_1(tmp_path: Path, contents: str) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(contents)
    argv = ["serve", "--port", "0", "--no-http", "--auth-file", str(auth)]
    result = click.testing.CliRunner().invoke(logatron, argv, env=ENV)
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("logatron: ")]
    assert error == [error[0]] and "cannot use the TLS or auth files: " in error[0]
    assert "a-b" not in result.stderr


# -- the auth file -----------------------------------------------------------------------------


def test_the_auth_file_gives_each_token_its_scopes() -> None:
    authorizer = parse_auth(AUTH_FILE)
    assert authorizer.read_access("r-secret") is Access.ALLOWED
    assert authorizer.read_access("w-secret") is Access.FORBIDDEN
    assert authorizer.identify_refusal("worker-7", "w-secret", None) is None
    assert authorizer.identify_refusal("worker-7", "r-secret", None) is not None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no [[token]] table"),
        ("[[token]]\nread = true\n", "token 1: give either secret or secret_sha256"),
        ("[[token]]\nsecret = 'a'\nsecret_sha256 = 'b'\n", "either secret or secret_sha256"),
        ("[[token]]\nsecret = 'a'\nwrites = ['x']\n", "token 1: unknown key 'writes'"),
        ("[[token]]\nsecret = 'a'\nread = 'yes'\n", "read must be true or false"),
        ("[[token]]\nsecret = 'a'\nwrite = 'x-*'\n", "write must be a list of name patterns"),
        ("[[token]]\nsecret = 'a'\n[[token]]\nsecret_sha256 = 'zz'\n", "token 2: secret_sha256"),
        ("[[token]]\nsecret = 'has space '\n", "no space or tab at either end"),
        ("[[token]]\nsecret = 1\n", "secret must be a string"),
        ("[tokens]\n", "unknown table or key 'tokens'"),
        ("token = 1\n", "no [[token]] table"),
        ("x = [", "not valid TOML"),
    ],
)
def test_a_malformed_auth_file_says_where(text: str, error: str) -> None:
    with pytest.raises(AuthFileError, match=re.escape(error)) as raised:
        parse_auth(text, "auth.toml")
    assert str(raised.value).startswith("auth.toml: ")
    assert "has space" not in str(raised.value)
