"""A small headless-Chromium driver for tests: the Chrome DevTools Protocol over a pipe.

Chromium started with ``--remote-debugging-pipe`` reads CDP messages (JSON, each ended by a NUL
byte) on its file descriptor 3 and writes its answers and events on descriptor 4. The process
is spawned with ``os.posix_spawn``, whose file actions put our pipe ends on exactly those two
numbers (``subprocess`` cannot renumber descriptors without a ``preexec_fn``, which is unsafe
with the threads these tests run), in a process group of its own so that ``close()`` can kill
the whole browser, helpers included.

Every wait has a deadline; ``close()`` always leaves no process, pipe or file open.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["CHROMIUM", "Browser", "BrowserError", "Page"]

CHROMIUM = "/usr/bin/chromium"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1280,800",
    "--remote-debugging-pipe",
)

CALL_TIMEOUT = 10.0  # one CDP call
CLOSE_TIMEOUT = 5.0  # Browser.close, before SIGKILL

T = TypeVar("T")


class BrowserError(Exception):
    """Chromium failed, went away, answered a call with an error or did not answer in time."""


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or more (never 3 or 4), ``fd`` closed."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


class Browser:
    """One headless Chromium process and its CDP pipe. Use as a context manager."""

    def __init__(
        self,
        user_data_dir: Path,
        log_path: Path,
        executable: str = CHROMIUM,
        flags: Sequence[str] = (),
    ) -> None:
        """Start Chromium with FLAGS and ``flags`` (such as
        ``--ignore-certificate-errors-spki-list=…`` to trust a test server's key)."""
        if not os.access(executable, os.X_OK):
            raise FileNotFoundError(
                f"{executable} not found: these tests need Chromium; install it with "
                "`apt-get update && apt-get install -y chromium`"
            )
        self.log_path = log_path
        self.events: list[dict[str, Any]] = []  # every CDP event received, in order
        self._buffer = bytearray()
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self.pid: int | None = None
        self._reaped = False
        self._to_browser: int | None = None
        self._from_browser: int | None = None

        child_reads, self._to_browser = map(_high_fd, os.pipe())
        self._from_browser, child_writes = map(_high_fd, os.pipe())
        os.set_blocking(self._to_browser, False)  # so that a write never outlasts its deadline
        try:
            argv = [executable, *FLAGS, *flags, f"--user-data-dir={user_data_dir}", "about:blank"]
            # Crash reports and caches go under the profile, not the user's home.
            env = dict(os.environ)
            env["XDG_CONFIG_HOME"] = str(user_data_dir / "xdg-config")
            env["XDG_CACHE_HOME"] = str(user_data_dir / "xdg-cache")
            self.pid = os.posix_spawn(
                executable,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT, 0o644),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                    (os.POSIX_SPAWN_DUP2, child_reads, 3),
                    (os.POSIX_SPAWN_DUP2, child_writes, 4),
                ],
                setpgroup=0,
            )
        except BaseException:
            self.close()
            raise
        finally:
            os.close(child_reads)
            os.close(child_writes)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, size: int = 2000) -> str:
        """The end of Chromium's stdout and stderr, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    # -- the protocol ----------------------------------------------------------------------------

    @staticmethod
    def _ready(fd: int, event: int, timeout: float) -> bool:
        """Whether ``fd`` is ready for ``event`` (or closed by the peer) within ``timeout``."""
        poll = select.poll()
        poll.register(fd, event)
        return bool(poll.poll(max(0, int(timeout * 1000) + 1)))

    def _send(self, message: dict[str, Any], deadline: float) -> None:
        fd = self._to_browser
        if fd is None:
            raise BrowserError("the browser is closed")
        data = memoryview(json.dumps(message).encode() + b"\0")
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"Chromium did not read {message.get('method')} in time")
            if self._ready(fd, select.POLLOUT, remaining):
                try:
                    written = os.write(fd, data)
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise BrowserError(f"Chromium exited:\n{self.log_tail()}") from None
                data = data[written:]

    def _receive(self, deadline: float) -> bool:
        """Read what Chromium wrote (until ``deadline``); False if nothing came in time."""
        fd = self._from_browser
        if fd is None:
            raise BrowserError("the browser is closed")
        if not self._ready(fd, select.POLLIN, deadline - time.monotonic()):
            return False
        data = os.read(fd, 1 << 20)
        if not data:
            raise BrowserError(f"Chromium exited:\n{self.log_tail()}")
        self._buffer += data
        while (end := self._buffer.find(b"\0")) >= 0:
            message = json.loads(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
            if "id" in message:
                self._replies[message["id"]] = message
            else:
                self.events.append(message)
        return True

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one CDP command and return its result; raises BrowserError on error or timeout."""
        deadline = time.monotonic() + timeout
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._send(message, deadline)
        while ident not in self._replies:
            if not self._receive(deadline):
                raise BrowserError(f"no answer to {method} within {timeout:g} s")
        reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def take_events(self, method: str, session: str | None = None) -> list[dict[str, Any]]:
        """Remove and return the events of ``method`` (for ``session``) received so far."""
        taken = [
            event
            for event in self.events
            if event.get("method") == method
            and (session is None or event.get("sessionId") == session)
        ]
        if taken:
            self.events = [event for event in self.events if event not in taken]
        return taken

    def wait_for_event(
        self, method: str, session: str | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        """Remove and return the first event of ``method``, waiting for it up to ``timeout``."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for index in range(checked, len(self.events)):
                event = self.events[index]
                if event.get("method") == method and (
                    session is None or event.get("sessionId") == session
                ):
                    return self.events.pop(index)
            checked = len(self.events)
            if not self._receive(deadline) and time.monotonic() >= deadline:
                raise BrowserError(f"no {method} event within {timeout:g} s")

    def new_page(self) -> Page:
        """A new tab, attached (flat session) with the Page, Runtime and Log domains on."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, str(session["sessionId"]))
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        return page

    # -- the end ---------------------------------------------------------------------------------

    def _exited(self, timeout: float) -> bool:
        """Whether the main process has exited (within ``timeout``), without reaping it."""
        assert self.pid is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def close(self) -> None:
        """Ask Chromium to quit, kill what is left of its process group, close the pipes.

        (Chromium's crashpad handlers run in a session of their own and quit by themselves
        once the browser is gone.)
        """
        if self.pid is not None and not self._reaped:
            if self._to_browser is not None and not self._exited(0):
                with contextlib.suppress(BrowserError, OSError):
                    self.call("Browser.close", timeout=CLOSE_TIMEOUT)
                self._exited(CLOSE_TIMEOUT)
            # The main process is a zombie or alive: its group id is still ours to kill.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self._reaped = True
        for name in ("_to_browser", "_from_browser"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


class Page:
    """One tab, driven through its flat CDP session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def take_events(self, method: str) -> list[dict[str, Any]]:
        return self.browser.take_events(method, self.session)

    def wait_for_event(self, method: str, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        return self.browser.wait_for_event(method, self.session, timeout)

    def navigate(self, url: str, timeout: float = CALL_TIMEOUT) -> None:
        """Open ``url`` and wait for its load event (its scripts have run by then)."""
        self.take_events("Page.loadEventFired")  # any left from an earlier page
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if a promise); raises on exceptions."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        """What the page shows (``document.body.innerText``), '' before there is a body."""
        value = self.evaluate("document.body ? document.body.innerText : ''")
        return str(value or "")

    def wait_for(
        self, check: Callable[[], T | None], what: str, timeout: float = 15.0, every: float = 0.1
    ) -> T:
        """Poll ``check`` until it returns something other than None/False; fail after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}; the page shows:\n"
                    f"{self.text()}\nconsole and errors: {self.problems()}"
                )
            time.sleep(every)

    def wait_for_text(self, *needles: str, timeout: float = 15.0) -> str:
        """Wait until the page text holds every needle; returns that text."""

        def check() -> str | None:
            text = self.text()
            return text if all(needle in text for needle in needles) else None

        return self.wait_for(check, f"the page to show {needles!r}", timeout)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and failed loads reported for this page."""
        found: list[str] = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                description = details.get("exception", {}).get("description")
                found.append(f"exception: {description or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [str(arg.get("value", arg.get("description"))) for arg in params["args"]]
                found.append("console.error: " + " ".join(args))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
        return found
