"""``--store rediss://``: front ends on a Redis that speaks TLS only (trustme's certificates).

The server's certificate is checked against the CAs the URL names (``ssl_ca_certs``) or the
system's, and so is its host name, unless the URL turns that off (``ssl_check_hostname=false``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trustme

from logatron_anyio._redis_client import tls_context
from logatron_anyio._redis_codec import StoreUrlError
from pki import Pki
from redis_server import RedisServer
from served import served
from test_redis import talk

TIMEOUT = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_redis(
    directory: Path, cert: Path, key: Path, ca: Path, *, client_cert: Path | None = None
) -> Iterator[RedisServer]:
    server = RedisServer(directory, tls=(cert, key, ca), client_cert=client_cert)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RedisServer]:
    """A TLS Redis whose certificate names localhost, 127.0.0.1 and ::1."""
    yield from tls_redis(tmp_path_factory.mktemp("redis"), pki.server_cert, pki.server_key,
                         pki.ca_file)  # fmt: skip


@pytest.fixture
def elsewhere(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    """A TLS Redis whose certificate names another host than the one the tests dial."""
    issued = pki.ca.issue_cert("redis.example")
    cert, key = tmp_path / "elsewhere.pem", tmp_path / "elsewhere.key"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(cert, append=True)
    issued.private_key_pem.write_to_path(key)
    yield from tls_redis(tmp_path, cert, key, pki.ca_file)


def rediss(server: RedisServer, **options: object) -> str:
    query = f"?{urlencode(options)}" if options else ""
    return f"rediss://127.0.0.1:{server.port}/0{query}"


def refused(url: str) -> str:
    """``logatron serve --store url``, which must exit 1: the last line it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "logatron_anyio", "serve", "--port", "0", "--store", url],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # nothing listened
    return result.stderr.splitlines()[-1]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_front_end_keeps_its_store_in_a_redis_that_speaks_tls(
    redis: RedisServer, pki: Pki, backend: str
) -> None:
    assert redis.command("FLUSHALL") == b"+OK\r\n"
    url = rediss(redis, ssl_ca_certs=pki.ca_file)
    with served("--store", url, "--backend", backend) as server:
        assert talk(server.port, b"IAM x\nLOG over tls\nPING\n") == b"PONG\n"
        assert [entry["message"] for entry in server.get("/api/clients/x")["log"]] == ["over tls"]
    assert redis.command("HGET", "logatron:client:x", "r") == b"$1\r\n1\r\n"  # 1 line received


def test_a_redis_whose_certificate_no_trusted_ca_signed_is_refused(redis: RedisServer) -> None:
    line = refused(rediss(redis))  # the system's CAs only
    assert line.startswith(f"logatron: cannot use the store at {rediss(redis)}: ")
    assert "certificate verify failed" in line


def test_a_redis_whose_certificate_names_another_host_is_refused_unless_told(
    elsewhere: RedisServer, pki: Pki
) -> None:
    line = refused(rediss(elsewhere, ssl_ca_certs=pki.ca_file))
    assert "certificate verify failed" in line and "127.0.0.1" in line
    url = rediss(elsewhere, ssl_ca_certs=pki.ca_file, ssl_check_hostname="false")
    with served("--store", url) as server:
        assert talk(server.port, b"IAM x\nPING\n") == b"PONG\n"


@pytest.fixture
def asking(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    """A TLS Redis that takes only clients with a certificate its CA signed."""
    yield from tls_redis(tmp_path, pki.server_cert, pki.server_key, pki.ca_file,
                         client_cert=pki.client_pem("tests"))  # fmt: skip


def test_a_front_end_presents_the_client_certificate_its_url_names(
    asking: RedisServer, pki: Pki
) -> None:
    assert "cannot use the store at" in refused(rediss(asking, ssl_ca_certs=pki.ca_file))
    pem = pki.client_pem("front-end")  # its key and certificate in one file
    with served("--store", rediss(asking, ssl_ca_certs=pki.ca_file, ssl_certfile=pem)) as server:
        assert talk(server.port, b"IAM x\nPING\n") == b"PONG\n"


def test_a_tls_file_whose_path_holds_a_plus_is_the_file_the_url_names(tmp_path: Path) -> None:
    """A '+' in a query is a space only in HTML forms: ``ssl_ca_certs=/certs/ca+1.pem`` names
    that file (a space is written %20)."""
    ca = trustme.CA()
    path = tmp_path / "ca+1.pem"
    ca.cert_pem.write_to_path(str(path))
    assert tls_context(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={path}") is not None
    spaced = tmp_path / "ca 2.pem"
    ca.cert_pem.write_to_path(str(spaced))
    encoded = str(spaced).replace(" ", "%20")
    assert tls_context(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={encoded}") is not None


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("ssl_keyfile=/no/such/key.pem", "ssl_keyfile goes with ssl_certfile"),
        ("ssl_cert_reqs=none&ssl_check_hostname=true", "ssl_check_hostname=true checks nothing"),
    ],
)
def test_tls_options_that_would_be_ignored_are_refused(query: str, said: str) -> None:
    with pytest.raises(StoreUrlError, match=said):
        tls_context(f"rediss://127.0.0.1:6379/0?{query}")
