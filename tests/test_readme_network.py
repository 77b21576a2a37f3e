"""README.md's "Running on a network" is true: its auth file parses to the scopes it states, its
``openssl`` and ``trustme`` recipes make certificates that work as it says (with the host names
changed to this machine's loopback), and its warning line is the server's."""

from __future__ import annotations

import logging
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from logatron_anyio._auth import parse_auth
from logatron_anyio.cli.network import warn_if_exposed
from logatron_core import Access, ErrorCode, ServerRefused
from logatron_sync import LogatronClient, LogatronServer
from logatron_sync._tls import client_context, server_context
from test_readme import README, marked_block

TIMEOUT = 20


def section() -> str:
    text = README.read_text()
    return text.split("## Running on a network\n", 1)[1].split("\n## ", 1)[0]


def test_the_auth_file_example_gives_the_scopes_it_states() -> None:
    toml = re.search(r"```toml\n(.*?)```", section(), re.S)
    assert toml is not None
    authorizer = parse_auth(toml[1])
    ci, dashboards, workers = "ci-example-secret", "a-plain-secret", "worker-example-secret"
    assert authorizer.identify_refusal("ci-main", ci, None) is None
    assert authorizer.read_access(ci) is Access.FORBIDDEN
    assert authorizer.read_access(dashboards) is Access.ALLOWED
    assert authorizer.identify_refusal("worker-1", dashboards, None) is not None
    assert authorizer.identify_refusal("worker-1", workers, None) is None
    assert authorizer.identify_refusal("batch-07", workers, None) is None
    assert authorizer.identify_refusal("batch-7", workers, None) is not None


def run_recipe(marker: str, directory: Path) -> None:
    """The README's shell block after ``marker``, run by bash in ``directory``, naming this
    machine's loopback where the README names a server."""
    script = marked_block(marker).replace("logs.example.org", "localhost")
    script = script.replace("10.0.0.5", "127.0.0.1")
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=directory, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """As Python 3.13's defaults check certificates (RFC 5280, strictly)."""
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def check_certificates(directory: Path, client_key: Path | None) -> None:
    """The server's certificate is trusted for localhost, and worker-1's certificate may be
    worker-1 but not worker-2."""
    server_key = directory / "server.key"
    context = server_context(
        directory / "server.pem",
        server_key if server_key.exists() else None,
        client_ca=directory / "ca.pem",
    )
    with LogatronServer("127.0.0.1", 0, ssl_context=strict(context)) as server:
        worker = strict(
            client_context(directory / "ca.pem", cert=directory / "worker-1.pem", key=client_key)
        )

        def client(name: str) -> LogatronClient:
            return LogatronClient(
                name,
                port=server.port,
                timeout=TIMEOUT,
                ssl_context=worker,
                server_hostname="localhost",
            )

        with client("worker-1") as accepted:
            accepted.ping()
        with pytest.raises(ServerRefused) as refused:
            client("worker-2")
        assert refused.value.code is ErrorCode.UNAUTHORIZED


def test_the_openssl_recipe_makes_working_certificates(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:  # a failure, never a skip: scripts/test installs it
        pytest.fail("these tests need the openssl command: apt-get install openssl")
    run_recipe("openssl-certificates", tmp_path)
    check_certificates(tmp_path, tmp_path / "worker-1.key")


def test_the_trustme_recipe_makes_working_certificates(tmp_path: Path) -> None:
    run_recipe("trustme-certificates", tmp_path)
    check_certificates(tmp_path, None)


def test_the_warning_shown_is_the_servers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="logatron.server"):
        warn_if_exposed("0.0.0.0", tls=False, tokens=False, client_certificates=False)
    (record,) = caplog.records
    assert f"    logatron WARNING {record.getMessage()}\n" in section()
