"""Every async test runs on asyncio and on trio, through anyio's pytest plugin; TLS tests share
one set of certificates (``pki``)."""

import pytest

from pki import Pki


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The TLS tests' certificates (see tests/pki.py), made once per run."""
    return Pki(tmp_path_factory.mktemp("pki"))
