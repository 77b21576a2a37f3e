"""LogatronHandler: never blocks the application, loses nothing silently, survives restarts."""

import logging
import logging.config
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from logatron_core import Registry
from logatron_sync import LogatronHandler, LogatronServer

TIMEOUT = 5.0
FAST: dict[str, Any] = {
    "min_backoff": 0.02,
    "max_backoff": 0.1,
    "flush_interval": 0.1,
    "timeout": TIMEOUT,
}


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port: int = listener.getsockname()[1]
    return port


@contextmanager
def attached(handler: LogatronHandler) -> Iterator[logging.Logger]:
    """A private logger that sends to ``handler``; the handler is closed afterwards."""
    logger = logging.getLogger(f"test_handler.{handler.client_name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def server_on(port: int, buffer_size: int = 1000) -> LogatronServer:
    return LogatronServer(port=port, registry=Registry(buffer_size=buffer_size))


def messages(server: LogatronServer, name: str) -> list[str]:
    return [entry.message for entry in server.registry.log(name)]


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_records_arrive_and_are_confirmed() -> None:
    with server_on(0) as server:
        handler = LogatronHandler("app", port=server.port, **FAST)
        with attached(handler) as logger:
            for i in range(5):
                logger.info("record %d", i)
            handler.flush()
            assert messages(server, "app") == [f"record {i}" for i in range(5)]
            stats = handler.stats()
            assert (stats.queued, stats.confirmed, stats.dropped) == (0, 5, 0)
            assert stats.connected and stats.connections == 1


def test_a_traceback_arrives_as_consecutive_entries_as_printed() -> None:
    with server_on(0) as server:
        handler = LogatronHandler("tb", port=server.port, **FAST)
        with attached(handler) as logger:
            logger.info("before")
            values = {"zero": 0}
            try:
                print(1 + values["one"] // values["zero"])
            except KeyError:
                printed = traceback.format_exc()
                logger.exception("it failed")
            logger.info("after")
            handler.flush()
        log = server.registry.log("tb")
        texts = [entry.message for entry in log]
        # Every line as printed, indentation and the caret line under the expression included.
        assert texts == ["before", "it failed", *printed.rstrip("\n").split("\n"), "after"]
        assert any(text.startswith("  File ") for text in texts)
        assert any(text.strip() and not text.strip("~^ ") for text in texts)  # carets
        assert [entry.seq for entry in log] == list(range(log[0].seq, log[0].seq + len(log)))


def test_the_application_keeps_running_while_the_server_is_down() -> None:
    port = free_port()
    handler = LogatronHandler("patient", port=port, **FAST)
    with attached(handler) as logger:
        slowest = 0.0
        started = time.monotonic()
        for i in range(200):
            before = time.monotonic()
            logger.warning("while down %d", i)
            slowest = max(slowest, time.monotonic() - before)
        assert time.monotonic() - started < 0.5
        assert slowest < 0.05
        wait_until(lambda: bool(handler.stats().last_error))  # a failed connection attempt
        stats = handler.stats()
        assert not stats.connected and stats.queued == 200
        with server_on(port) as server:
            handler.flush(TIMEOUT)
            assert messages(server, "patient") == [f"while down {i}" for i in range(200)]
            assert handler.stats().queued == 0


def test_confirmed_records_are_not_sent_again_after_a_restart() -> None:
    port = free_port()
    handler = LogatronHandler("restart", port=port, **FAST)
    with attached(handler) as logger:
        with server_on(port) as first:
            for i in range(5):
                logger.info("first %d", i)
            handler.flush(TIMEOUT)
            assert messages(first, "restart") == [f"first {i}" for i in range(5)]
        with server_on(port) as second:
            for i in range(3):
                logger.info("second %d", i)
            handler.flush(TIMEOUT)
            assert messages(second, "restart") == [f"second {i}" for i in range(3)]
            stats = handler.stats()
            assert stats.queued == 0 and stats.confirmed == 8 and stats.connections >= 2


def test_unconfirmed_records_are_sent_again_after_a_reconnect() -> None:
    """A server that takes a batch and dies before its PONG: the batch goes to the next one."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(TIMEOUT)
    received = bytearray()
    connected = threading.Event()

    def take_a_batch_and_die() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(TIMEOUT)
            data = b""
            while b"PING" not in data:  # IAM and the connection's first PING
                data += connection.recv(4096)
            token = data.split(b"PING ")[1].split(b"\n")[0]
            connection.sendall(b"PONG " + token + b"\n")
            connected.set()
            while received.count(b"PING") < 1:  # a batch, then its PING: never answered
                chunk = connection.recv(4096)
                if not chunk:
                    break
                received.extend(chunk)
        listener.close()

    thread = threading.Thread(target=take_a_batch_and_die, daemon=True)
    thread.start()
    handler = LogatronHandler("resend", port=port, **FAST)
    with attached(handler) as logger:
        assert connected.wait(TIMEOUT)
        logger.info("not lost 1")
        logger.info("not lost 2")
        thread.join(TIMEOUT)
        assert b"LOG not lost 1\n" in received
        with server_on(port) as server:
            handler.flush(TIMEOUT)
            assert messages(server, "resend") == ["not lost 1", "not lost 2"]


def test_overflow_is_counted_and_reported() -> None:
    port = free_port()
    handler = LogatronHandler(
        "overflow",
        port=port,
        queue_size=10,
        **FAST,
    )
    with attached(handler) as logger:
        for i in range(25):
            logger.info("record %d", i)
        assert handler.dropped == 15
        assert handler.stats().dropped == 15 and handler.stats().queued == 10
        with server_on(port) as server:
            handler.flush(TIMEOUT)
            assert messages(server, "overflow") == [
                "logatron: 15 records dropped",
                *(f"record {i}" for i in range(10)),
            ]


@pytest.mark.parametrize("key", ["()", "class"])
def test_dict_config(key: str) -> None:
    with server_on(0) as server:
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
                "handlers": {
                    "logatron": {
                        key: "logatron_sync.LogatronHandler",
                        "name": "configured",
                        "host": "127.0.0.1",
                        "port": server.port,
                        "queue_size": 100,
                        "flush_interval": 0.1,
                        "level": "INFO",
                        "formatter": "plain",
                    }
                },
                "loggers": {
                    "test_handler_dictconfig": {"handlers": ["logatron"], "level": "DEBUG"}
                },
            }
        )
        logger = logging.getLogger("test_handler_dictconfig")
        (handler,) = logger.handlers
        assert isinstance(handler, LogatronHandler)
        try:
            assert handler.name == "logatron" and handler.client_name == "configured"
            logger.debug("filtered out by the handler's level")
            logger.info("configured by dictConfig")
            handler.flush(TIMEOUT)
            assert messages(server, "configured") == ["INFO configured by dictConfig"]
        finally:
            logger.removeHandler(handler)
            handler.close()
            logger.propagate = True


def test_a_formatting_error_does_not_raise(capsys: pytest.CaptureFixture[str]) -> None:
    with server_on(0) as server:
        handler = LogatronHandler("careless", port=server.port, **FAST)
        with attached(handler) as logger:
            logger.info("%d apples", "not a number")  # handleError prints, nothing raises
            logger.info("fine")
            handler.flush(TIMEOUT)
            assert messages(server, "careless") == ["fine"]
    assert "Logging error" in capsys.readouterr().err


def test_close_stops_the_thread_even_while_the_server_is_down() -> None:
    handler = LogatronHandler("closing", port=free_port(), close_timeout=0.2, **FAST)
    handler.emit(logging.makeLogRecord({"msg": "never delivered"}))
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 1.0
    wait_until(lambda: not handler._thread.is_alive(), timeout=2)
    handler.close()  # idempotent
    assert handler.stats().queued == 1
