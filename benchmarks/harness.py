"""Process plumbing shared by the benchmark scripts (``bench_core``, ``bench_server``,
``bench_tail``): which source tree a child imports, servers in their own processes, the load
generator, repeats interleaved over trees, medians, and the final JSON line.

Trees. A tree is a ``src`` directory. The one beside this file is labelled "after"; with
``--compare SRC`` another one, labelled "before", is measured in the same run. Every child that
imports Logatron gets ``PYTHONPATH=<its tree>`` and no ``LOGATRON_*`` variable, so neither a
venv's editable install nor the caller's environment decides what is measured. ``interleave``
runs repeat 1 as after, before; repeat 2 as before, after; and so on, so that a drift of a shared
machine hits both trees alike. The scripts then print each tree's medians and after/before.

Servers are started through their commands, ``python -m logatron_anyio serve`` and
``python -m logatron_sync`` (the same whether a tree has ``_cli.py`` or a ``cli/`` package),
never through the library's API, which a restructuring may change; their ports come from their
startup lines, their counters from ``/metrics``, and their CPU time from Linux's ``/proc``.

Run as a script, this module is the load generator (``flood_command``): CLIENTS threads, one
blocking socket each, send IAM, 64-byte LOG lines in 1 MiB ``sendall`` chunks, then PING, and
the time runs from the first byte sent to the last PONG, so every line counted was applied.
With ``tls_ca`` its sockets speak TLS (the server started with ``TlsFiles.server_options``;
``tls_files`` makes a CA and a certificate for 127.0.0.1 with ``trustme``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import pstats
import queue
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "CLIENTS",
    "HOST",
    "LINE",
    "LINE_BYTES",
    "RUN_TIMEOUT",
    "STARTUP_TIMEOUT",
    "Child",
    "Json",
    "Server",
    "TlsFiles",
    "Tree",
    "add_arguments",
    "children",
    "emit",
    "flood_command",
    "interleave",
    "log",
    "median",
    "print_profile",
    "profile_path",
    "read_reply",
    "run_json",
    "script_command",
    "tls_files",
    "trees",
]

Json = dict[str, Any]
_T = TypeVar("_T")

HOST = "127.0.0.1"
CLIENTS = 4
LINE_BYTES = 64
_BODY = b"LOG worker-7 handled request 4711 in 12.5 ms status=200 path=/api/v1"
LINE = _BODY[: LINE_BYTES - 1] + b"\n"  # the one LOG line of every benchmark (fixed content)
SEND_CHUNK_LINES = 16 * 1024  # 1 MiB of 64-byte lines per sendall

# Every wait is bounded: startup of a child, a whole run, a process's stop.
STARTUP_TIMEOUT = 30.0
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0

THIS_SRC = Path(__file__).resolve().parent.parent / "src"
_PORT_RE = re.compile(r":(\d+)/?\s*$")  # "... on 127.0.0.1:PORT" or "... http://127.0.0.1:PORT/"


# -- trees ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A source tree measured: its label ("after" or "before") and its ``src`` directory."""

    label: str
    src: Path
    compared: bool = False

    @property
    def tag(self) -> str:
        """What progress lines start with: the label when two trees are compared, else nothing."""
        return f"[{self.label}] " if self.compared else ""

    def env(self) -> dict[str, str]:
        """The environment of a child that imports this tree."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("LOGATRON_")}
        env["PYTHONPATH"] = str(self.src)
        return env

    def provides(self, module: str) -> bool:
        """Whether the tree has ``module`` (dotted) as a module file or a package."""
        path = self.src.joinpath(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def trees(compare: str | None) -> list[Tree]:
    """The trees of a run: this checkout's ``src`` ("after"), then ``compare`` ("before")."""
    if compare is None:
        return [Tree("after", THIS_SRC)]
    other = Path(compare).resolve()
    if not (other / "logatron_core" / "__init__.py").is_file():
        raise SystemExit(f"--compare {compare}: not a src directory (no logatron_core in it)")
    return [Tree("after", THIS_SRC, compared=True), Tree("before", other, compared=True)]


def add_arguments(parser: argparse.ArgumentParser, *, quick: str, repeats: str) -> None:
    """The options every script has: ``--quick``, ``--repeats N`` (None: the script's default)
    and ``--compare SRC``."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--repeats", type=int, metavar="N", help=repeats)
    parser.add_argument(
        "--compare",
        metavar="SRC",
        help="also measure the src directory SRC ('before') in the same run, repeats "
        "interleaved with this checkout's ('after'); prints both medians and after/before",
    )


# -- child processes -----------------------------------------------------------------------------


def script_command(script: str, *args: str) -> list[str]:
    """The command that runs the Python file ``script`` with ``args``."""
    return [sys.executable, os.path.abspath(script), *args]


class Child:
    """A child process, its stdout read line by line by a thread so that every wait is bounded.
    With ``quiet`` its stderr goes to a temporary file, shown when it fails."""

    def __init__(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None, quiet: bool = False
    ) -> None:
        self.command = list(command)
        self._stderr = tempfile.TemporaryFile() if quiet else None
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=None if env is None else dict(env),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line.decode().rstrip("\n"))
        self._lines.put(None)

    def failure(self, what: str) -> RuntimeError:
        """An error about this child, with the end of its stderr when that was kept."""
        text = f"{' '.join(self.command)}: {what}"
        if self._stderr is not None:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:].decode(errors="replace").strip()
            if tail:
                text += f"\n--- its stderr ---\n{tail}"
        return RuntimeError(text)

    def line(self, timeout: float) -> str:
        """The next stdout line. Raises RuntimeError after ``timeout`` s or at its end."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self.failure(f"no output in {timeout} s") from None
        if line is None:
            self._lines.put(None)
            raise self.failure("ended early")
        return line

    def json(self, timeout: float) -> Json:
        """The next stdout line, a JSON object."""
        result = json.loads(self.line(timeout))
        assert isinstance(result, dict)
        return result

    def stop(self) -> None:
        """Close stdin, SIGTERM, then SIGKILL: the process is gone when this returns. Idempotent."""
        process = self.process
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out (last first), whatever happens."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def run_json(command: Sequence[str], *, env: Mapping[str, str] | None = None) -> Json:
    """Run ``command`` to its end (at most RUN_TIMEOUT); its last stdout line, a JSON object."""
    result = subprocess.run(
        list(command),
        stdout=subprocess.PIPE,
        check=True,
        timeout=RUN_TIMEOUT,
        env=None if env is None else dict(env),
    )
    parsed = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert isinstance(parsed, dict)
    return parsed


# -- servers -------------------------------------------------------------------------------------


def server_command(
    kind: str, *, with_http: bool, profile_to: str | None, extra: Sequence[str] = ()
) -> list[str]:
    """The command of a server on ``kind`` ("asyncio", "trio" or "sync") listening on HOST, any
    free port; with HTTP (anyio only) on any free port as well, else TCP only; ``extra``
    options of ``logatron serve`` (``--data-dir DIR``; ``--tls-cert``/``--tls-key``, which
    ``python -m logatron_sync`` takes too) after the others."""
    python = [sys.executable]
    if profile_to:
        python += ["-m", "cProfile", "-o", profile_to]
    if kind == "sync":
        if with_http:
            raise ValueError("the sync server has no HTTP interface")
        return [*python, "-m", "logatron_sync", "--host", HOST, "--port", "0", *extra]
    http_options = ["--http-port", "0"] if with_http else ["--no-http"]
    return [
        *python,
        *("-m", "logatron_anyio", "serve", "--host", HOST, "--port", "0"),
        *http_options,
        *("--backend", kind),
        *extra,
    ]


def process_cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system) that the live threads of process ``pid`` have used, from
    Linux's ``/proc/<pid>/task/*/schedstat`` (nanoseconds); None without ``/proc``. A thread
    that ends in between drops out: a server's only other threads are idle workers."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                total += int(file.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended
        except (OSError, ValueError, IndexError):
            return None
    return total / 1e9


class Server(Child):
    """A Logatron server of ``tree`` in its own process (see ``server_command``), listening when
    the constructor returns: ``tcp_port`` and, ``with_http``, ``http_port`` read from its startup
    lines. Raises RuntimeError (with its stderr) if it does not start; it is stopped then."""

    def __init__(
        self,
        kind: str,
        tree: Tree,
        *,
        with_http: bool = False,
        profile_to: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        command = server_command(kind, with_http=with_http, profile_to=profile_to, extra=extra)
        super().__init__(command, env=tree.env(), quiet=True)
        try:
            ports = [self._port() for _ in range(2 if with_http else 1)]
        except BaseException:
            self.stop()
            raise
        self.tcp_port = ports[0]
        self.http_port = ports[-1] if with_http else 0
        self._cpu_began = process_cpu_seconds(self.process.pid)

    def _port(self) -> int:
        line = self.line(STARTUP_TIMEOUT)
        match = _PORT_RE.search(line)
        if not match:
            raise self.failure(f"no port in its startup line {line!r}")
        return int(match[1])

    def cpu_seconds(self) -> float:
        """The CPU time the server used since it listened. Raises RuntimeError without /proc."""
        now = process_cpu_seconds(self.process.pid)
        if now is None or self._cpu_began is None:
            raise RuntimeError("the CPU time of a server is read from /proc: Linux only")
        return now - self._cpu_began

    def metrics(self) -> dict[str, float]:
        """Every sample of its ``GET /metrics`` (name with labels -> value); needs HTTP."""
        connection = http.client.HTTPConnection(HOST, self.http_port, timeout=STOP_TIMEOUT)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        if response.status != 200:
            raise self.failure(f"GET /metrics answered {response.status}: {body[:200]!r}")
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@contextlib.contextmanager
def profile_path(save_to: str | None = None) -> Iterator[str]:
    """A temporary path for a server's ``cProfile`` output, copied to ``save_to`` at the end."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "server.prof")
        yield path
        if save_to:
            shutil.copyfile(path, save_to)


def print_profile(path: str, sorts: Sequence[str], limit: int) -> None:
    """The top ``limit`` functions of a profile on stderr, once per sort key."""
    stats = pstats.Stats(path, stream=sys.stderr)
    for key in sorts:
        stats.sort_stats(key).print_stats(limit)


# -- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and a server certificate for HOST with its key, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @property
    def server_options(self) -> tuple[str, ...]:
        """The options that turn TLS on for a server (``Server(..., extra=...)``)."""
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


def tls_files(directory: Path) -> TlsFiles:
    """Make a CA and a certificate for HOST with ``trustme`` (a test dependency) in
    ``directory``."""
    import trustme

    ca = trustme.CA()
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(files.ca)
    issued = ca.issue_cert(HOST)
    for blob in issued.cert_chain_pems:
        blob.write_to_path(files.cert, append=True)
    issued.private_key_pem.write_to_path(files.key)
    return files


# -- the load generator --------------------------------------------------------------------------


def flood_command(
    port: int | Sequence[int],
    *,
    lines: int | None = None,
    seconds: float | None = None,
    tls_ca: Path | None = None,
) -> list[str]:
    """The load generator against ``port``: CLIENTS clients each send ``lines`` lines, or as
    many as fit in ``seconds``, over TLS trusting ``tls_ca`` if given; with several ports,
    client ``i`` goes to the ``i % len``-th. Its output (``run_json``): ``{"lines": sent,
    "seconds": ...}``."""
    ports = [port] if isinstance(port, int) else list(port)
    args = ["--flood", ",".join(map(str, ports))]
    if lines is not None:
        args += ["--lines", str(lines)]
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    if tls_ca is not None:
        args += ["--tls-ca", str(tls_ca)]
    return script_command(__file__, *args)


def read_reply(sock: socket.socket) -> bytes:
    """One reply line from a blocking socket. Raises RuntimeError if none comes."""
    reply = b""
    for _ in range(1000):
        if reply.endswith(b"\n"):
            return reply
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("the server closed the connection")
        reply += data
    raise RuntimeError(f"no reply line: {reply[:100]!r}")


def _flood_client(
    index: int,
    port: int,
    lines: int | None,
    seconds: float | None,
    start: threading.Barrier,
    out: list[tuple[float, int]],
    tls: ssl.SSLContext | None = None,
) -> None:
    """One client: IAM, then ``lines`` lines (or as many as fit in ``seconds``), PING, PONG;
    the TLS handshake, if any, before the start."""
    view = memoryview(LINE * SEND_CHUNK_LINES)
    raw = socket.create_connection((HOST, port), timeout=RUN_TIMEOUT)
    sock = raw if tls is None else tls.wrap_socket(raw, server_hostname=HOST)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start.wait(STARTUP_TIMEOUT)
        sock.sendall(b"IAM bench-%d\n" % index)
        sent = 0
        began = time.perf_counter()
        limit = lines if lines is not None else 10**10
        while sent < limit:
            if seconds is not None and time.perf_counter() - began >= seconds:
                break
            count = min(SEND_CHUNK_LINES, limit - sent)
            sock.sendall(view[: count * LINE_BYTES])
            sent += count
        sock.sendall(b"PING done\n")
        reply = read_reply(sock)
        if reply != b"PONG done\n":
            raise RuntimeError(f"unexpected reply {reply!r}")
        out.append((time.perf_counter(), sent))


def _flood(ports: list[int], lines: int | None, seconds: float | None, tls_ca: str | None) -> None:
    start = threading.Barrier(CLIENTS + 1)
    finished: list[tuple[float, int]] = []
    tls = None if tls_ca is None else ssl.create_default_context(cafile=tls_ca)
    threads = [
        threading.Thread(
            target=_flood_client,
            args=(index, ports[index % len(ports)], lines, seconds, start, finished, tls),
            daemon=True,
        )
        for index in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    start.wait(STARTUP_TIMEOUT)
    began = time.perf_counter()
    for thread in threads:
        thread.join(RUN_TIMEOUT)
    if len(finished) != CLIENTS:
        raise SystemExit("a client failed")
    elapsed = max(end for end, _ in finished) - began
    total = sum(sent for _, sent in finished)
    print(json.dumps({"lines": total, "seconds": elapsed}), flush=True)


# -- repeats and results -------------------------------------------------------------------------


def alternating(items: Sequence[_T], repeats: int) -> Iterator[tuple[int, _T]]:
    """(repeat, item) for every item ``repeats`` times, the items' order reversed every other
    repeat, so that a machine's drift weighs on each alike."""
    for repeat in range(1, repeats + 1):
        for item in items if repeat % 2 else list(reversed(items)):
            yield repeat, item


def interleave(
    measured: Sequence[Tree],
    repeats: int,
    measure: Callable[[Tree], _T],
    describe: Callable[[_T], str],
    what: str,
) -> dict[str, list[_T]]:
    """``measure(tree)`` ``repeats`` times for every tree, the trees' order reversed every other
    repeat; each tree's results (by label) in repeat order. Logs a line per result:
    ``[tree] <what> <repeat>/<repeats>: <describe(result)>``."""
    results: dict[str, list[_T]] = {tree.label: [] for tree in measured}
    for repeat, tree in alternating(measured, repeats):
        result = measure(tree)
        log(f"{tree.tag}{what} {repeat}/{repeats}: {describe(result)}")
        results[tree.label].append(result)
    return results


def median(runs: Sequence[Mapping[str, Any]], key: str) -> float:
    """The median of ``run[key]`` over ``runs``."""
    return float(statistics.median(float(run[key]) for run in runs))


def log(text: str) -> None:
    """A progress line, on stderr."""
    print(text, file=sys.stderr, flush=True)


def emit(
    measured: Sequence[Tree],
    summaries: Mapping[str, Json],
    settings: Json,
    must_hold: Sequence[tuple[str, bool]] = (),
) -> None:
    """Print the final stdout line, one JSON object. With one tree: its summary and
    ``settings``, flat. With two: ``{"after": …, "before": …, "after_over_before": {every
    number both have: after / before}, "trees": {label: src}, …settings}``, after a table of
    both and their ratio on stderr. ``must_hold`` (text, met) is shown (as no verdict when
    ``settings["quick"]``) and kept under ``"must_hold"``."""
    settings = {
        **settings,
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    if len(measured) == 1:
        output: Json = {**summaries[measured[0].label]}
    else:
        after, before = summaries["after"], summaries["before"]
        ratios = {
            key: round(value / before[key], 3)
            for key, value in after.items()
            if isinstance(value, int | float) and isinstance(before.get(key), int | float)
            if before[key]
        }
        width = max(map(len, ratios), default=0)
        log(f"{'':{width}}  {'before':>14}  {'after':>14}  after/before")
        for key, ratio in ratios.items():
            log(f"{key:{width}}  {before[key]:>14,}  {after[key]:>14,}  {ratio:.3f}")
        trees_json = {tree.label: str(tree.src) for tree in measured}
        output = {"after": after, "before": before, "after_over_before": ratios}
        output["trees"] = trees_json
    heading = "must hold (a --quick run: no verdict)" if settings.get("quick") else "must hold"
    for text, met in must_hold:
        log(f"{heading}: {text}: {'met' if met else 'MISSED'}")
    if must_hold:
        output["must_hold"] = {text: met for text, met in must_hold}
    print(json.dumps({**output, **settings}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="The load generator of the benchmarks.")
    parser.add_argument("--flood", metavar="PORT[,PORT…]", required=True)
    parser.add_argument("--lines", type=int, help="lines per client")
    parser.add_argument("--seconds", type=float, help="or: send for this long")
    parser.add_argument("--tls-ca", metavar="FILE", help="connect over TLS, trusting FILE")
    args = parser.parse_args()
    ports = [int(port) for port in args.flood.split(",")]
    _flood(ports, args.lines, args.seconds, args.tls_ca)


if __name__ == "__main__":
    main()
