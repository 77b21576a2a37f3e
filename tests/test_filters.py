"""Server-side filters: client name patterns and RE2 include/exclude, alone and over HTTP
(``/api/recent``, a client's log, the WebSocket tail) on asyncio and trio."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
import re2
from hypothesis import assume, example, given
from hypothesis import strategies as st

import test_cli_consumer as cli
from logatron_anyio import Consumer
from logatron_anyio._filters import (
    MAX_CLIENT_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_REGEX_CHARS,
    ClientFilter,
    FilterError,
    LineFilter,
    client_filter,
    line_filter,
)
from logatron_anyio._tail import newest_runs
from logatron_core import LogEntry, Logged, Registry
from test_cli import talk
from test_http import RawTail, get_json, ping, serving, tcp_client

# -- the filters alone ---------------------------------------------------------------------------


def test_client_patterns_are_shell_style() -> None:
    matches = client_filter(["worker-*", "ci-??", "db-[12]"])
    assert matches is not None and matches.exact is None
    names = ["worker-1", "worker-", "ci-10", "ci-1", "db-1", "db-3", "web"]
    assert [name for name in names if matches(name)] == ["worker-1", "worker-", "ci-10", "db-1"]
    assert client_filter([]) is None
    exact = client_filter(["web"])
    assert exact is not None and exact.exact == "web"
    several = client_filter(["web", "db"])
    assert several is not None and several.exact is None


@pytest.mark.parametrize(
    ("patterns", "reason"),
    [
        (["a b"], "invalid client name or pattern"),
        (["a/b"], "invalid client name or pattern"),
        (["x" * 129], "invalid client name or pattern"),  # too long for a name
        (["*" * (MAX_CLIENT_PATTERN_CHARS + 1)], f"at most {MAX_CLIENT_PATTERN_CHARS} characters"),
        ([f"w{i}" for i in range(MAX_PATTERNS + 1)], f"at most {MAX_PATTERNS} client patterns"),
    ],
)
def test_client_patterns_past_the_limits_are_refused(patterns: list[str], reason: str) -> None:
    with pytest.raises(FilterError, match=reason):
        client_filter(patterns)
    assert client_filter(["*" * MAX_CLIENT_PATTERN_CHARS]) is not None
    assert client_filter([f"w{i}" for i in range(MAX_PATTERNS)]) is not None


def test_a_line_passes_any_include_and_no_exclude() -> None:
    lines = line_filter(["ERROR", "^warn"], ["healthcheck"])
    assert lines is not None
    messages = ("ok", "ERROR one", "warn: x", "ERROR healthcheck", "x warn", "ERROR two")
    assert lines.kept(messages) == [1, 2, 5]
    assert line_filter([], []) is None
    only_exclude = line_filter([], ["ok"])
    assert only_exclude is not None and only_exclude.kept(messages) == [1, 2, 3, 4, 5]
    assert only_exclude.kept(("a", "b")) is None  # every line passes
    assert lines.kept(("nothing", "here")) == []


def test_a_run_is_cut_into_runs_of_consecutive_seqs() -> None:
    lines = line_filter(["keep"], [])
    assert lines is not None
    run = Logged("a", 10, 1.5, ("keep 1", "drop", "keep 2", "keep 3", "drop"), True)
    assert lines.runs(run) == [
        Logged("a", 10, 1.5, ("keep 1",), True),
        Logged("a", 12, 1.5, ("keep 2", "keep 3"), True),
    ]
    whole = Logged("a", 1, 1.0, ("keep", "keep"))
    assert lines.runs(whole)[0] is whole
    assert lines.runs(Logged("a", 1, 1.0, ("drop",))) == []


@pytest.mark.parametrize(
    ("include", "exclude", "reason"),
    [
        (["(a"], [], "include pattern '\\(a': missing \\)"),
        ([], ["(a)\\1"], "exclude pattern .*: invalid escape sequence"),
        (["a{1001}"], [], "invalid repetition size"),
        (["\\pL{60}"], [], "pattern too large"),  # past REGEX_MAX_MEM
        (["a" * (MAX_REGEX_CHARS + 1)], [], f"at most {MAX_REGEX_CHARS} characters"),
        ([str(i) for i in range(MAX_PATTERNS + 1)], [], f"at most {MAX_PATTERNS} include"),
        ([], [str(i) for i in range(MAX_PATTERNS + 1)], f"at most {MAX_PATTERNS} exclude"),
        ([f"{i}\\pL{{40}}" for i in range(MAX_PATTERNS)], [], "too large together"),
    ],
)
def test_patterns_re2_refuses_or_past_the_limits_are_refused(
    include: list[str], exclude: list[str], reason: str
) -> None:
    with pytest.raises(FilterError, match=reason):
        line_filter(include, exclude)


def test_patterns_at_the_limits_are_accepted() -> None:
    assert line_filter(["a" * MAX_REGEX_CHARS], []) is not None
    assert line_filter([str(i) for i in range(MAX_PATTERNS)], ["x"] * MAX_PATTERNS) is not None
    assert line_filter(["\\pL{50}"], []) is not None
    assert line_filter([f"{i}\\pL{{40}}" for i in range(2)], []) is not None


def test_a_pathological_pattern_matches_in_linear_time() -> None:
    """(a+)+$ on a^n b backtracks 2^n times in Python's re; RE2 answers at once."""
    lines = line_filter(["(a+)+$"], [])
    assert lines is not None
    assert lines.kept(("a" * 50_000 + "b",) * 20) == []


_PATTERN_PIECES = ["a", "b", " ", ".", "*", "+", "?", "|", "^", "$", "(", ")", "[^a]", "\\s"]
_PATTERN_PIECES += ["\\W", "\\b", "\\B", "\\A", "\\z", "\\C", "(?i)", "(?s)", "(?-m)", "\\n"]


@given(
    patterns=st.lists(
        st.lists(st.sampled_from(_PATTERN_PIECES), max_size=6).map("".join), min_size=1, max_size=3
    ),
    messages=st.lists(st.text(alphabet="aAb \t", max_size=6), min_size=1, max_size=8),
)
@example(patterns=["^b"], messages=["a", "b"])
@example(patterns=["a$"], messages=["a", "b"])
@example(patterns=["\\Ab"], messages=["a", "b"])
@example(patterns=["a\\Cb"], messages=["a", "b"])
@example(patterns=["a\\sb"], messages=["a", "b"])
@example(patterns=["(?s)a.b"], messages=["a", "b"])
@example(patterns=["$"], messages=["", "a"])
def test_lines_joined_match_as_lines_alone(patterns: list[str], messages: list[str]) -> None:
    """The joined search (one RE2 program over the run) keeps exactly what line-by-line RE2
    matching keeps, both as include and as exclude."""
    try:
        include = LineFilter(patterns, [])
    except FilterError:
        assume(False)
        return
    options = re2.Options()
    options.log_errors = False
    compiled = [re2.compile(pattern, options) for pattern in patterns]
    expected = [i for i, m in enumerate(messages) if any(c.search(m) for c in compiled)]
    assert include.kept(messages) == expected
    exclude = LineFilter([], patterns)
    kept = exclude.kept(messages)
    rest = [i for i in range(len(messages)) if i not in expected]
    assert (list(range(len(messages))) if kept is None else kept) == rest


# -- over HTTP -----------------------------------------------------------------------------------

UPGRADE = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
)


async def fleet(servers: Any) -> None:
    """worker-1, worker-2, ci-10 and web, each with a few lines."""
    for name in ("worker-1", "worker-2", "ci-10", "web"):
        async with tcp_client(servers, name) as client:
            await client.send(
                f"LOG {name} started\nLOG {name} ERROR disk full\nLOG {name} healthcheck ERROR\n"
                f"LOG {name} done\n".encode()
            )
            await ping(client)


def messages(body: Any) -> list[str]:
    return [entry["message"] for entry in body["entries"]]


@pytest.mark.anyio
async def test_recent_with_client_patterns_and_line_filters() -> None:
    async with serving() as servers:
        await fleet(servers)
        port = servers.http_port
        status, body = await get_json(port, "/api/recent?client=worker-*&include=ERROR")
        assert status == 200
        assert messages(body) == [
            "worker-1 ERROR disk full",
            "worker-1 healthcheck ERROR",
            "worker-2 ERROR disk full",
            "worker-2 healthcheck ERROR",
        ]
        query = "client=worker-2&client=ci-??&include=ERROR&include=done&exclude=healthcheck"
        status, body = await get_json(port, f"/api/recent?{query}")
        assert messages(body) == [
            "worker-2 ERROR disk full",
            "worker-2 done",
            "ci-10 ERROR disk full",
            "ci-10 done",
        ]
        seqs = [entry["seq"] for entry in body["entries"]]
        assert seqs == [6, 8, 10, 12] and body["last_seq"] == 16
        status, body = await get_json(port, "/api/recent?include=ERROR&limit=3&since=2")
        assert messages(body) == [
            "worker-1 healthcheck ERROR",
            "worker-2 ERROR disk full",
            "worker-2 healthcheck ERROR",
        ]
        # A pattern matching no one is an empty answer; one unknown name is still a 404.
        assert messages((await get_json(port, "/api/recent?client=db-*"))[1]) == []
        assert (await get_json(port, "/api/recent?client=db"))[0] == 404


@pytest.mark.anyio
async def test_a_clients_log_is_filtered_too() -> None:
    async with serving() as servers:
        await fleet(servers)
        status, body = await get_json(
            servers.http_port, "/api/clients/web/log?include=%28%3Fi%29error&exclude=health"
        )
        assert status == 200 and body["client"] == "web"
        assert messages(body) == ["web ERROR disk full"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ([("include", "(a")], "include pattern '(a': missing ): (a"),
        ([("exclude", "(a)\\1")], "invalid escape sequence: \\1"),
        ([("include", "\\pL{1000}")], "pattern too large"),
        ([("include", "a" * (MAX_REGEX_CHARS + 1))], "characters long"),
        ([("exclude", str(i)) for i in range(MAX_PATTERNS + 1)], "exclude patterns"),
        ([("client", "a b")], "invalid client name or pattern"),
    ],
)
@pytest.mark.anyio
async def test_refused_filters_get_400_with_the_reason(
    query: list[tuple[str, str]], reason: str
) -> None:
    async with serving() as servers, tcp_client(servers, "web") as web:
        await ping(web)
        routes = [("/api/recent", ()), ("/api/tail", UPGRADE)]
        if query[0][0] != "client":
            routes.append(("/api/clients/web/log", ()))
        for path, headers in routes:
            status, body = await get_json(servers.http_port, f"{path}?{urlencode(query)}", *headers)
            assert status == 400, path
            assert body["code"] == "bad-request"
            assert reason in body["error"]


async def tail_messages(tail: RawTail, count: int) -> list[dict[str, Any]]:
    return [await tail.next_message() for _ in range(count)]


def summary(message: dict[str, Any]) -> tuple[str, str]:
    return message["type"], message.get("message", message["client"])


@pytest.mark.anyio
async def test_a_pattern_tail_follows_clients_that_connect_later() -> None:
    async with serving() as servers:
        await fleet(servers)
        target = "/api/tail?client=worker-*&include=ERROR&exclude=health&since=0"
        async with RawTail.open(servers.http_port, target) as tail:
            backlog = await tail.messages_until_current()
            assert [summary(m) for m in backlog[:-1]] == [
                ("log", "worker-1 ERROR disk full"),
                ("log", "worker-2 ERROR disk full"),
            ]
            assert backlog[-1] == {"type": "current", "last_seq": 16}
            async with tcp_client(servers, "web") as web, tcp_client(servers, "worker-9") as w9:
                await web.send(b"LOG web ERROR not followed\n")
                await ping(web)
                await w9.send(b"LOG quiet\nLOG ERROR late\nLOG ERROR healthcheck\nSET k v\n")
                await ping(w9)
                live = await tail_messages(tail, 3)
                assert [summary(m) for m in live] == [
                    ("ready", "worker-9"),
                    ("log", "ERROR late"),
                    ("set", "worker-9"),
                ]
                assert live[1]["seq"] == 19
            assert summary(await tail.next_message()) == ("close", "worker-9")


@pytest.mark.anyio
async def test_a_pattern_tail_reports_the_gap_of_its_clients_only() -> None:
    async with serving(Registry(buffer_size=2)) as servers:
        async with tcp_client(servers, "noisy") as noisy, tcp_client(servers, "w-1") as w1:
            await w1.send(b"LOG w 1\nLOG w 2\nLOG w 3\n")  # w 1 is evicted
            await ping(w1)
            await noisy.send(b"".join(b"LOG n %d\n" % i for i in range(20)))
            await ping(noisy)
            async with RawTail.open(servers.http_port, "/api/tail?client=w-*&since=0") as tail:
                messages = await tail.messages_until_current()
        assert [m.get("missed", m.get("message")) for m in messages] == [1, "w 2", "w 3", None]


@pytest.mark.anyio
async def test_consumer_recent_and_tail_take_patterns_and_filters() -> None:
    async with serving() as servers:
        await fleet(servers)
        consumer = Consumer(servers.url)
        entries = await consumer.recent(
            ["worker-*", "web"], include=["ERROR"], exclude=["healthcheck"]
        )
        assert [entry.message for entry in entries] == [
            "worker-1 ERROR disk full",
            "worker-2 ERROR disk full",
            "web ERROR disk full",
        ]
        seen: list[str] = []
        with anyio.fail_after(10):
            async with consumer.tail(["ci-*"], include=["done"], since=0) as events:
                async for event in events:
                    if isinstance(event, LogEntry):
                        seen.append(event.message)
                        break
        assert seen == ["ci-10 done"]


def test_client_filter_remembers_a_bounded_number_of_names() -> None:
    matches = ClientFilter(["w*"])
    for i in range(5000):
        assert matches(f"w{i}")
    assert len(matches._cache) <= 4096


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_recent_takes_patterns_and_filters() -> None:
    with cli.servers() as served:
        for name in ("worker-1", "worker-2", "web", "db"):
            talk(served.tcp_port, f"IAM {name}\nLOG {name} ERROR disk\nLOG {name} error "
                 f"healthcheck\nLOG {name} fine\nPING\n".encode())  # fmt: skip
        found = cli.run("recent", "worker-*", "db", "--include", "ERROR", "--url", served.url)
        assert found.returncode == 0, found.stderr
        assert [line.split("  ")[-1] for line in found.stdout.splitlines()] == [
            "worker-1 ERROR disk",
            "worker-2 ERROR disk",
            "db ERROR disk",
        ]
        insensitive = cli.run(
            *("recent", "w*", "--include", "error", "-i", "--exclude", "HEALTH", "-i"),
            *("--json", "--url", served.url),
        )
        assert [json.loads(line)["message"] for line in insensitive.stdout.splitlines()] == [
            "worker-1 ERROR disk",
            "worker-2 ERROR disk",
            "web ERROR disk",
        ]
        refused = cli.run("recent", "--include", "(a", "--url", served.url)
        assert refused.returncode == 1
        assert refused.stderr.strip().endswith("include pattern '(a': missing ): (a")
        assert "refused by" in refused.stderr
        bad = cli.run("recent", "a b", "--url", served.url)
        assert bad.returncode == 2 and "invalid client name or pattern" in bad.stderr


def words(line: str) -> str:
    """A printed line without its date and time, single-spaced."""
    return " ".join(line.split()[2:])


def test_cli_tail_follows_a_pattern_with_filters() -> None:
    with cli.servers() as served:
        talk(served.tcp_port, b"IAM worker-1\nLOG ERROR old\nLOG fine\nPING\n")
        args = ("worker-*", "--include", "ERROR", "--exclude", "ignored", "--url", served.url)
        with cli.tail(*args) as (process, out, err):
            assert words(out.next()) == "worker-1 #1 ERROR old"
            talk(served.tcp_port, b"IAM web\nLOG ERROR not followed\nPING\n")
            data = b"LOG fine\nLOG ERROR ignored\nLOG ERROR new\n"
            with cli.connected(served.tcp_port, "worker-2", data):
                assert words(out.next()) == "worker-2 * connected"
                assert words(out.next()) == "worker-2 #6 ERROR new"
            assert words(out.next()) == "worker-2 * disconnected"
            assert cli.stop(process) == 0
            assert err.rest() == "-- live --\n"


# -- tail=N --------------------------------------------------------------------------------------


def test_newest_runs_takes_the_newest_lines_that_pass() -> None:
    runs = [Logged("a", 1, 1.0, ("x1", "y2", "x3")), Logged("b", 4, 2.0, ("x4", "y5"))]
    xs = line_filter(["x"], [])
    assert newest_runs(runs, 2, xs) == [Logged("a", 3, 1.0, ("x3",)), Logged("b", 4, 2.0, ("x4",))]
    assert newest_runs(runs, 3, xs) == [
        Logged("a", 1, 1.0, ("x1",)),
        Logged("a", 3, 1.0, ("x3",)),
        Logged("b", 4, 2.0, ("x4",)),
    ]
    assert newest_runs(runs, 9, xs) == newest_runs(runs, 3, xs)
    assert newest_runs(runs, 0, xs) == []


@pytest.mark.anyio
async def test_tail_n_gives_the_newest_entries_on_every_route() -> None:
    async with serving(Registry(buffer_size=3)) as servers:
        await fleet(servers)
        port = servers.http_port
        body = (await get_json(port, "/api/recent?tail=3&include=ERROR"))[1]
        assert messages(body) == [
            "ci-10 healthcheck ERROR",
            "web ERROR disk full",
            "web healthcheck ERROR",
        ]
        body = (await get_json(port, "/api/recent?tail=2&client=worker-*&exclude=done"))[1]
        assert messages(body) == ["worker-2 ERROR disk full", "worker-2 healthcheck ERROR"]
        body = (await get_json(port, "/api/clients/web/log?tail=1"))[1]
        assert messages(body) == ["web done"]
        assert (await get_json(port, "/api/recent?tail=-1"))[0] == 400
        # worker-1's first line was evicted: no gap notice once tail=N leaves it out anyway.
        async with RawTail.open(port, "/api/tail?client=worker-1&since=0&tail=2") as tail:
            backlog = await tail.messages_until_current()
        assert [m.get("message") for m in backlog] == [
            "worker-1 healthcheck ERROR",
            "worker-1 done",
            None,
        ]
        async with RawTail.open(port, "/api/tail?client=worker-1&since=0&tail=5") as tail:
            backlog = await tail.messages_until_current()
        assert backlog[0] == {"type": "gap", "missed": 1}
        assert len(backlog) == 5
