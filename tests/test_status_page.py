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
  const $ = id => document.getElementById(id);
  const text = id => ($(id) || {}).textContent || "";
  const clients = {}, order = [];
  for (const row of document.querySelectorAll("#clients tbody tr")) {
    const cell = selector => (row.querySelector(selector) || {}).textContent;
    order.push(row.dataset.client);
    clients[row.dataset.client] = {
      badge: cell(".badge"), state: cell(".state"), lines: cell(".lines"), last: cell(".last"),
      selected: row.classList.contains("selected"),
    };
  }
  const tail = $("tail");
  return JSON.stringify({
    status: text("status"), connected: text("n-connected"), retained: text("n-retained"),
    clients, order, shown: text("shown"),
    tail: tail ? tail.innerText : "",
    types: tail ? [...tail.querySelectorAll(".entry")].map(e => e.dataset.type) : [],
    detail: $("detail") ? $("detail").innerText : "",
    following: text("following"), pause: text("pause"), filterError: text("filter-error"),
    login: $("login") ? !$("login").hidden : false, loginError: text("login-error"),
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


def view(page: Page) -> dict[str, Any]:
    """What the page shows."""
    result: dict[str, Any] = json.loads(page.evaluate(PAGE_VIEW))
    return result


def wait_for_view(page: Page, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the page's view until ``check(view)`` is true (bounded)."""

    def poll() -> dict[str, Any] | None:
        current = view(page)
        return current if check(current) else None

    return page.wait_for(poll, what, PAGE_TIMEOUT)


def row(current: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = current["clients"].get(name) or {}
    return found


def click(page: Page, name: str, *, ctrl: bool = False) -> None:
    """Click ``name``'s row in the clients' table (with Ctrl held if ``ctrl``)."""
    selector = json.dumps(f'#clients tr[data-client="{name}"]')
    page.evaluate(
        f"document.querySelector({selector}).dispatchEvent("
        f"new MouseEvent('click', {{bubbles: true, ctrlKey: {json.dumps(ctrl)}}}))"
    )


def type_into(page: Page, element: str, value: str) -> None:
    """Set an input's value and fire what typing and Enter fire."""
    page.evaluate(
        f"(() => {{ const box = document.getElementById({json.dumps(element)});"
        f" box.value = {json.dumps(value)};"
        " box.dispatchEvent(new Event('input'));"
        " box.dispatchEvent(new Event('change')); })()"
    )


def connect_bob(servers: Servers) -> TcpClient:
    bob = TcpClient(servers.tcp_port)
    bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
    bob.expect(b"PONG\n")
    return bob


def see_bob_connected(page: Page) -> dict[str, Any]:
    return wait_for_view(
        page,
        "bob's row: connected, mood=happy, 1 line; the tail live with its first line",
        lambda v: (
            row(v, "bob").get("badge") == "connected"
            and row(v, "bob").get("state") == "mood=happy"
            and row(v, "bob").get("lines") == "1"
            and v["status"] == "live"
            and "bob #1 first line" in v["tail"]
        ),
    )


def get(servers: Servers, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the HTTP server, without credentials."""
    connection = http.client.HTTPConnection("127.0.0.1", servers.http_port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_shows_clients_and_follows_them_live(browser: Browser, backend: str) -> None:
    with serving(backend) as servers:
        page = browser.new_page()
        bob = connect_bob(servers)
        try:
            page.navigate(servers.url())
            first = see_bob_connected(page)
            assert re.fullmatch(TIME, row(first, "bob")["last"])
            assert (first["connected"], first["retained"]) == ("1", "0")
            assert re.search(rf"^{TIME} bob #1 first line$", first["tail"], re.M)
            page.evaluate("window.notReloaded = true")

            bob.send(b"LOG second line from tcp\n")
            # Text is shown as text, never as markup; control characters escaped.
            bob.send('LOG <img src=x onerror="window.pwned = 1"> ünïcødé ✓\n'.encode())
            bob.send(b"LOG \x1b[31mred\x1b[0m and a bell\x07\n")
            bob.send(b"SET mood sad\n")
            with tcp_client(servers.tcp_port) as carol:
                carol.send(b"IAM carol\nLOG hello from carol\nPING\n")
                carol.expect(b"PONG\n")
                wait_for_view(
                    page,
                    "carol connected, the live lines and events in the tail",
                    lambda v: (
                        "bob #2 second line from tcp" in v["tail"]
                        and '<img src=x onerror="window.pwned = 1"> ünïcødé ✓' in v["tail"]
                        and "\\x1b[31mred\\x1b[0m and a bell\\x07" in v["tail"]
                        and "bob set mood=sad" in v["tail"]
                        and "carol ● connected" in v["tail"]
                        and row(v, "bob").get("state") == "mood=sad"
                        and v["connected"] == "2"
                    ),
                )
            assert page.evaluate("document.querySelector('main img') === null && !window.pwned")
            closed = wait_for_view(
                page,
                "carol's close in the tail, her row retained and after bob's",
                lambda v: (
                    "carol ○ disconnected" in v["tail"]
                    and row(v, "carol").get("badge") == "retained"
                    and v["order"] == ["bob", "carol"]
                    and (v["connected"], v["retained"]) == ("1", "1")
                ),
            )
            assert {"set", "ready", "close"} <= set(closed["types"])

            click(page, "bob")
            detail = wait_for_view(
                page,
                "bob's state and log beside the table",
                lambda v: (
                    row(v, "bob").get("selected") is True
                    and "mood" in v["detail"]
                    and "second line from tcp" in v["detail"]
                    and v["following"] == "bob"
                ),
            )
            assert re.search(rf"^{TIME}\s+first line$", detail["detail"], re.M)
        finally:
            bob.close()
        wait_for_view(page, "bob retained", lambda v: row(v, "bob").get("badge") == "retained")
        assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
        assert page.problems() == []


def fill(registry: Registry, names: list[str], *, lines: int = 3, retained: int = 0) -> None:
    """Clients connected straight to ``registry`` (before it serves), each with ``lines`` lines
    and a state key; the first ``retained`` of them disconnected."""
    began = time.time()
    for number, name in enumerate(names):
        now = began + number / 1000  # the later, the more recent its activity
        registry.connect(name, now)
        registry.set_state(name, "version", f"1.{number % 10}", now)
        registry.append(name, [f"{name} line {i}" for i in range(lines)], now)
        if number < retained:
            registry.disconnect(name, now)


def test_the_filter_box_the_selection_and_the_tails_filters(browser: Browser) -> None:
    registry = Registry()
    fill(registry, ["worker-1", "worker-2", "web"], retained=3)
    with serving("asyncio", registry=registry) as servers:
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(
            page, "live, three rows", lambda v: v["status"] == "live" and len(v["order"]) == 3
        )

        # A name pattern filters the table and the tail follows it, later clients included.
        type_into(page, "filter", "worker-*")
        wait_for_view(
            page,
            "the workers only; the tail following worker-*",
            lambda v: (
                sorted(v["order"]) == ["worker-1", "worker-2"]
                and v["shown"] == "2 of 3"
                and v["following"] == "worker-*"
                and "web line" not in v["tail"]
            ),
        )
        with tcp_client(servers.tcp_port) as web, tcp_client(servers.tcp_port) as w3:
            web.send(b"IAM web\nLOG web is not followed\nPING\n")
            web.expect(b"PONG\n")
            w3.send(b"IAM worker-3\nLOG worker-3 joined later\nPING\n")
            w3.expect(b"PONG\n")
            wait_for_view(
                page,
                "worker-3 in the tail",
                lambda v: "worker-3 #" in v["tail"] and "joined later" in v["tail"],
            )
            assert "web is not followed" not in view(page)["tail"]
        # Text filters on names and state.
        type_into(page, "filter", "=1.1")
        wait_for_view(page, "worker-2 by its state", lambda v: v["order"] == ["worker-2"])
        type_into(page, "filter", "")
        wait_for_view(page, "every row", lambda v: len(v["order"]) == 4)

        # Selecting clients: the tail follows them; include/exclude applied by the server.
        click(page, "worker-1")
        click(page, "worker-2", ctrl=True)
        wait_for_view(page, "following both", lambda v: v["following"] == "worker-1, worker-2")
        type_into(page, "include", "(a")
        wait_for_view(page, "RE2's reason", lambda v: "missing )" in v["filterError"])
        type_into(page, "include", "line [12]$")
        type_into(page, "exclude", "worker-2 line 2")
        wait_for_view(
            page,
            "the filtered backlog",
            lambda v: (
                v["filterError"] == ""
                and [line.split(" ", 4)[4] for line in v["tail"].splitlines()]
                == ["worker-1 line 1", "worker-1 line 2", "worker-2 line 1"]
            ),
        )
        type_into(page, "include", "nothing matches this")
        wait_for_view(page, "waiting", lambda v: v["tail"].strip() == "waiting for lines…")

        # Pause keeps the tail where it is; resuming shows what came meanwhile.
        type_into(page, "include", "")
        type_into(page, "exclude", "")
        wait_for_view(page, "unfiltered", lambda v: "worker-2 line 2" in v["tail"])
        page.evaluate("document.getElementById('pause').click()")
        before = view(page)["tail"]
        with tcp_client(servers.tcp_port) as w1:
            w1.send(b"IAM worker-1\nLOG while paused\nPING\n")
            w1.expect(b"PONG\n")
            wait_for_view(page, "the count of new lines", lambda v: v["pause"] == "Resume (2 new)")
            assert view(page)["tail"] == before
            page.evaluate("document.getElementById('pause').click()")
            wait_for_view(page, "the line after resuming", lambda v: "while paused" in v["tail"])

            # Long lines wrap at spaces; a word longer than the pane breaks, and only it.
            long_word, words = "x" * 3000, " ".join(["wrap"] * 400)
            w1.send(f"LOG {long_word}\nLOG {words}\nPING\n".encode())
            w1.expect(b"PONG\n")
            wait_for_view(page, "the long lines", lambda v: "wrap wrap" in v["tail"])
        tail = "document.getElementById('tail')"
        assert page.evaluate(f"{tail}.scrollWidth <= {tail}.clientWidth"), "no sideways scroll"
        style = page.evaluate(
            "(s => s.overflowWrap + ' ' + s.wordBreak)"
            "(getComputedStyle(document.querySelector('#tail .entry')))"
        )
        assert style == "break-word normal"
        # By now, two polls at least: the server's rate is drawn (in its blue), and the
        # selection's (in orange) in a band of its own.
        colours = (
            "(() => { const c = document.getElementById('chart');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let blue = false, orange = false;"
            " for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200) {"
            "   blue = blue || (d[i + 2] > 180 && d[i] < 120);"
            "   orange = orange || (d[i] > 180 && d[i + 2] < 80); }"
            " return blue && orange; })()"
        )
        page.wait_for(lambda: page.evaluate(colours), "both rates drawn", PAGE_TIMEOUT)
        # The refused pattern's 400, asked for on purpose, is the only failed load.
        assert [p for p in page.problems() if "status of 400" not in p] == []


def test_status_page_with_a_token(browser: Browser) -> None:
    with serving("asyncio", token="s3cret") as servers:
        status, shell = get(servers, "/")
        assert status == 200 and b"<title>Logatron</title>" in shell
        assert get(servers, "/api/clients")[0] == 401
        page = browser.new_page()
        with tcp_client(servers.tcp_port) as bob:
            bob.send(b"IAM bob\nSET mood happy\nLOG first line\nPING\n")
            bob.expect(b"PONG\n")
            page.navigate(servers.url())
            wait_for_view(page, "the token prompt", lambda v: v["login"] and not v["clients"])
            type_into(page, "token-input", "wrong")
            page.evaluate("document.querySelector('#login form').requestSubmit()")
            wait_for_view(page, "a refusal", lambda v: v["loginError"] == "That token was refused.")
            type_into(page, "token-input", "s3cret")
            page.evaluate("document.querySelector('#login form').requestSubmit()")
            see_bob_connected(page)
            bob.send(b"LOG second line from tcp\n")
            wait_for_view(page, "a live line", lambda v: "second line from tcp" in v["tail"])

            # Kept for the tab's session: a reload asks no more.
            page.navigate(servers.url())
            reloaded = wait_for_view(
                page, "live again", lambda v: row(v, "bob").get("lines") == "2"
            )
            assert not reloaded["login"]
            # ?token= works too, and leaves the address bar.
            other = browser.new_page()
            other.navigate(servers.url("/?token=s3cret"))
            wait_for_view(other, "bob", lambda v: "second line from tcp" in v["tail"])
            assert other.evaluate("location.search") == ""
        # The 401s before the token was given are the only failed loads.
        assert [p for p in page.problems() if "status of 401" not in p] == []
        assert other.problems() == []


def test_a_page_of_1000_clients(browser: Browser) -> None:
    """Every row drawn; the time from navigation to the table painted is kept in
    window.logatronTimings.table (benchmarks/bench_page.py measures it)."""
    registry = Registry()
    names = [f"client-{i:04d}" for i in range(1000)]
    fill(registry, names, lines=5, retained=300)
    with serving("asyncio", registry=registry) as servers:
        page = browser.new_page()
        page.navigate(servers.url())
        shown = wait_for_view(page, "a thousand rows", lambda v: len(v["order"]) == 1000)
        assert (shown["connected"], shown["retained"]) == ("700", "300")
        assert shown["order"][0] == "client-0999" and shown["order"][-1] == "client-0000"
        took = page.wait_for(
            lambda: page.evaluate("window.logatronTimings.table"), "the timing", PAGE_TIMEOUT
        )
        assert 0 < took < 5000  # ms; under 1 s on a quiet machine (benchmarks/README.md)
        assert page.problems() == []


def test_a_burst_is_drawn_in_full_and_the_tail_stays_bounded(browser: Browser) -> None:
    with serving("asyncio") as servers, tcp_client(servers.tcp_port) as bob:
        bob.send(b"IAM bob\nPING\n")
        bob.expect(b"PONG\n")
        page = browser.new_page()
        page.navigate(servers.url())
        wait_for_view(page, "live", lambda v: v["status"] == "live" and "bob" in v["clients"])

        bob.send(b"".join(b"LOG burst %d\n" % i for i in range(1200)) + b"PING\n")
        bob.expect(b"PONG\n")
        wait_for_view(page, "the whole burst", lambda v: "bob #1200 burst 1199" in v["tail"])
        tail = "document.getElementById('tail')"
        assert page.evaluate(f"{tail}.childElementCount") == 500  # TAIL_LINES
        assert "burst 699\n" not in view(page)["tail"]
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
        wait_for_view(page, "one more line", lambda v: "bob #1201 one more" in v["tail"])
        assert page.evaluate(top_line) == reading
        assert page.evaluate(f"{tail}.scrollTop") <= 100
        assert page.problems() == []


def test_a_lagging_tail_catches_up(browser: Browser) -> None:
    """Past its queue bound the tail drops events (a "lagged" notice says how many): the
    page says so and its table does not keep the state those events changed."""
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
            lambda v: row(v, "bob").get("state") == "count=start" and v["status"] == "live",
        )
        bob.send(b"".join(b"SET count %d\n" % i for i in range(200)) + b"LOG done\nPING\n")
        bob.expect(b"PONG\n")
        final = wait_for_view(
            page,
            "count=199 and the notice",
            lambda v: (
                row(v, "bob").get("state") == "count=199"
                and "events missed (this page fell behind)" in v["tail"]
            ),
        )
        assert final["types"].count("lagged") >= 1
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
                and row(v, "bob").get("state") == "mood=back"
                and "bob #2 while the page was away" in v["tail"]
            ),
        )
        bob.send(b"LOG after the restart\n")
        final = wait_for_view(page, "the live tail", lambda v: "after the restart" in v["tail"])
        assert final["tail"].count("first line") == 1  # resumed after the last seq shown
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
