"""The status page ``GET /`` in a real headless Chromium, against servers running in-process.

The browser is driven with the Chrome DevTools Protocol over a pipe (tests/browser.py). The
tests need ``/usr/bin/chromium`` (Debian: ``apt-get install chromium``) and fail, never skip,
without it.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

from browser import CHROMIUM, Browser, BrowserError, Page
from logatron_anyio import HttpServer, LogatronServer, TailOptions
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


class Servers:
    """A TCP server and an HTTP server on one registry, in a background thread's event loop."""

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        token: str | None,
        tail_options: TailOptions | None,
        registry: Registry | None,
    ) -> None:
        self.portal = portal
        self.token = token
        self.tail_options = tail_options
        self.registry = registry or Registry()
        tcp = LogatronServer(port=0, registry=self.registry)
        self.tcp_task, (_, self.tcp_port) = portal.start_task(tcp.serve)
        self.http_port = 0
        self.http_task: Future[None] | None = None
        self.start_http()

    def start_http(self) -> None:
        """Start the HTTP server (again: on the same port, once the old listener is gone)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            http = HttpServer(
                self.registry, port=self.http_port, token=self.token, tail_options=self.tail_options
            )
            try:
                self.http_task, (_, self.http_port) = self.portal.start_task(http.serve)
                return
            except OSError:  # the previous server's listener is not closed yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop_http(self) -> None:
        if self.http_task is not None:
            self.http_task.cancel()
            self.http_task = None

    def stop(self) -> None:
        self.stop_http()
        self.tcp_task.cancel()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


@contextmanager
def serving(
    backend: str,
    token: str | None = None,
    tail_options: TailOptions | None = None,
    registry: Registry | None = None,
) -> Iterator[Servers]:
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        servers = Servers(portal, token, tail_options, registry)
        try:
            yield servers
        finally:
            servers.stop()


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
        missing = str(error)
    else:
        missing = ""
    if missing:  # a failure, never a skip: CI installs Chromium (.ci/run)
        pytest.fail(missing, pytrace=False)
    with launched:
        yield launched


def hold_snapshots(page: Page) -> None:
    """From now on the browser holds every response of /api/clients until released."""
    pattern = {"urlPattern": "*/api/clients*", "requestStage": "Response"}
    page.call("Fetch.enable", {"patterns": [pattern]})


def release(page: Page, held: dict[str, Any]) -> None:
    page.call("Fetch.continueRequest", {"requestId": held["params"]["requestId"]})


def view(page: Page) -> dict[str, Any]:
    """What the page shows (any response held by hold_snapshots released first)."""
    for held in page.take_events("Fetch.requestPaused"):
        release(page, held)
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


def get(servers: Servers, path: str) -> tuple[int, Any]:
    """(status, JSON body) of a GET on the HTTP server, without credentials."""
    connection = http.client.HTTPConnection("127.0.0.1", servers.http_port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_shows_clients_and_follows_them_live(
    browser: Browser, backend: str, tmp_path: Path
) -> None:
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

            # Text is shown as text, never as markup.
            bob.send('LOG <img src=x onerror="window.pwned = 1"> ünïcødé ✓\n'.encode())
            wait_for_view(
                page,
                "the markup shown as text",
                lambda v: (
                    '<img src=x onerror="window.pwned = 1"> ünïcødé ✓' in v["tail"]
                    and "ünïcødé ✓" in card(v, "bob").get("lines", "")
                ),
            )
            assert page.evaluate("document.querySelector('main img') === null && !window.pwned")

            bob.send(b"SET mood sad\n")
            wait_for_view(page, "mood=sad", lambda v: card(v, "bob").get("state") == "mood=sad")
            page.screenshot(tmp_path / "status.png")  # to look at when in doubt
            assert (tmp_path / "status.png").read_bytes().startswith(b"\x89PNG")
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


def test_status_page_with_a_token(browser: Browser) -> None:
    with serving("asyncio", token="s3cret") as servers:
        assert get(servers, "/api/clients")[0] == 401
        page = browser.new_page()
        # Without the token the page itself loads, and says what it needs.
        page.navigate(servers.url("/"))
        hint = "this server needs ?token=<token> in the address"
        wait_for_view(page, "the token hint", lambda v: v["status"] == hint)
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


def test_state_changed_while_the_page_loads_is_not_lost(browser: Browser) -> None:
    """A SET and a close that happen after the page's snapshot of /api/clients but before its
    WebSocket tail is subscribed carry no seq, so the tail's since= cursor cannot replay them:
    the page must still end up showing them."""
    with serving("asyncio") as servers:
        page = browser.new_page()
        hold_snapshots(page)
        with tcp_client(servers.tcp_port) as bob:
            bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
            bob.expect(b"PONG\n")
            page.navigate(servers.url())
            held = page.wait_for_event("Fetch.requestPaused", timeout=PAGE_TIMEOUT)
            bob.send(b"SET mood changed meanwhile\nLOG line meanwhile\nPING\n")
            bob.expect(b"PONG\n")
        deadline = time.monotonic() + TIMEOUT
        while get(servers, "/api/clients/bob")[1]["connected"]:
            assert time.monotonic() < deadline, "the server did not see bob leave"
            time.sleep(0.02)
        release(page, held)
        final = wait_for_view(
            page,
            "bob retained, with mood=changed meanwhile and the line sent meanwhile",
            lambda v: (
                card(v, "bob").get("badge") == "retained"
                and card(v, "bob").get("state") == "mood=changed meanwhile"
                and "line meanwhile" in card(v, "bob").get("lines", "")
                and "bob: line meanwhile" in v["tail"]
            ),
        )
        assert card(final, "bob")["lines"].count("line meanwhile") == 1
        assert final["tail"].count("line meanwhile") == 1
        assert page.problems() == []


def test_a_burst_is_drawn_in_full_and_the_tail_stays_bounded(browser: Browser) -> None:
    with serving("asyncio") as servers, tcp_client(servers.tcp_port) as bob:
        bob.send(b"IAM bob\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(
            page,
            "bob connected, the tail live",
            lambda v: card(v, "bob").get("badge") == "connected" and v["status"] == "live",
        )

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


def test_lines_evicted_before_the_tail_starts_show_as_a_gap(browser: Browser) -> None:
    with (
        serving("asyncio", registry=Registry(buffer_size=3)) as servers,
        tcp_client(servers.tcp_port) as bob,
    ):
        bob.send(b"IAM bob\nLOG first line\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        hold_snapshots(page)
        page.navigate(servers.url())
        held = page.wait_for_event("Fetch.requestPaused", timeout=PAGE_TIMEOUT)
        bob.send(b"".join(b"LOG line %d\n" % i for i in range(10)) + b"PING\n")
        bob.expect(b"PONG\n")
        release(page, held)  # a snapshot with seq 1 the newest: lines 2-8 will be gone
        final = wait_for_view(
            page,
            "the last line, and bob's card from the second snapshot",
            lambda v: (
                "bob: line 9" in v["tail"] and "first line" not in card(v, "bob").get("lines", "")
            ),
        )
        # Each tail line: "#seq <local time> client: message".
        tail = [re.sub(r"^#\S+ .*? (?=\w+: )", "", line) for line in final["tail"].splitlines()]
        assert tail == [
            "logatron: 7 lines missed (gap)",
            "bob: line 7",
            "bob: line 8",
            "bob: line 9",
        ]
        lines = card(final, "bob")["lines"].splitlines()
        assert [line.split("  ", 1)[1] for line in lines] == ["line 7", "line 8", "line 9"]
        assert page.problems() == []


def test_a_lagging_tail_resyncs_the_clients(browser: Browser) -> None:
    """Past its queue bound the tail drops events (a "lagged" notice says how many): the
    page must not keep showing the state those events changed."""
    with (
        serving("asyncio", tail_options=TailOptions(max_queue_lines=1)) as servers,
        tcp_client(servers.tcp_port) as bob,
    ):
        bob.send(b"IAM bob\nSET count start\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(
            page,
            "count=start, the tail live",
            lambda v: card(v, "bob").get("state") == "count=start" and v["status"] == "live",
        )

        bob.send(b"".join(b"SET count %d\n" % i for i in range(200)) + b"LOG done\nPING\n")
        bob.expect(b"PONG\n")
        final = wait_for_view(
            page,
            "count=199 and the line after the burst",
            lambda v: (
                card(v, "bob").get("state") == "count=199"
                and "done" in card(v, "bob").get("lines", "")
            ),
        )
        assert "events missed (lagged)" in final["tail"]
        assert page.problems() == []


def test_the_page_reconnects_when_the_http_server_comes_back(browser: Browser) -> None:
    with serving("asyncio") as servers, tcp_client(servers.tcp_port) as bob:
        bob.send(b"IAM bob\nLOG first line\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(page, "live", lambda v: v["status"] == "live")
        page.evaluate("window.notReloaded = true")

        servers.stop_http()
        wait_for_view(
            page,
            "the status saying why the tail closed",
            lambda v: v["status"].startswith("disconnected (server shutting down)"),
        )
        bob.send(b"SET mood back\nLOG while the page was away\nPING\n")
        bob.expect(b"PONG\n")
        servers.start_http()
        wait_for_view(
            page,
            "the page back, with what happened meanwhile",
            lambda v: (
                v["status"] == "live"
                and card(v, "bob").get("state") == "mood=back"
                and "while the page was away" in card(v, "bob").get("lines", "")
            ),
        )
        bob.send(b"LOG after the restart\n")
        wait_for_view(page, "the live tail", lambda v: "bob: after the restart" in v["tail"])
        assert page.evaluate("window.notReloaded") is True
        # Failed loads while the server was down are expected; script errors are not.
        assert [p for p in page.problems() if p.startswith("exception")] == []


def test_a_missing_chromium_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        Browser(tmp_path / "profile", tmp_path / "log", str(tmp_path / "no-chromium"))


def test_browser_errors_are_reported(browser: Browser) -> None:
    page = browser.new_page()
    with pytest.raises(BrowserError, match="raised"):
        page.evaluate("undefined.x")
