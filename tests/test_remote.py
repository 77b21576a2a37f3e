"""RemoteRegistry: front ends whose changes a shared store decides (here a model of it).

``SharedStore`` is what the Redis scripts do, in plain Python: claims, limits, seqs decided in
the order commands arrive, and one ordered stream of changes that every front end mirrors.
"""

from __future__ import annotations

from typing import Any

from logatron_core import (
    Append,
    Claim,
    ClientReady,
    ErrorCode,
    Lines,
    Logged,
    MemoryStore,
    NameTaken,
    RegistryRefusal,
    Release,
    RemoteRegistry,
    Session,
    SetKey,
    decode_run,
    encode_run,
)
from logatron_core._remote import Command

MAX_KEYS = 2


class SharedStore:
    def __init__(self, max_clients: int = 10) -> None:
        self.store = MemoryStore()
        self.max_clients = max_clients
        self.claims: dict[str, object] = {}
        self.changes: list[tuple[Any, ...]] = []

    def apply(self, front: RemoteRegistry, commands: list[Command]) -> None:
        for command in commands:
            try:
                self._apply(command)
            except RegistryRefusal as refusal:
                front.refused(command, refusal.code, refusal.detail, command.timestamp)

    def _apply(self, command: Command) -> None:
        store, name = self.store, command.name
        if isinstance(command, Claim):
            if name in self.claims:
                raise NameTaken(f"{name} is already connected")
            store.connect(name, command.timestamp, self.max_clients)
            self.claims[name] = command.session
            self.changes.append(("ready", name, command.timestamp))
        elif self.claims.get(name) is not command.session:
            return  # not the connection holding the claim: discarded
        elif isinstance(command, Append):
            stamp, cut = command.timestamp, command.truncated
            first, _ = store.append(name, Lines(command.messages), stamp, cut, 3)
            args = (first, stamp, command.messages, cut)
            self.changes.append(("logged", name, *args))
        elif isinstance(command, SetKey):
            store.set_state(name, command.key, command.value, MAX_KEYS)
            self.changes.append(("set", name, command.key, command.value, command.timestamp))
        elif isinstance(command, Release):
            del self.claims[name]
            store.disconnect(name, command.timestamp)
            self.changes.append(("closed", name, command.timestamp))

    def replicate(self, front: RemoteRegistry, start: int) -> int:
        for kind, name, *args in self.changes[start:]:
            getattr(front, f"apply_{kind}")(name, *args)
        return len(self.changes)


class FrontEnd:
    def __init__(self, shared: SharedStore) -> None:
        self.shared = shared
        self.registry = RemoteRegistry(buffer_size=3)
        self.seen = 0

    def sync(self) -> None:
        """One round of the adapter: send the commands, mirror what was decided."""
        mark, commands = self.registry.take()
        self.shared.apply(self.registry, commands)
        self.registry.committed(mark)

    def mirror(self) -> None:
        self.seen = self.shared.replicate(self.registry, self.seen)


def test_a_name_is_held_by_one_connection_across_front_ends() -> None:
    shared = SharedStore()
    a, b = FrontEnd(shared), FrontEnd(shared)
    on_a, on_b = Session(a.registry), Session(b.registry)
    on_a.receive_data(b"IAM x\nLOG from a\nPING\n", 1.0)
    assert on_a.data_to_send() == b""  # held until the shared store has it
    a.sync()
    assert on_a.data_to_send() == b"PONG\n"
    on_b.receive_data(b"IAM x\nLOG from b\n", 2.0)
    b.sync()
    assert on_b.closed and on_b.data_to_send().startswith(b"ERR name-taken ")
    for front in (a, b):
        front.mirror()
        assert [e.message for e in front.registry.log("x")] == ["from a"]
        assert front.registry.client("x").connected


def test_seqs_follow_the_order_the_shared_store_applied_and_mirrors_agree() -> None:
    shared = SharedStore()
    a, b = FrontEnd(shared), FrontEnd(shared)
    one, two = Session(a.registry), Session(b.registry)
    one.receive_data(b"IAM one\nLOG a1\n", 1.0)
    two.receive_data(b"IAM two\nLOG b1\nLOG b2\n", 1.0)
    b.sync()
    a.sync()
    one.receive_data(b"LOG a2\n", 2.0)
    a.sync()
    a.mirror()
    b.mirror()
    expected = [("two", 1, "b1"), ("two", 2, "b2"), ("one", 3, "a1"), ("one", 4, "a2")]
    for front in (a, b):
        recent = front.registry.recent()
        assert [(e.client, e.seq, e.message) for e in recent] == expected
        assert front.registry.snapshot(2).last_seq == 4


def test_a_refused_state_key_is_answered_late_and_the_connection_stays() -> None:
    shared = SharedStore()
    a = FrontEnd(shared)
    session = Session(a.registry)
    replies: list[bool] = []
    session.on_replies = lambda: replies.append(True)
    session.receive_data(b"IAM k\nSET a 1\nSET b 2\nSET c 3\nPING\n", 1.0)
    a.sync()
    assert session.data_to_send().splitlines() == [
        b"ERR too-many-keys k holds its limit of 2 keys",
        b"PONG",
    ]
    assert not session.closed and replies
    a.mirror()
    assert a.registry.state("k") == {"a": "1", "b": "2"}


def test_closing_releases_the_name_for_another_front_end() -> None:
    shared = SharedStore()
    a, b = FrontEnd(shared), FrontEnd(shared)
    first = Session(a.registry)
    first.receive_data(b"IAM x\n", 1.0)
    first.receive_data(b"", 2.0)
    a.sync()
    second = Session(b.registry)
    second.receive_data(b"IAM x\nLOG again\nPING\n", 3.0)
    b.sync()
    assert second.data_to_send() == b"PONG\n" and not second.closed
    b.mirror()
    events = [change[0] for change in shared.changes]
    assert events == ["ready", "closed", "ready", "logged"]
    assert b.registry.client("x").connected


def test_a_second_local_claim_is_refused_at_once() -> None:
    a = FrontEnd(SharedStore())
    first = Session(a.registry)
    first.receive_data(b"IAM x\n", 1.0)
    again = Session(a.registry)
    again.receive_data(b"IAM x\n", 1.0)
    assert again.closed and again.data_to_send().startswith(b"ERR name-taken ")
    assert a.registry.take()[1] == [Claim("x", 1.0, first)]


def test_a_claim_past_the_deployments_client_limit_is_refused_late() -> None:
    shared = SharedStore(max_clients=1)
    a = FrontEnd(shared)
    Session(a.registry).receive_data(b"IAM one\n", 1.0)
    late = Session(a.registry)
    late.receive_data(b"IAM two\nLOG lost\n", 1.0)
    a.sync()
    assert late.closed
    assert late.data_to_send().startswith(b"ERR %s " % ErrorCode.TOO_MANY_CLIENTS.value.encode())
    assert [change[1] for change in shared.changes] == ["one"]  # nothing of "two" stored


def test_the_adapter_is_told_when_commands_start_to_wait() -> None:
    front = FrontEnd(SharedStore())
    told: list[int] = []
    front.registry.on_queued = lambda: told.append(front.registry.mark)
    session = Session(front.registry)
    session.receive_data(b"IAM q\nLOG a\nLOG b\n", 1.0)
    session.receive_data(b"SET k v\n", 1.0)
    assert told == [0]  # once, when the first command was queued
    front.sync()
    session.receive_data(b"LOG c\n", 2.0)
    assert told == [0, 3]


def test_a_mirror_loaded_anew_serves_every_read() -> None:
    shared = SharedStore()
    a = FrontEnd(shared)
    Session(a.registry).receive_data(b"IAM x\nLOG one\n", 1.0)
    a.sync()
    a.mirror()
    loaded = MemoryStore()
    loaded.restore(shared.store.stored_client("x"), [], 2.0, keep_connected=True)
    loaded.restore_last_seq(shared.store.last_seq)
    a.registry.replace_mirror(loaded)
    assert a.registry.counts() == (1, 0) and a.registry.client("x").connected
    assert a.registry.log("x") == [] and a.registry.last_seq == 1
    a.registry.apply_logged("x", 2, 3.0, ("two",), False)
    assert [entry.seq for entry in a.registry.log("x")] == [2]


def test_a_run_travels_to_a_shared_store_as_its_bytes_and_back() -> None:
    front = FrontEnd(SharedStore())
    session = Session(front.registry)
    session.receive_data(b"IAM w\nLOG  one\r\nLOG two \nLOG \xff\nPING\n", 1.0)
    (_, claim_and_run) = front.registry.take()
    append = claim_and_run[1]
    assert isinstance(append, Append)
    form, data = encode_run(append.messages)
    assert data.startswith(b"LOG  one")  # the bytes as they came: nothing parsed
    assert decode_run(form, data, len(append.messages)) == (" one", "two", "\ufffd")
    for messages in [("a", "b"), ("with\nnewline", ""), ("\udcff",)]:
        form, data = encode_run(messages)
        assert decode_run(form, data, len(messages)) == messages


def test_a_cursor_from_a_front_end_further_ahead_is_followed_without_repeats() -> None:
    shared = SharedStore()
    a, b = FrontEnd(shared), FrontEnd(shared)
    session = Session(a.registry)
    session.receive_data(b"IAM w\nLOG one\nLOG two\nLOG three\n", 1.0)
    a.sync()
    a.mirror()
    cursor = a.registry.log("w")[1].seq  # a reader of a stopped after "two"
    events: list[Any] = []
    snapshot, _ = b.registry.follow(events.append, since=cursor)  # b has mirrored nothing yet
    assert (snapshot.runs, snapshot.last_seq, snapshot.missed) == ([], cursor, 0)
    session.receive_data(b"LOG four\n", 2.0)
    a.sync()
    b.mirror()  # the run up to "three", then "four": only what comes after the cursor
    logged = [event for event in events if isinstance(event, Logged)]
    assert [(run.first_seq, list(run.messages)) for run in logged] == [
        (cursor + 1, ["three"]),
        (cursor + 2, ["four"]),
    ]
    assert any(isinstance(event, ClientReady) for event in events)  # other events still come
