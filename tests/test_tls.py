"""TLS, tokens and client certificates on the TCP port, one table run against every server
(anyio on asyncio, anyio on trio, the sync server), then every client that speaks it: the
sync client, the async client (both backends) and the logging handler (also from dictConfig).

Certificates come from ``trustme`` (tests/pki.py); waits are on conditions, each bounded.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from logatron_anyio import connect
from logatron_core import Authorizer, ErrorCode, ServerRefused, TokenGrant
from logatron_sync import LogatronClient, LogatronHandler
from logatron_sync import LogatronServer as SyncServer
from pki import Pki
from test_cli import Lines
from test_scenarios import TIMEOUT, Peer, Running, Servers, messages

WRITER = TokenGrant.from_secret("w-secret", write=("worker-*",))
READER = TokenGrant.from_secret("r-secret", read=True)
POLICY = Authorizer([WRITER, READER])


@pytest.fixture(params=["asyncio", "trio", "sync"])
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        yield Servers(request.param, stack)


def names(running: Running) -> list[str]:
    return running.query(lambda registry: registry.names())


def closed_by_server(peer: Peer) -> bool:
    """True once the server has closed (or reset, or failed the TLS session of) ``peer``,
    whatever it sent before (a TLS alert, an ERR line); False if it sends 64 KiB first.
    Waits at most the socket's timeout for each read."""
    received = 0
    try:
        while received < 65536:
            data = peer.sock.recv(4096)
            if not data:
                return True
            received += len(data)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


# -- TLS ---------------------------------------------------------------------------------------


def test_lines_arrive_over_tls(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context())
    bob = servers.peer(running, pki.client_context())
    assert isinstance(bob.sock, ssl.SSLSocket) and bob.sock.version() in ("TLSv1.2", "TLSv1.3")
    bob.send(b"IAM bob\nLOG over tls\nSET k v\n" + b"LOG x\n" * 5000)
    assert bob.ping() == []
    log = running.query(lambda registry: registry.log("bob"))
    assert len(log) == 128 and log[-1].message == "x"  # the ring buffer's default size
    assert running.query(lambda registry: registry.state("bob")) == {"k": "v"}


def test_a_tls_client_that_never_reads_loses_nothing(servers: Servers, pki: Pki) -> None:
    """A client that sends and closes without reading: every line is stored. (The servers send
    no TLS 1.3 session tickets, so such a client leaves nothing unread and its close is no
    reset, which could make the server's kernel drop what it had not read yet.)"""
    running = servers.start(ssl_context=pki.server_context())
    quiet = Peer(running.port, ssl_context=pki.client_context())
    quiet.send(b"IAM quiet\n" + b"LOG x\n" * 2000 + b"LOG last\n")
    quiet.close()
    running.wait_until(lambda r: "quiet" in r.names() and not r.client("quiet").connected)
    info = running.query(lambda registry: registry.client("quiet"))
    assert info.lines_received == 2001 and info.log[-1].message == "last"


@pytest.mark.parametrize(
    "first_bytes", [b"IAM bob\nLOG plain text\n", b"\x16\x03\x01\x00\x05hello", bytes(range(256))]
)
def test_plain_text_or_garbage_is_closed_at_once(
    servers: Servers, pki: Pki, first_bytes: bytes
) -> None:
    running = servers.start(ssl_context=pki.server_context(), handshake_timeout=60.0)
    started = time.monotonic()
    intruder = servers.peer(running)
    intruder.send(first_bytes)
    assert closed_by_server(intruder)
    assert time.monotonic() - started < 30.0  # not the handshake timeout: at once
    good = servers.peer(running, pki.client_context())
    good.send(b"IAM good\n")
    assert good.ping() == [] and names(running) == ["good"]


def test_a_close_notify_in_the_same_flight_as_a_ping_ends_the_session(
    servers: Servers, pki: Pki
) -> None:
    """A client that half-closes its TLS side (``close_notify``, as Go's ``CloseWrite`` or
    ``SSLObject.unwrap()`` send, the TCP connection left open) right behind its ``PING``, in
    one flight: it gets its ``PONG``, the server sees the end and closes the connection, and
    the client is disconnected (its name free again)."""
    running = servers.start(ssl_context=pki.server_context())
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
    with sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(b"IAM brief\nLOG bye\nPING last\n")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify, queued behind the lines
        sock.sendall(outgoing.read())  # one flight: the lines and the close_notify
        received = b""
        while True:  # until the server's close (its close_notify, or the TCP end)
            try:
                received += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            data = sock.recv(65536)  # the socket's timeout bounds the wait
            if not data:
                break
            incoming.write(data)
    assert received == b"PONG last\n"
    running.wait_until(lambda r: "brief" in r.names() and not r.client("brief").connected)
    assert messages(running, "brief") == ["bye"]


def test_a_silent_peer_is_closed_after_the_handshake_timeout(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context(), handshake_timeout=0.5)
    started = time.monotonic()
    silent = servers.peer(running)  # connects, never says hello
    busy = servers.peer(running, pki.client_context())  # the others are served meanwhile
    busy.send(b"IAM busy\nLOG while the other one stalls\n")
    assert busy.ping() == []
    assert closed_by_server(silent)
    assert 0.4 <= time.monotonic() - started < TIMEOUT
    busy.send(b"LOG still here\n")
    assert busy.ping("after") == []


def test_a_client_that_does_not_trust_the_server_refuses_it(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context())
    distrustful = ssl.create_default_context(cafile=pki.stranger_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        Peer(running.port, ssl_context=distrustful)


def test_tls_older_than_1_2_is_refused(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context())
    old = pki.client_context()
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
        # The alert, or (anyio, which does not flush it) the end of the connection:
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"):
            Peer(running.port, ssl_context=old)


# -- tokens ------------------------------------------------------------------------------------

TOKEN_CASES = [
    # (id, authorizer, first line, accepted)
    ("open-server", Authorizer(), b"IAM anyone", True),
    ("open-server-ignores-a-token", Authorizer(), b"IAM anyone some-token", True),
    ("single-token", Authorizer.single_token("s3cret"), b"IAM anyone s3cret", True),
    ("missing-token", Authorizer.single_token("s3cret"), b"IAM anyone", False),
    ("wrong-token", Authorizer.single_token("s3cret"), b"IAM anyone s3creT", False),
    ("write-token-covers-the-name", POLICY, b"IAM worker-1 w-secret", True),
    ("write-token-not-this-name", POLICY, b"IAM db w-secret", False),
    ("read-only-token-cannot-write", POLICY, b"IAM worker-1 r-secret", False),
]


@pytest.mark.parametrize(
    ("authorizer", "first_line", "accepted"),
    [case[1:] for case in TOKEN_CASES],
    ids=[case[0] for case in TOKEN_CASES],
)
def test_tokens_decide_who_may_write(
    servers: Servers, authorizer: Authorizer, first_line: bytes, accepted: bool
) -> None:
    running = servers.start(authorizer=authorizer)
    peer = servers.peer(running)
    peer.send(first_line + b"\nLOG hello\n")
    name = first_line.split()[1].decode()
    if accepted:
        assert peer.ping() == [] and names(running) == [name]
        return
    reply = peer.line()
    assert reply.startswith(b"ERR unauthorized ") and first_line.split()[-1] not in reply[17:]
    assert peer.at_eof() and names(running) == []
    assert running.query(lambda registry: registry.stats.errors) == {"unauthorized": 1}


def test_tokens_over_tls(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context(), authorizer=POLICY)
    worker = servers.peer(running, pki.client_context())
    worker.send(b"IAM worker-9 w-secret\nLOG hi\n")
    assert worker.ping() == [] and names(running) == ["worker-9"]


# -- client certificates -----------------------------------------------------------------------


def test_a_certificate_for_a_cannot_identify_as_b(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context(client_certificates=True))
    a = servers.peer(running, pki.client_context("a"))
    a.send(b"IAM a\nLOG mine\n")
    assert a.ping() == []
    b = servers.peer(running, pki.client_context("a"))
    b.send(b"IAM b\n")
    reply = b.line()
    assert reply == b"ERR unauthorized the client certificate does not carry the name 'b'"
    assert b.at_eof() and names(running) == ["a"]
    a.close()
    running.wait_until(lambda registry: not registry.client("a").connected)
    # Nor may it take over a's retained record.
    again = servers.peer(running, pki.client_context("b"))
    again.send(b"IAM a\n")
    assert again.line().startswith(b"ERR unauthorized ")


def test_the_common_name_and_every_dns_name_are_the_certificates(
    servers: Servers, pki: Pki
) -> None:
    running = servers.start(ssl_context=pki.server_context(client_certificates=True))
    for name in (b"dev-7.example", b"dev-7"):
        peer = servers.peer(running, pki.client_context("dev-7.example", common_name="dev-7"))
        peer.send(b"IAM " + name + b"\n")
        assert peer.ping() == []
    assert sorted(names(running)) == ["dev-7", "dev-7.example"]


@pytest.mark.parametrize("certificate", ["none", "stranger"])
def test_no_certificate_or_an_untrusted_one_ends_the_handshake(
    servers: Servers, pki: Pki, certificate: str
) -> None:
    running = servers.start(ssl_context=pki.server_context(client_certificates=True))
    context = pki.client_context("a", stranger=True) if certificate == "stranger" else None
    try:
        peer = servers.peer(running, context or pki.client_context())
    except (ssl.SSLError, ConnectionError):
        pass  # TLS 1.2: refused within the handshake
    else:  # TLS 1.3: the client is done first, and learns of the refusal on its next read
        peer.send(b"IAM a\nLOG never\n")
        assert closed_by_server(peer)
    assert names(running) == []


def test_a_token_grants_names_beyond_the_certificate(servers: Servers, pki: Pki) -> None:
    context = pki.server_context(client_certificates=True)
    running = servers.start(ssl_context=context, authorizer=POLICY)
    peer = servers.peer(running, pki.client_context("a"))
    peer.send(b"IAM worker-3 w-secret\n")
    assert peer.ping() == []
    own = servers.peer(running, pki.client_context("a"))
    own.send(b"IAM a\n")  # its certificate's name needs no token
    assert own.ping() == []
    assert sorted(names(running)) == ["a", "worker-3"]


# -- the clients -------------------------------------------------------------------------------


@pytest.fixture
def sync_server(pki: Pki) -> Iterator[SyncServer]:
    server = SyncServer(
        "127.0.0.1",
        0,
        ssl_context=pki.server_context(client_certificates=True),
        authorizer=POLICY,
    )
    with server:
        yield server


def test_the_sync_client_over_tls_with_a_token(sync_server: SyncServer, pki: Pki) -> None:
    context = pki.client_context("c")
    with LogatronClient(
        "worker-1", port=sync_server.port, token="w-secret", ssl_context=context
    ) as client:
        client.log("one\ntwo")
        client.ping()
    assert sync_server.call(lambda registry: len(registry.log("worker-1"))) == 2
    with pytest.raises(ServerRefused) as refused:
        LogatronClient("db", port=sync_server.port, token="w-secret", ssl_context=context)
    assert refused.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(ssl.SSLCertVerificationError):
        LogatronClient("worker-1", port=sync_server.port, ssl_context=ssl.create_default_context())


def wait_for(condition: object, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


def test_the_handler_over_tls_with_a_token(sync_server: SyncServer, pki: Pki) -> None:
    handler = LogatronHandler(
        "worker-2",
        port=sync_server.port,
        token="w-secret",
        tls_ca=str(pki.ca_file),
        tls_cert=str(pki.client_pem("c")),
    )
    log = logging.getLogger("test_tls.handler")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("over tls")
        try:
            raise ValueError("a traceback")
        except ValueError:
            log.exception("boom")
        handler.flush(TIMEOUT)
        assert handler.stats().queued == 0
    finally:
        log.removeHandler(handler)
        handler.close()
    messages = sync_server.call(lambda r: [entry.message for entry in r.log("worker-2")])
    assert messages[0] == "over tls" and messages[1] == "boom" and len(messages) > 3


def test_the_handler_from_dictconfig_and_a_refused_token(sync_server: SyncServer, pki: Pki) -> None:
    handler_config = {
        "()": "logatron_sync.LogatronHandler",
        "name": "worker-3",
        "port": sync_server.port,
        "tls_ca": str(pki.ca_file),
        "tls_cert": str(pki.client_pem("c")),
        "max_backoff": 0.2,
    }
    logging.config.dictConfig(
        {
            "version": 1,
            "incremental": False,
            "disable_existing_loggers": False,
            "handlers": {
                "good": {**handler_config, "token": "w-secret"},
                "bad": {
                    **handler_config,
                    "name": "worker-4",
                    "token": "r-secret",
                    "close_timeout": 0.1,  # its record is never confirmed: do not wait long
                },
            },
            "loggers": {"test_tls.dict": {"handlers": ["good", "bad"], "propagate": False}},
        }
    )
    log = logging.getLogger("test_tls.dict")
    good, bad = log.handlers
    try:
        assert isinstance(good, LogatronHandler) and isinstance(bad, LogatronHandler)
        log.warning("from dictConfig")
        good.flush(TIMEOUT)
        assert good.stats().confirmed == 1
        wait_for(lambda: "unauthorized" in (bad.stats().last_error or ""))
        assert bad.stats().queued == 1 and "r-secret" not in (bad.stats().last_error or "")
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    assert sync_server.call(lambda registry: registry.names()) == ["worker-3"]


@pytest.mark.anyio
async def test_the_async_client_over_tls_with_a_token(pki: Pki) -> None:
    from logatron_anyio import LogatronServer

    server = LogatronServer(
        port=0, ssl_context=pki.server_context(client_certificates=True), authorizer=POLICY
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        context = pki.client_context("a")
        async with await connect(
            "worker-5", port=server.port, token="w-secret", ssl_context=context
        ) as client:
            await client.log("async over tls")
            await client.ping()
        async with await connect("a", port=server.port, ssl_context=context) as client:
            await client.ping()
        with pytest.raises(ServerRefused) as refused:
            await connect("b", port=server.port, ssl_context=context)
        assert refused.value.code is ErrorCode.UNAUTHORIZED
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect("a", port=server.port, ssl_context=ssl.create_default_context())
        tg.cancel_scope.cancel()
    assert [entry.message for entry in server.registry.log("worker-5")] == ["async over tls"]


def test_refusals_are_logged_with_the_peer_address_never_the_token(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    running = servers.start(authorizer=POLICY)
    with caplog.at_level(logging.INFO):
        peer = servers.peer(running)
        peer.send(b"IAM db w-secret\n")
        assert peer.line().startswith(b"ERR unauthorized ")
        port = peer.sock.getsockname()[1]
        wait_for(lambda: any(str(port) in record.getMessage() for record in caplog.records))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"127.0.0.1:{port}" in record.getMessage() for record in warnings)
    assert all("w-secret" not in record.getMessage() for record in caplog.records)


def test_a_tls_server_rejects_a_connection_reset_mid_handshake(servers: Servers, pki: Pki) -> None:
    running = servers.start(ssl_context=pki.server_context())
    raw = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
    raw.send(b"\x16\x03\x01")  # the start of a ClientHello, then a reset
    Peer.reset(raw_peer(raw))
    good = servers.peer(running, pki.client_context())
    good.send(b"IAM fine\n")
    assert good.ping() == []


def raw_peer(sock: socket.socket) -> Peer:
    peer = Peer.__new__(Peer)
    peer.sock = sock
    return peer


def test_the_sync_command_with_tls_a_token_and_client_certificates(
    tmp_path: Path, pki: Pki
) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[[token]]\nsecret = "w-secret"\nwrite = ["worker-*"]\n')
    files = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    command = [sys.executable, "-m", "logatron_sync", "--port", "0", *files]
    command += ["--tls-client-ca", str(pki.ca_file), "--auth-file", str(auth)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")}
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env) as process:
        try:
            line = Lines(process.stdout).next()  # waits at most test_cli's TIMEOUT
            expected = r"logatron_sync listening for TLS clients on 127\.0\.0\.1:(\d+)"
            match = re.fullmatch(expected, line)
            assert match, line
            port = int(match[1])
            context = pki.client_context("c")
            with LogatronClient("worker-1", port=port, token="w-secret", ssl_context=context):
                pass
            with pytest.raises(ServerRefused):
                LogatronClient("worker-1", port=port, ssl_context=context)  # no token, not "c"
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
