"""The repository's scripts: ``scripts/test`` (the README's test command) and
``scripts/system-packages``, run with stub programs on PATH (nothing is installed), and what
CI and the package ship beside them (.ci/run, LICENSE, the metadata)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30
# A program that writes its name and arguments to $CALLS and succeeds.
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'


def stubs(directory: Path, **programs: str) -> str:
    """A PATH of one directory: an executable per keyword (its body), and links to the few
    real programs the scripts and stubs use. Nothing else: no real apt-get, sudo or python."""
    directory.mkdir(exist_ok=True)
    for tool in ("sh", "dirname", "basename", "mkdir", "cp"):
        found = shutil.which(tool)
        assert found is not None, tool
        (directory / tool).symlink_to(found)
    for name, body in programs.items():
        path = directory / name.replace("_", "-")
        path.write_text(body)
        path.chmod(0o755)
    return str(directory)


def run_script(
    script: Path, args: list[str], path: str, calls: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env={"PATH": path, "CALLS": str(calls), "HOME": str(cwd)},
        stdin=subprocess.DEVNULL,  # not a terminal: sudo may not ask for a password
    )


PACKAGES = ROOT / "scripts" / "system-packages"
MISSING = ["no-such-program-x:pkg-x", "sh:dash", "no-such-program-y:pkg-y"]


def test_nothing_missing_installs_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    bin_dir = stubs(tmp_path / "bin", id="#!/bin/sh\necho 0\n", apt_get=RECORDER)
    result = run_script(PACKAGES, ["sh:dash"], bin_dir, calls, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not calls.exists()


# sudo without a password: `sudo -n true` succeeds, other commands are recorded, not run.
SUDO = '#!/bin/sh\n[ "$1" = -n ] && shift\n[ "$1" = true ] || echo "sudo $*" >> "$CALLS"\n'


@pytest.mark.parametrize(("uid", "sudo"), [("0", ""), ("1000", "sudo ")])
def test_missing_packages_are_installed_as_root(tmp_path: Path, uid: str, sudo: str) -> None:
    calls = tmp_path / "calls"
    bin_dir = stubs(tmp_path / "bin", id=f"#!/bin/sh\necho {uid}\n", sudo=SUDO, apt_get=RECORDER)
    result = run_script(PACKAGES, MISSING, bin_dir, calls, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"+ {sudo.replace('sudo', 'sudo -n')}apt-get install pkg-x pkg-y\n"
    assert calls.read_text().splitlines() == [
        f"{sudo}apt-get update -qq",
        f"{sudo}apt-get install -y -qq pkg-x pkg-y",
    ]


@pytest.mark.parametrize("can_sudo", [False, True])
def test_without_root_or_apt_get_one_line_names_the_packages(
    tmp_path: Path, can_sudo: bool
) -> None:
    calls = tmp_path / "calls"
    programs = {"id": "#!/bin/sh\necho 1000\n"}
    if can_sudo:  # root through sudo, but no apt-get: not Debian
        programs["sudo"] = "#!/bin/sh\nexit 0\n"
    else:  # sudo wants a password, and stdin is no terminal to ask on
        programs["sudo"] = "#!/bin/sh\nexit 1\n"
        programs["apt_get"] = RECORDER
    bin_dir = stubs(tmp_path / "bin", **programs)
    result = run_script(PACKAGES, MISSING, bin_dir, calls, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{PACKAGES}: the tests need Debian's package(s) pkg-x pkg-y: install them"
        " (apt-get install pkg-x pkg-y) and run this again\n"
    )
    assert not calls.exists()


# A python3 that records its calls: `-c` (is this a virtual environment?) answers $IN_VENV;
# `-m venv DIR` makes DIR/bin/activate, which puts a copy of this stub first on PATH.
PYTHON = """#!/bin/sh
echo "$0 $*" >> "$CALLS"
if [ "$1" = -c ]; then [ "$IN_VENV" = yes ]; exit; fi
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/python3"
    echo "PATH=\\"$PWD/$3/bin:\\$PATH\\"" > "$3/bin/activate"
fi
"""


@pytest.mark.parametrize("in_venv", [False, True])
def test_the_test_command_never_uses_the_systems_python(tmp_path: Path, in_venv: bool) -> None:
    """scripts/test in a copy of the repository: the system packages it needs are there (stub
    programs of those names), and python3 is a stub that says whether it is a venv's."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    calls = tmp_path / "calls"
    bin_dir = stubs(
        tmp_path / "bin",
        chromium=RECORDER,
        redis_server=RECORDER,
        **{"nc.openbsd": RECORDER},
        python3=PYTHON,
        python=PYTHON,
        id="#!/bin/sh\necho 1000\n",
    )
    env_calls = {"IN_VENV": "yes" if in_venv else "no"}
    result = subprocess.run(
        ["/bin/sh", "scripts/test", "-k", "x"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=repo,
        env={"PATH": bin_dir, "CALLS": str(calls), **env_calls},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    python = f"{bin_dir}/python" if in_venv else f"{repo}/.venv/bin/python"
    expected = [
        f"{bin_dir}/python3 -c import sys; sys.exit(sys.prefix == sys.base_prefix)",
        *([] if in_venv else [f"{bin_dir}/python3 -m venv .venv"]),
        f"{python} -m pip install --quiet --disable-pip-version-check -e .[test]",
        f"{python} -bb -m pytest -k x",
    ]
    assert calls.read_text().splitlines() == expected
    assert (repo / ".venv").exists() is not in_venv


def test_ci_runs_the_linters_then_exactly_the_readmes_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command test-command" in ci
    linters = ci.index("ruff check .\n"), ci.index("mypy\n")
    assert max(linters) < ci.index('eval "$test_command"')
    assert "apt-get" not in ci  # the test command installs what the tests need


def test_license_and_metadata() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the Logatron developers\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    classifiers = project["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    assert "urls" not in project  # none until there is a real one
