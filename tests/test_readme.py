"""README.md's examples are run as written, against servers on ephemeral ports.

Every ```python block runs with the default ports (2212, 2213) replaced by the test servers'
ports; the shell tour runs its `nc` line as a socket write and its `logatron` lines as the
command itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from logatron_anyio import HttpServer, LogatronServer
from logatron_core import Registry

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 20


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def marked_block(marker: str) -> str:
    text = README.read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None, f"no sh block after the {marker} marker"
    return match.group(1)


@dataclass
class Running:
    registry: Registry
    tcp_port: int
    http_port: int
    portal: anyio.from_thread.BlockingPortal

    def read(self, query: str) -> object:
        """Evaluate ``query`` against the registry on the servers' own thread."""
        registry = self.registry
        return self.portal.call(lambda: eval(query, {"registry": registry}))


@pytest.fixture
def running() -> Iterator[Running]:
    registry = Registry()
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        tcp = LogatronServer(port=0, registry=registry)
        http = HttpServer(registry, port=0)
        tcp_future, _ = portal.start_task(tcp.serve)
        http_future, _ = portal.start_task(http.serve)
        try:
            yield Running(registry, tcp.port, http.port, portal)
        finally:
            tcp_future.cancel()
            http_future.cancel()


def localise(code: str, running: Running) -> str:
    return code.replace("2212", str(running.tcp_port)).replace("2213", str(running.http_port))


def test_readme_has_the_examples_this_file_runs() -> None:
    assert len(blocks("python")) == 6
    assert "pip install -e '.[test]' && python -bb -m pytest" in README.read_text()
    serve = marked_block("serve-command")
    assert "pip install ." in serve and serve.strip().endswith("logatron serve")


@pytest.mark.parametrize("index", range(6))
def test_python_example_runs(index: int, running: Running) -> None:
    code = localise(blocks("python")[index], running)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})
    if "LogatronHandler" in code:
        messages = running.read("[e.message for e in registry.log('worker-1')]")
        assert isinstance(messages, list)
        assert "boom" in messages and "ZeroDivisionError: division by zero" in messages
    if "connect(" in code:
        assert running.read("registry.state('worker-1')") == {"phase": "build"}


def run_command(line: str, running: Running) -> subprocess.CompletedProcess[str]:
    """One `printf ... | logatron ...` line of the tour, with the test servers' addresses."""
    stdin = ""
    if "|" in line:
        printf, line = (part.strip() for part in line.split("|", 1))
        stdin = shlex.split(printf)[1].encode().decode("unicode_escape")
    argv = shlex.split(line.split("#", 1)[0])
    assert argv[0] == "logatron"
    command = argv[1]
    extra = ["--port", str(running.tcp_port)] if command == "send" else []
    if command in ("clients", "state", "recent", "tail"):
        extra = ["--url", f"http://127.0.0.1:{running.http_port}"]
    argv = [sys.executable, "-m", "logatron_anyio", *argv[1:], *extra]
    if command != "tail":
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        try:
            assert tail.stdout is not None
            first = tail.stdout.readline()  # the backlog's first line arrives at once
        finally:
            tail.terminate()
            out, err = tail.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(argv, tail.returncode, first + out, err)


def test_the_thirty_second_tour(running: Running) -> None:
    lines = [line for line in marked_block("tour").splitlines() if line.strip()]
    nc_line, *commands = lines
    printf, nc = (part.strip() for part in nc_line.split("|"))
    assert nc == "nc 127.0.0.1 2212"
    with socket.create_connection(("127.0.0.1", running.tcp_port), timeout=TIMEOUT) as peer:
        peer.sendall(shlex.split(printf)[1].encode().decode("unicode_escape").encode())
    deadline = time.monotonic() + TIMEOUT
    while running.read(
        "[e.message for e in registry.log('bob')] if 'bob' in registry.names() else []"
    ) != ["hello"]:
        assert time.monotonic() < deadline, "bob's line never arrived"
        time.sleep(0.05)
    outputs = {}
    for line in commands:
        result = run_command(line, running)
        assert result.returncode in (0, -15), (line, result.stderr)
        outputs[line.split("#")[0].strip()] = result.stdout
    assert running.read("[e.message for e in registry.log('worker-1')]") == ["step 1", "step 2"]
    assert running.read("registry.state('worker-1')") == {"phase": "build"}
    clients_output = outputs["logatron clients"]
    assert "bob" in clients_output and "worker-1" in clients_output
    assert "hello" in outputs["logatron recent"] and "step 2" in outputs["logatron recent"]
    assert "hello" in outputs["logatron tail"]


def test_the_usage_error_example() -> None:
    """The example of a usage error is what the command prints."""
    after = README.read_text().split("<!-- usage-error -->\n", 1)[1]
    example = re.match(r"(?:    .*\n|\n)+", after)
    assert example is not None
    command, *expected = textwrap.dedent(example[0]).strip().splitlines()
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[0] == "logatron"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")}
    result = subprocess.run(
        [sys.executable, "-m", "logatron_anyio", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == expected
