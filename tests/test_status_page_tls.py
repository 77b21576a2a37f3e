"""The status page over HTTPS in a real headless Chromium, with a read token given as
``?token=`` (its live tail then runs over WSS). Chromium trusts the test server's key through
``--ignore-certificate-errors-spki-list`` (the key's SHA-256 from tests/pki.py), nothing else:
a server with another key would still be refused.

What the page shows is read as its text, so these checks hold whatever its layout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import pytest

from browser import CHROMIUM, Browser, BrowserError, Page
from logatron_anyio import HttpServer, LogatronServer
from logatron_core import Authorizer, Registry, TokenGrant
from pki import Pki
from test_scenarios import Peer

POLICY = Authorizer(
    [
        TokenGrant.from_secret("r-secret", read=True),
        TokenGrant.from_secret("w-secret", write=("worker-*",)),
    ]
)


@pytest.fixture
def browser(tmp_path: Path, pki: Pki) -> Iterator[Browser]:
    spki = pki.server_spki_sha256()
    flags = [f"--ignore-certificate-errors-spki-list={spki}"]
    try:
        launched = Browser(tmp_path / "profile", tmp_path / "chromium.log", CHROMIUM, flags)
    except FileNotFoundError as error:  # a failure, never a skip (as in test_status_page)
        pytest.fail(str(error), pytrace=False)
    with launched:
        yield launched


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_status_page_over_https_with_a_token(browser: Browser, pki: Pki, backend: str) -> None:
    registry = Registry()
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        tcp = LogatronServer(
            port=0, registry=registry, ssl_context=pki.server_context(), authorizer=POLICY
        )
        http = HttpServer(registry, port=0, ssl_context=pki.server_context(), authorizer=POLICY)
        tcp_task, _ = portal.start_task(tcp.serve)
        http_task, _ = portal.start_task(http.serve)
        try:
            worker = Peer(tcp.port, ssl_context=pki.client_context())
            worker.send(b"IAM worker-1 w-secret\nSET phase build\nLOG first line over tls\n")
            assert worker.ping() == []
            page = browser.new_page()
            page.navigate(f"https://127.0.0.1:{http.port}/?token=r-secret")
            page.wait_for_text("worker-1", "first line over tls")
            worker.send(b"LOG a live line through wss\n")
            page.wait_for_text("a live line through wss")
            assert page.problems() == []
            assert page.evaluate("location.protocol") == "https:"
            worker.close()
        finally:
            http_task.cancel()
            tcp_task.cancel()


def submit_token(page: Page, token: str) -> None:
    """Type ``token`` into the page's prompt and submit it."""
    page.evaluate(f"document.getElementById('token-input').value = {json.dumps(token)}")
    page.evaluate("document.querySelector('#login form').requestSubmit()")


def login_error(page: Page) -> str:
    return str(page.evaluate("document.getElementById('login-error').textContent"))


def test_the_prompt_over_https_takes_a_read_token_only(browser: Browser, pki: Pki) -> None:
    registry = Registry()
    with anyio.from_thread.start_blocking_portal("trio") as portal:
        tcp = LogatronServer(port=0, registry=registry, authorizer=POLICY)
        http = HttpServer(registry, port=0, ssl_context=pki.server_context(), authorizer=POLICY)
        tcp_task, _ = portal.start_task(tcp.serve)
        http_task, _ = portal.start_task(http.serve)
        try:
            worker = Peer(tcp.port)
            worker.send(b"IAM worker-2 w-secret\nLOG behind a prompt\n")
            assert worker.ping() == []
            page = browser.new_page()
            page.navigate(f"https://127.0.0.1:{http.port}/")  # the shell is public
            page.wait_for_text("This server needs a token")
            submit_token(page, "w-secret")  # valid, but it may only write
            page.wait_for(lambda: login_error(page) == "That token may not read.", "a 403")
            submit_token(page, "r-secret")
            page.wait_for_text("worker-2", "behind a prompt")
            refusals = ("status of 401", "status of 403")  # before the right token: expected
            assert [p for p in page.problems() if not any(r in p for r in refusals)] == []
            worker.close()
        finally:
            http_task.cancel()
            tcp_task.cancel()


def test_a_page_from_a_server_with_another_key_is_refused(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")  # the same names, another CA and key
    registry = Registry()
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        http = HttpServer(registry, port=0, ssl_context=other.server_context())
        task, _ = portal.start_task(http.serve)
        try:
            page = browser.new_page()
            with pytest.raises(BrowserError, match="ERR_CERT"):
                page.navigate(f"https://127.0.0.1:{http.port}/")
        finally:
            task.cancel()
