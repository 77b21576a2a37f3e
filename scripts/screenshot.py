"""Remake the README's picture of the status page (docs/status-page.png) from a real run.

Starts ``python -m logatron_anyio serve`` (this checkout's ``src``, free ports on 127.0.0.1),
feeds it a few dozen clients over TCP for a few seconds (a fixed seed: the same fleet every
time; some of them disconnect and are retained), opens the page in headless Chromium
(``tests/browser.py``), selects two clients, and saves the screenshot. Needs
``/usr/bin/chromium``.

    python scripts/screenshot.py [--out docs/status-page.png] [--seconds 40]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser, Page  # noqa: E402

HOST = "127.0.0.1"
WIDTH, HEIGHT = 1360, 860
TIMEOUT = 15.0

WORKER_LINES = [
    "picked job {job} from queue {queue}",
    "job {job}: fetched 3 inputs in {ms} ms",
    "job {job}: done in {ms} ms, status=ok",
    "heartbeat ok, load {load}",
    "WARN job {job}: retrying upstream call (attempt 2 of 5)",
    "ERROR job {job}: upstream timed out after 30000 ms",
]
CI_LINES = [
    "step {step}/9: running tests (shard {shard})",
    "collected {n} items",
    "tests/test_api.py::test_filters[{shard}] PASSED",
    "step {step}/9 finished in {ms} ms",
]


def start_server() -> tuple[subprocess.Popen[str], int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGATRON_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    command = [sys.executable, "-m", "logatron_anyio", "serve", "--host", HOST, "--port", "0"]
    server = subprocess.Popen(
        [*command, "--http-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    ports: list[int] = []
    while len(ports) < 2:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the server did not start")
        found = re.search(r":(\d+)/?\s*$", line)
        if found and line.startswith("logatron:"):
            ports.append(int(found[1]))
    return server, ports[0], ports[1]


class Fleet:
    """A few dozen clients: workers, CI runners, databases, a gateway."""

    def __init__(self, port: int, rng: random.Random) -> None:
        self.rng = rng
        self.port = port
        names = [f"worker-{i:02d}" for i in range(1, 19)]
        names += [f"ci-runner-{i}" for i in range(1, 7)]
        names += ["db-primary", "db-replica-1", "db-replica-2", "gateway", "scheduler"]
        names += [f"edge-{city}" for city in ("ams", "fra", "iad", "sfo", "sin", "syd")]
        self.socks: dict[str, socket.socket] = {}
        for name in names:
            sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
            state = f"SET version 1.{rng.randint(2, 4)}.{rng.randint(0, 9)}\n"
            if name.startswith("worker"):
                state += f"SET queue {rng.choice(['images', 'mail', 'billing'])}\n"
            if name.startswith("ci"):
                state += f"SET branch {rng.choice(['main', 'i13', 'release/2.0'])}\n"
            sock.sendall(f"IAM {name}\n{state}".encode())
            self.socks[name] = sock

    def line(self, name: str) -> str:
        rng = self.rng
        values = {
            "job": rng.randint(1000, 9999),
            "queue": rng.choice(["images", "mail", "billing"]),
            "ms": rng.randint(3, 900),
            "load": f"{rng.random() * 2:.2f}",
            "step": rng.randint(1, 9),
            "shard": rng.randint(1, 8),
            "n": rng.randint(80, 400),
        }
        if name.startswith("ci"):
            template = rng.choice(CI_LINES)
        elif name.startswith("worker"):
            weights = [30, 30, 30, 10, 4, 2]
            template = rng.choices(WORKER_LINES, weights)[0]
        elif name.startswith("db"):
            template = "checkpoint complete: wrote {n} buffers ({ms} ms)"
        else:
            template = 'GET /api/v1/items/{job} 200 {ms}ms "Mozilla/5.0 (X11; Linux x86_64)"'
        return template.format(**values)

    def tick(self, busy: float) -> None:
        for name, sock in list(self.socks.items()):
            count = self.rng.randint(0, int(busy * (4 if name.startswith("edge") else 2)))
            lines = "".join(f"LOG {self.line(name)}\n" for _ in range(count))
            if name.startswith("ci") and self.rng.random() < 0.05:
                lines += f"SET step {self.rng.randint(1, 9)}/9\n"
            if lines:
                sock.sendall(lines.encode())

    def leave(self, name: str) -> None:
        sock = self.socks.pop(name)
        sock.sendall(f"LOG {name} shutting down: drained\n".encode())
        sock.close()

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


def wait(page: Page, expression: str, what: str) -> None:
    page.wait_for(lambda: page.evaluate(expression), what, TIMEOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the fleet runs")
    args = parser.parse_args()
    rng = random.Random(13)
    server, tcp_port, http_port = start_server()
    try:
        fleet = Fleet(tcp_port, rng)
        with (
            tempfile.TemporaryDirectory() as tmp,
            Browser(Path(tmp) / "profile", Path(tmp) / "chromium.log") as browser,
        ):
            page = browser.new_page()
            page.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            )
            page.navigate(f"http://{HOST}:{http_port}/")
            wait(page, "document.getElementById('status').textContent === 'live'", "live")
            began = time.monotonic()
            ticks = 0
            while time.monotonic() - began < args.seconds:
                busy = 1.5 + 1.2 * ((ticks // 40) % 3)  # the rate steps up and down
                fleet.tick(busy)
                if ticks == 100:
                    for name in ("worker-17", "worker-18", "ci-runner-6"):
                        fleet.leave(name)
                if ticks == 150:  # select worker-07, then ci-runner-2 beside it
                    for name, ctrl in (("worker-07", "false"), ("ci-runner-2", "true")):
                        page.evaluate(
                            f"document.querySelector('#clients tr[data-client=\"{name}\"]')"
                            ".dispatchEvent(new MouseEvent('click',"
                            f" {{bubbles: true, ctrlKey: {ctrl}}}))"
                        )
                ticks += 1
                time.sleep(0.1)
            wait(page, "document.querySelectorAll('#detail-log div').length > 5", "the log shown")
            time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(args.out)
            problems = page.problems()
            if problems:
                raise RuntimeError(f"the page reported problems: {problems}")
        fleet.close()
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
