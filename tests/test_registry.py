"""The registry against a plain model, and its promises: copies, errors, ordered events."""

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from logatron_core import (
    ClientClosed,
    ClientExpired,
    ClientReady,
    Logged,
    NameTaken,
    NoSuchClient,
    Registry,
    RegistryEvent,
    StateSet,
    TooManyClients,
    TooManyKeys,
)

BUFFER, MAX_CLIENTS, MAX_KEYS, RETENTION, MAX_RETAINED = 3, 2, 2, 5.0, 2
NAMES = st.sampled_from(["a", "b", "c", "d"])


@dataclass
class ModelClient:
    connected: bool = True
    disconnected_at: float | None = None
    log: list[tuple[int, str]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    evicted: int = 0
    evicted_seqs: list[int] = field(default_factory=list)


class RegistryMachine(RuleBasedStateMachine):
    """Random connect/log/set/disconnect/reconnect/clock steps against a dictionary model."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry(
            buffer_size=BUFFER,
            max_clients=MAX_CLIENTS,
            max_state_keys=MAX_KEYS,
            retention_seconds=RETENTION,
            max_retained=MAX_RETAINED,
        )
        self.events: list[RegistryEvent] = []
        self.registry.subscribe(self.events.append)
        self.expected_events: list[RegistryEvent] = []
        self.model: dict[str, ModelClient] = {}
        self.retained: list[str] = []  # oldest first
        self.now = 1000.0
        self.seq = 0

    def expire(self) -> None:
        while self.retained:
            oldest = self.model[self.retained[0]]
            assert oldest.disconnected_at is not None
            if len(self.retained) <= MAX_RETAINED and self.now - oldest.disconnected_at < RETENTION:
                break
            name = self.retained.pop(0)
            del self.model[name]
            self.expected_events.append(ClientExpired(name, self.now))

    @rule(name=NAMES)
    def connect(self, name: str) -> None:
        self.expire()
        client = self.model.get(name)
        connected = sum(c.connected for c in self.model.values())
        if client is not None and client.connected:
            with pytest.raises(NameTaken):
                self.registry.connect(name, self.now)
            return
        if connected >= MAX_CLIENTS:
            with pytest.raises(TooManyClients):
                self.registry.connect(name, self.now)
            return
        self.registry.connect(name, self.now)
        if client is None:
            self.model[name] = ModelClient()
        else:
            self.retained.remove(name)
            client.connected, client.disconnected_at = True, None
        self.expected_events.append(ClientReady(name, self.now))

    @rule(name=NAMES, messages=st.lists(st.sampled_from(["x", "", "y z"]), max_size=5))
    def log(self, name: str, messages: list[str]) -> None:
        client = self.model.get(name)
        if client is None or not client.connected:
            return
        self.registry.append(name, messages, self.now)
        if messages:
            self.expected_events.append(Logged(name, self.seq + 1, self.now, tuple(messages)))
        for message in messages:
            self.seq += 1
            client.log.append((self.seq, message))
        client.evicted += max(0, len(client.log) - BUFFER)
        client.evicted_seqs += [seq for seq, _ in client.log[:-BUFFER]]
        del client.log[:-BUFFER]

    @rule(name=NAMES, key=st.sampled_from(["k1", "k2", "k3"]), value=st.sampled_from(["", "v"]))
    def set_state(self, name: str, key: str, value: str) -> None:
        client = self.model.get(name)
        if client is None or not client.connected:
            return
        if key not in client.state and len(client.state) >= MAX_KEYS:
            with pytest.raises(TooManyKeys):
                self.registry.set_state(name, key, value, self.now)
            return
        self.registry.set_state(name, key, value, self.now)
        client.state[key] = value
        self.expected_events.append(StateSet(name, key, value, self.now))

    @rule(name=NAMES)
    def disconnect(self, name: str) -> None:
        client = self.model.get(name)
        if client is None:
            return
        self.registry.disconnect(name, self.now)
        if client.connected:
            client.connected, client.disconnected_at = False, self.now
            self.retained.append(name)
            self.expected_events.append(ClientClosed(name, self.now))
        self.expire()

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.9, 6.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds
        self.registry.expire(self.now)
        self.expire()

    @invariant()
    def matches_the_model(self) -> None:
        registry = self.registry
        assert registry.names() == sorted(self.model)
        assert registry.last_seq == self.seq
        stats = registry.stats
        assert stats.connected == sum(c.connected for c in self.model.values())
        assert stats.retained == len(self.retained)
        oldest = self.model[self.retained[0]].disconnected_at if self.retained else None
        assert registry.next_deadline() == (None if oldest is None else oldest + RETENTION)
        for name, expected in self.model.items():
            info = registry.client(name)
            assert info.connected == expected.connected
            assert info.disconnected_at == expected.disconnected_at
            assert [(e.seq, e.message) for e in info.log] == expected.log
            assert info.state == expected.state
            assert info.lines_evicted == expected.evicted
            for limit in (0, 1, 2, BUFFER + 1):
                newest = registry.client(name, log_limit=limit).log
                assert [(e.seq, e.message) for e in newest] == expected.log[-limit:][:limit]
        assert self.events == self.expected_events
        for since in {0, self.seq // 2, max(0, self.seq - 2), self.seq}:
            buffered = sum(1 for c in self.model.values() for seq, _ in c.log if seq > since)
            snapshot = registry.snapshot(since)
            assert snapshot.missed == self.seq - since - buffered
            assert snapshot.last_seq == self.seq
            assert [e.seq for run in snapshot.runs for e in run.entries()] == sorted(
                seq for c in self.model.values() for seq, _ in c.log if seq > since
            )
            for name, expected in self.model.items():
                exact = sum(1 for seq in expected.evicted_seqs if seq > since)
                bound = registry.snapshot(since, name).missed
                assert bound >= exact and (bound == 0) == (exact == 0)
        recent = registry.recent()
        assert [e.seq for e in recent] == sorted(e.seq for e in recent)


RegistryMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_registry_matches_model = RegistryMachine.TestCase


def test_unknown_name_raises_no_such_client_a_key_error() -> None:
    registry = Registry()
    for query in (registry.client, registry.log, registry.state):
        with pytest.raises(NoSuchClient) as raised:
            query("ghost")
        assert isinstance(raised.value, KeyError)
    with pytest.raises(NoSuchClient):
        registry.recent(client="ghost")
    with pytest.raises(NoSuchClient):
        registry.snapshot(client="ghost")
    with pytest.raises(NoSuchClient):
        registry.newest("ghost", 1)


def test_results_are_copies() -> None:
    registry = Registry()
    registry.connect("a", 1.0)
    registry.set_state("a", "k", "v", 1.0)
    registry.append("a", ["one"], 1.0)
    registry.state("a")["k"] = "changed"
    registry.client("a").state["k"] = "changed"
    registry.client("a").log.clear()
    registry.log("a").clear()
    registry.stats.errors["x"] = 1
    assert registry.state("a") == {"k": "v"}
    assert [e.message for e in registry.log("a")] == ["one"]
    assert registry.stats.errors == {}


def test_a_raising_subscriber_breaks_neither_ingest_nor_other_subscribers() -> None:
    registry = Registry()
    seen: list[RegistryEvent] = []

    def broken(event: RegistryEvent) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    registry.subscribe(seen.append)
    registry.connect("a", 1.0)
    registry.append("a", ["x"], 2.0)
    assert [type(e) for e in seen] == [ClientReady, Logged]
    assert registry.stats.subscriber_errors == 2
    assert [e.message for e in registry.log("a")] == ["x"]


def test_unsubscribe_stops_events() -> None:
    registry = Registry()
    seen: list[RegistryEvent] = []
    unsubscribe = registry.subscribe(seen.append)
    registry.connect("a", 1.0)
    unsubscribe()
    unsubscribe()  # idempotent
    registry.connect("b", 1.0)
    assert len(seen) == 1 and registry.stats.subscribers == 0


def test_logged_event_expands_to_entries() -> None:
    registry = Registry()
    seen: list[RegistryEvent] = []
    registry.subscribe(seen.append)
    registry.connect("a", 1.0)
    registry.append("a", ["x", "y"], 2.0)
    logged = seen[-1]
    assert isinstance(logged, Logged) and logged.last_seq == 2
    assert [(e.client, e.seq, e.message) for e in logged.entries()] == [
        ("a", 1, "x"),
        ("a", 2, "y"),
    ]


def test_log_since_and_limit_page_forward() -> None:
    registry = Registry(buffer_size=10)
    registry.connect("a", 1.0)
    registry.append("a", [str(i) for i in range(1, 8)], 1.0)
    assert [e.seq for e in registry.log("a", since=2, limit=3)] == [3, 4, 5]
    assert [e.seq for e in registry.log("a", since=5)] == [6, 7]
    assert [run.first_seq for run in registry.newest("a", 10)] == [1]


def test_log_limit_keeps_the_newest_lines() -> None:
    registry = Registry()
    registry.connect("a", 1.0)
    registry.append("a", ["1", "2", "3"], 1.0)
    assert [e.message for e in registry.client("a", log_limit=2).log] == ["2", "3"]
    assert registry.clients(log_limit=0)["a"].log == []


def test_recent_merges_clients_by_seq() -> None:
    registry = Registry()
    registry.connect("a", 1.0)
    registry.connect("b", 1.0)
    registry.append("a", ["a1"], 1.0)
    registry.append("b", ["b1", "b2"], 2.0)
    registry.append("a", ["a2"], 3.0)
    assert [e.message for e in registry.recent()] == ["a1", "b1", "b2", "a2"]
    assert [e.message for e in registry.recent(since=2, client="b")] == ["b2"]
    assert [e.message for e in registry.recent(since=1, limit=2)] == ["b1", "b2"]


def test_zero_retention_forgets_on_close() -> None:
    for registry in (Registry(retention_seconds=0), Registry(max_retained=0)):
        registry.connect("a", 1.0)
        registry.disconnect("a", 2.0)
        assert registry.names() == []


def test_reconnect_resumes_the_retained_record() -> None:
    registry = Registry()
    registry.connect("a", 1.0)
    registry.append("a", ["before"], 1.0)
    registry.set_state("a", "k", "v", 1.0)
    registry.disconnect("a", 2.0)
    registry.connect("a", 3.0)
    registry.append("a", ["after"], 3.0)
    info = registry.client("a")
    assert [e.message for e in info.log] == ["before", "after"]
    assert info.state == {"k": "v"} and info.connected_at == 3.0


@pytest.mark.parametrize(
    "limits",
    [
        {"buffer_size": 0},
        {"max_clients": 0},
        {"max_state_keys": 0},
        {"retention_seconds": -1},
        {"max_retained": -1},
    ],
)
def test_invalid_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Registry(**limits)  # type: ignore[arg-type]


def test_follow_splits_lines_between_snapshot_and_events_exactly() -> None:
    registry = Registry(buffer_size=10)
    registry.connect("a", 1.0)
    registry.append("a", ["1", "2"], 1.0)
    seen: list[RegistryEvent] = []
    snapshot, unsubscribe = registry.follow(seen.append, since=1)
    registry.append("a", ["3"], 2.0)
    unsubscribe()
    registry.append("a", ["4"], 3.0)
    assert [e.seq for run in snapshot.runs for e in run.entries()] == [2]
    assert snapshot.last_seq == 2 and snapshot.missed == 0
    assert seen == [Logged("a", 3, 2.0, ("3",))]


def test_follow_of_a_client_not_yet_connected_is_empty() -> None:
    registry = Registry()
    snapshot, unsubscribe = registry.follow(lambda event: None, since=0, client="later")
    assert snapshot.runs == [] and snapshot.missed == 0
    assert registry.stats.subscribers == 1
    unsubscribe()


def test_expiry_is_an_event_and_sets_the_next_deadline() -> None:
    registry = Registry(retention_seconds=10.0)
    seen: list[RegistryEvent] = []
    registry.subscribe(seen.append)
    assert registry.next_deadline() is None
    registry.connect("a", 1.0)
    registry.disconnect("a", 2.0)
    assert registry.next_deadline() == 12.0
    registry.expire(11.9)
    assert registry.names() == ["a"]
    registry.expire(12.0)
    assert registry.names() == [] and registry.next_deadline() is None
    assert seen[-1] == ClientExpired("a", 12.0)
    assert registry.stats.clients_expired == 1
