"""The route table: patterns, fields, 404 and 405 with Allow, public routes (no I/O)."""

from __future__ import annotations

import pytest

from logatron_anyio._api import Api
from logatron_anyio._routes import ApiRequest, HttpError, Reply, Route, RouteTable
from logatron_anyio._tail import TailOptions
from logatron_core import Registry


async def _answer(request: ApiRequest) -> Reply:
    return Reply(200, b"{}")


def _status(error: pytest.ExceptionInfo[HttpError]) -> tuple[int, dict[str, str]]:
    return error.value.reply.status, dict(error.value.reply.headers)


TABLE = RouteTable(
    [
        Route("GET", "/healthz", _answer, public=True),
        Route("GET", "/api/clients", _answer),
        Route("GET", "/api/clients/{name}", _answer),
        Route("GET", "/api/clients/{name}/log", _answer),
        Route("DELETE", "/api/clients/{name}", _answer),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "pattern", "params"),
    [
        ("GET", "/api/clients", "/api/clients", {}),
        ("HEAD", "/api/clients", "/api/clients", {}),
        ("GET", "/api/clients/bob", "/api/clients/{name}", {"name": "bob"}),
        ("DELETE", "/api/clients/bob", "/api/clients/{name}", {"name": "bob"}),
        ("GET", "/api/clients/b%C3%A9b/log", "/api/clients/{name}/log", {"name": "béb"}),
        ("GET", "/api/clients/a%2Fb", "/api/clients/{name}", {"name": "a/b"}),
    ],
)
def test_a_route_matches_its_method_and_pattern(
    method: str, path: str, pattern: str, params: dict[str, str]
) -> None:
    route, got = TABLE.lookup(method, path).resolve(path)
    assert (route.pattern, got) == (pattern, params)


@pytest.mark.parametrize(
    "path", ["/nowhere", "/api/clients/", "/api/clients//log", "/api/clients/a/b/c", "/api"]
)
def test_no_route_is_404(path: str) -> None:
    for method in ("GET", "POST"):
        with pytest.raises(HttpError) as error:
            TABLE.lookup(method, path).resolve(path)
        assert _status(error) == (404, {})


def test_a_known_path_with_another_method_is_405_with_allow() -> None:
    with pytest.raises(HttpError) as error:
        TABLE.lookup("POST", "/api/clients").resolve("/api/clients")
    assert _status(error) == (405, {"allow": "GET, HEAD"})
    with pytest.raises(HttpError) as error:
        TABLE.lookup("PUT", "/api/clients/bob").resolve("/api/clients/bob")
    assert _status(error) == (405, {"allow": "GET, HEAD, DELETE"})


def test_public_is_per_path_whatever_the_method() -> None:
    assert TABLE.lookup("GET", "/healthz").public
    assert TABLE.lookup("POST", "/healthz").public
    assert not TABLE.lookup("GET", "/api/clients").public
    assert not TABLE.lookup("GET", "/nowhere").public


def test_the_first_matching_route_answers() -> None:
    async def other(request: ApiRequest) -> Reply:
        return Reply(204, b"")

    table = RouteTable([Route("GET", "/a/{x}", _answer)])
    table.add(Route("GET", "/a/b", other))
    route, params = table.lookup("GET", "/a/b").resolve("/a/b")
    assert (route.handler, params) == (_answer, {"x": "b"})


def test_the_api_table_is_every_documented_route() -> None:
    api = Api(Registry(), page=b"", tail_options=TailOptions())
    assert [(route.method, route.pattern, route.public) for route in api.routes()] == [
        ("GET", "/healthz", True),
        ("GET", "/", True),  # the page asks for the token itself
        ("GET", "/metrics", False),
        ("GET", "/api/clients", False),
        ("GET", "/api/clients/{name}", False),
        ("GET", "/api/clients/{name}/log", False),
        ("GET", "/api/clients/{name}/state", False),
        ("GET", "/api/recent", False),
        ("GET", "/api/tail", False),
    ]
