"""logatron_core is sans-IO: importing it must load no I/O or concurrency module."""

import json
import subprocess
import sys

IO_MODULES = {"socket", "_socket", "select", "selectors", "ssl", "asyncio", "threading"}
IO_MODULES |= {"anyio", "trio", "time", "h11", "wsproto"}


def test_importing_the_core_loads_no_io_module() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import logatron_core; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(output))
    assert "logatron_core._registry" in loaded  # the probe really imported the package
    assert loaded & IO_MODULES == set()
