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
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

import logatron_anyio
from logatron_anyio import HttpServer, LogatronServer
from logatron_core import Registry
from test_cli import Lines

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
    assert marked_block("test-command").strip() == "scripts/test"
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


TIME_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}")


def indented_block(marker: str) -> list[str]:
    """The lines of the indented block after ``<!-- marker -->``, dedented."""
    after = README.read_text().split(f"<!-- {marker} -->\n", 1)[1]
    block = re.match(r"(?:    .*\n|\n)+", after)
    assert block is not None, f"no indented block after the {marker} marker"
    return textwrap.dedent(block[0]).strip().splitlines()


def shown_outputs(marker: str) -> dict[str, list[str]]:
    """A ``$ command`` / output block: each command's lines, times as ``TIME``."""
    outputs: dict[str, list[str]] = {}
    for line in indented_block(marker):
        if line.startswith("$ "):
            command = line[2:]
            outputs[command] = []
        else:
            outputs[command].append(TIME_RE.sub("TIME", line))
    return outputs


@dataclass
class Shell:
    """bash in a new directory whose ``.venv/bin/activate`` puts a ``logatron`` on PATH (the
    command of this tree): PATH has none until the tour activates it, as in a new terminal."""

    cwd: Path
    env: dict[str, str]
    activate: str

    def command(self, line: str) -> list[str]:
        return ["bash", "-c", f"set -e\n{self.activate}\n{line}"]


def shell_for_the_tour(tmp_path: Path, running: Running, activate: str) -> Shell:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n')
    logatron = bin_dir / "logatron"
    logatron.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m logatron_anyio "$@"\n')
    logatron.chmod(0o755)
    dirs = os.environ["PATH"].split(os.pathsep)
    path = os.pathsep.join(d for d in dirs if not shutil.which("logatron", path=d))
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")}
    # The package this test imports, wherever the shell starts (PYTHONPATH may be relative).
    source = str(Path(logatron_anyio.__file__).resolve().parent.parent)
    env.update(
        PATH=path,
        PYTHONPATH=os.pathsep.join([source, *env.get("PYTHONPATH", "").split(os.pathsep)]),
        LOGATRON_PORT=str(running.tcp_port),
        LOGATRON_URL=f"http://127.0.0.1:{running.http_port}",
    )
    return Shell(tmp_path, env, activate)


def run_line(shell: Shell, line: str) -> subprocess.CompletedProcess[str]:
    """One line of the tour in bash; killed with its children if it outlasts TIMEOUT."""
    with subprocess.Popen(
        shell.command(line),
        cwd=shell.cwd,
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise AssertionError(f"{line!r} did not end within {TIMEOUT} s: {err}") from None
    return subprocess.CompletedProcess(line, process.returncode, out, err)


def test_the_thirty_second_tour_verbatim(running: Running, tmp_path: Path) -> None:
    """The tour pasted as it is into a new terminal (the default ports replaced by the test
    servers': LOGATRON_PORT and LOGATRON_URL for the commands, 2212 in the nc line) prints
    what the README shows, times apart."""
    assert shutil.which("nc.openbsd"), "the tour needs netcat-openbsd (scripts/test installs it)"
    activate, nc_line, *commands = marked_block("tour").strip().splitlines()
    assert activate.split("#")[0].strip() == ". .venv/bin/activate"
    shell = shell_for_the_tour(tmp_path, running, activate)
    assert run_line(Shell(tmp_path, shell.env, ""), "logatron --version").returncode == 127
    result = run_line(shell, nc_line.replace("2212", str(running.tcp_port)))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    shown = shown_outputs("tour-output")
    *once, follow = commands
    got = {}
    for line in once:
        result = run_line(shell, line)
        assert (result.returncode, result.stderr) == (0, ""), line
        got[line] = [TIME_RE.sub("TIME", out) for out in result.stdout.splitlines()]
    assert running.read("[e.message for e in registry.log('worker-1')]") == ["step 1", "step 2"]
    assert running.read("registry.state('bob')") == {"mood": "happy"}
    assert {command: got[command] for command in shown if command in got} == {
        command: lines for command, lines in shown.items() if command in got
    }
    # tail runs until stopped: its lines, then the notice on stderr, then Ctrl-C.
    command = follow.split("#")[0].strip()
    expected = shown[command]
    with subprocess.Popen(
        shell.command(command),
        cwd=tmp_path,
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as tail:
        try:
            out, err = Lines(tail.stdout), Lines(tail.stderr)
            lines = [TIME_RE.sub("TIME", out.next()) for _ in expected[:-1]]
            assert [*lines, err.next()] == expected
        finally:
            os.killpg(tail.pid, signal.SIGINT)
            assert tail.wait(TIMEOUT) == 0


def test_the_serve_output() -> None:
    """What the quick start says serve prints is what it prints (with ports 0, the real ones)."""
    shown = indented_block("serve-output")
    with subprocess.Popen(
        [sys.executable, "-m", "logatron_anyio", "serve", "--port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as server:
        try:
            out = Lines(server.stdout)
            lines = [out.next() for _ in shown]
        finally:
            server.send_signal(signal.SIGINT)
            assert server.wait(TIMEOUT) == 0
        assert server.stderr is not None
        assert b"Traceback" not in server.stderr.read()
    assert [re.sub(r":\d+", ":PORT", line) for line in lines] == [
        line.replace(":2212", ":PORT").replace(":2213", ":PORT") for line in shown
    ]
    assert indented_block("serve-output") == shown


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
