"""The status page ``GET /`` in a real headless Chromium, against servers running in-process.

The browser is driven with the Chrome DevTools Protocol over a pipe (tests/browser.py). The
tests need ``/usr/bin/chromium`` (Debian: ``apt-get install chromium``) and fail, never skip,
without it.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

from browser import CHROMIUM, Browser, BrowserError, Page
from logatron_anyio import HttpServer, LogatronServer
from logatron_core import Registry

TIMEOUT = 10.0  # a socket operation
PAGE_TIMEOUT = 15.0  # the page showing something

# What the page shows, read from its DOM in one evaluation.
PAGE_VIEW = """(() => {
  const status = document.getElementById("status"), tail = document.getElementById("tail");
  if (!status || !tail) return JSON.stringify({status: "", clients: {}, tail: ""});
  const clients = {};
  for (const card of document.querySelectorAll("#clients [data-client]")) {
    const part = selector => (card.querySelector(selector) || {}).textContent;
    clients[card.dataset.client] = {
      badge: part(".badge"), state: part(".state"), lines: part(".lines"),
    };
  }
  return JSON.stringify({
    status: status.textContent, clients, tail: tail.innerText,
  });
})()"""


@dataclass
class Servers:
    registry: Registry
    tcp_port: int
    http_port: int

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


@contextmanager
def serving(backend: str, token: str | None = None) -> Iterator[Servers]:
    """A TCP server and an HTTP server on one registry, in a background thread's event loop."""
    registry = Registry()
    tcp = LogatronServer(port=0, registry=registry)
    http = HttpServer(registry, port=0, token=token)
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        tcp_task, (_, tcp_port) = portal.start_task(tcp.serve)
        try:
            http_task, (_, http_port) = portal.start_task(http.serve)
            try:
                yield Servers(registry, tcp_port, http_port)
            finally:
                http_task.cancel()
        finally:
            tcp_task.cancel()


class TcpClient:
    """A plain-socket protocol client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, reply: bytes) -> None:
        """Read until ``reply`` has arrived (socket timeout: TIMEOUT) and consume through it."""
        while reply not in self.received:
            data = self.sock.recv(4096)
            assert data, f"the server closed the connection; received {self.received!r}"
            self.received += data
        self.received = self.received.split(reply, 1)[1]

    def close(self) -> None:
        self.sock.close()


@contextmanager
def tcp_client(port: int) -> Iterator[TcpClient]:
    client = TcpClient(port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    try:
        launched = Browser(tmp_path / "profile", tmp_path / "chromium.log", CHROMIUM)
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    with launched:
        yield launched


def view(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(page.evaluate(PAGE_VIEW))
    return result


def wait_for_view(page: Page, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the page's view until ``check(view)`` is true (bounded)."""

    def poll() -> dict[str, Any] | None:
        current = view(page)
        return current if check(current) else None

    return page.wait_for(poll, what, PAGE_TIMEOUT)


def card(current: dict[str, Any], name: str) -> dict[str, str]:
    found: dict[str, str] = current["clients"].get(name) or {}
    return found


def connect_bob(servers: Servers) -> TcpClient:
    bob = TcpClient(servers.tcp_port)
    bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
    bob.expect(b"PONG\n")
    return bob


def see_bob_connected(page: Page) -> None:
    page.wait_for_text("bob", "connected", "mood=happy", "first line", timeout=PAGE_TIMEOUT)
    wait_for_view(
        page,
        "bob's card: connected, mood=happy, first line; status live",
        lambda v: (
            card(v, "bob").get("badge") == "connected"
            and "mood=happy" in card(v, "bob").get("state", "")
            and "first line" in card(v, "bob").get("lines", "")
            and v["status"] == "live"
        ),
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_shows_clients_and_follows_them_live(
    browser: Browser, backend: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with serving(backend) as servers:
        page = browser.new_page()
        bob = connect_bob(servers)
        try:
            page.navigate(servers.url())
            see_bob_connected(page)
            page.evaluate("window.notReloaded = true")

            bob.send(b"LOG second line from tcp\n")
            page.wait_for_text("second line from tcp", timeout=PAGE_TIMEOUT)
            wait_for_view(
                page,
                "the live line in bob's card and in the tail",
                lambda v: (
                    "second line from tcp" in card(v, "bob").get("lines", "")
                    and "bob: second line from tcp" in v["tail"]
                ),
            )

            bob.send(b"SET mood sad\n")
            wait_for_view(page, "mood=sad", lambda v: card(v, "bob").get("state") == "mood=sad")
            page.screenshot(tmp_path / "status.png")
        finally:
            bob.close()

        final = wait_for_view(
            page, "bob's badge: retained", lambda v: card(v, "bob").get("badge") == "retained"
        )
        assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
        # The first line came from the snapshot, the second live: each shows once.
        assert final["tail"].count("second line from tcp") == 1
        assert card(final, "bob")["lines"].count("first line") == 1
        assert page.problems() == []
    assert time.monotonic() - started < 30


def test_status_page_with_a_token(browser: Browser) -> None:
    with serving("asyncio", token="s3cret") as servers:
        connection = http.client.HTTPConnection("127.0.0.1", servers.http_port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 401
            response.read()
        finally:
            connection.close()

        page = browser.new_page()
        with tcp_client(servers.tcp_port) as bob:
            bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
            bob.expect(b"PONG\n")
            page.navigate(servers.url("/?token=s3cret"))
            see_bob_connected(page)

            bob.send(b"LOG second line from tcp\n")
            wait_for_view(
                page,
                "the live line, through the WebSocket with ?token=",
                lambda v: "bob: second line from tcp" in v["tail"],
            )
        assert page.problems() == []


def get_json(servers: Servers, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", servers.http_port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)
    finally:
        connection.close()


def test_state_changed_while_the_page_loads_is_not_lost(browser: Browser) -> None:
    """A SET and a close that happen after the page's snapshot of /api/clients but before its
    WebSocket tail is subscribed carry no seq, so the tail's since= cursor cannot replay them:
    the page must still end up showing them."""
    with serving("asyncio") as servers:
        page = browser.new_page()
        # Hold the snapshot's response in the browser, after the server has answered it.
        pattern = {"urlPattern": "*/api/clients*", "requestStage": "Response"}
        page.call("Fetch.enable", {"patterns": [pattern]})
        with tcp_client(servers.tcp_port) as bob:
            bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
            bob.expect(b"PONG\n")
            page.navigate(servers.url())
            held = page.wait_for_event("Fetch.requestPaused", timeout=PAGE_TIMEOUT)
            bob.send(b"SET mood changed meanwhile\nLOG line meanwhile\nPING\n")
            bob.expect(b"PONG\n")
        deadline = time.monotonic() + TIMEOUT
        while get_json(servers, "/api/clients/bob")["connected"]:
            assert time.monotonic() < deadline, "the server did not see bob leave"
            time.sleep(0.02)
        page.call("Fetch.continueRequest", {"requestId": held["params"]["requestId"]})

        def settled() -> dict[str, Any] | None:
            for later in page.take_events("Fetch.requestPaused"):
                page.call("Fetch.continueRequest", {"requestId": later["params"]["requestId"]})
            current = view(page)
            bob_card = card(current, "bob")
            ok = (
                bob_card.get("badge") == "retained"
                and bob_card.get("state") == "mood=changed meanwhile"
                and "line meanwhile" in bob_card.get("lines", "")
                and "bob: line meanwhile" in current["tail"]
            )
            return current if ok else None

        final = page.wait_for(settled, "bob retained with mood=changed meanwhile", PAGE_TIMEOUT)
        assert card(final, "bob")["lines"].count("line meanwhile") == 1
        assert final["tail"].count("line meanwhile") == 1
        assert page.problems() == []


def test_a_burst_is_drawn_in_full_and_the_tail_stays_bounded(browser: Browser) -> None:
    with serving("asyncio") as servers, tcp_client(servers.tcp_port) as bob:
        bob.send(b"IAM bob\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(page, "bob connected", lambda v: card(v, "bob").get("badge") == "connected")

        bob.send(b"".join(b"LOG burst %d\n" % i for i in range(1200)) + b"PING\n")
        bob.expect(b"PONG\n")
        wait_for_view(page, "the whole burst", lambda v: "bob: burst 1199" in v["tail"])
        tail = "document.getElementById('tail')"
        assert page.evaluate(f"{tail}.childElementCount") == 500  # TAIL_LINES
        assert "bob: burst 699\n" not in view(page)["tail"]
        lines = card(view(page), "bob")["lines"].splitlines()
        newest = [f"burst {i}" for i in range(1190, 1200)]  # LAST_LINES of them
        assert [line.split("  ", 1)[1] for line in lines] == newest
        # The tail follows the newest line...
        assert page.evaluate(f"{tail}.scrollHeight - {tail}.scrollTop - {tail}.clientHeight") < 2
        # ...unless the reader scrolled up to read.
        page.evaluate(f"{tail}.scrollTop = 100")
        top_line = (
            f"[...{tail}.children].find(line => line.getBoundingClientRect().top >="
            f" {tail}.getBoundingClientRect().top).textContent"
        )
        reading = page.evaluate(top_line)
        bob.send(b"LOG one more\n")
        wait_for_view(page, "one more line", lambda v: "bob: one more" in v["tail"])
        assert page.evaluate(top_line) == reading
        assert page.evaluate(f"{tail}.scrollTop") <= 100
        assert page.problems() == []


def test_a_missing_chromium_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        Browser(tmp_path / "profile", tmp_path / "log", str(tmp_path / "no-chromium"))


def test_browser_errors_are_reported(browser: Browser) -> None:
    page = browser.new_page()
    with pytest.raises(BrowserError, match="raised"):
        page.evaluate("undefined.x")
