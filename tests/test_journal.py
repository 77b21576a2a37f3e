"""The journal's promise: rebuild(persist(any history)) gives back the registry that made it."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from logatron_core import (
    Batch,
    Journal,
    Lines,
    MemoryStore,
    Registry,
    RegistryRefusal,
    Session,
    StoredClient,
    StoredRun,
    rebuild,
)
from logatron_core._connection import log_messages

NAMES = ["a", "b", "c"]


class Disk:
    """What a journal's adapter must do with a batch, as plain dictionaries (the SQLite
    adapter does the same in one transaction)."""

    def __init__(self) -> None:
        self.clients: dict[str, StoredClient] = {}
        self.runs: dict[tuple[str, int], StoredRun] = {}
        self.last_seq = 0

    def write(self, batch: Batch) -> None:
        for name in batch.forgotten:
            self.clients.pop(name, None)
            for key in [key for key in self.runs if key[0] == name]:
                del self.runs[key]
        for client in batch.clients:
            self.clients[client.name] = client
            for key in [key for key, run in self.runs.items() if key[0] == client.name]:
                if self.runs[key].last_seq < client.oldest_seq:
                    del self.runs[key]
        for run in batch.runs:
            self.runs[run.client, run.first_seq] = run
        self.last_seq = max(self.last_seq, batch.last_seq)


def snapshot_of(registry: Registry) -> dict[str, object]:
    """Everything a reader can see, with connected clients seen as they come back."""
    clients = {}
    for name, info in registry.clients().items():
        clients[name] = (
            info.connected_at,
            info.state,
            [(e.seq, e.timestamp, e.message, e.truncated) for e in info.log],
            info.lines_received,
            info.lines_evicted,
        )
    return {"last_seq": registry.last_seq, "clients": clients}


operation = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(NAMES)),
    st.tuples(
        st.just("log"), st.sampled_from(NAMES), st.integers(1, 7), st.booleans(), st.booleans()
    ),
    st.tuples(st.just("set"), st.sampled_from(NAMES), st.sampled_from(["k", "j", "m"])),
    st.tuples(st.just("close"), st.sampled_from(NAMES)),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 30.0])),
    st.tuples(st.just("flush"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=60))
@example(  # a client forgotten and connected again within a batch that then failed
    [
        *(("connect", name) for name in "abc"),
        *(("close", name) for name in "bac"),
        ("connect", "b"),
        ("flush", False),
    ]
)
@example(
    [
        ("connect", "a"),
        ("close", "a"),
        ("tick", 30.0),
        ("tick", 30.0),
        ("connect", "a"),  # forgotten, then back: one batch forgets it and writes it again
        ("flush", False),
    ]
)
def test_rebuild_of_what_was_persisted_equals_the_registry(ops: list[tuple[object, ...]]) -> None:
    store = MemoryStore()
    registry = Registry(
        store, buffer_size=5, max_state_keys=2, retention_seconds=50, max_retained=2
    )
    journal = Journal(registry, store)
    disk = Disk()
    now = 1000.0
    counter = 0
    for op in ops:
        kind = op[0]
        name = str(op[1])
        connected = name in registry.names() and registry.client(name).connected
        try:
            if kind == "connect":
                registry.connect(name, now)
            elif kind == "log" and connected:
                count, truncated = int(str(op[2])), bool(op[3])
                messages = [f"{name}{counter + i} \t x" for i in range(count)]
                counter += count
                if op[4]:  # as a run arrives from the wire: its LOG lines' bytes
                    wire = "".join(f"LOG {message}\n" for message in messages).encode()
                    registry.append(name, Lines.from_bytes(wire, count, log_messages), now)
                else:
                    registry.append(name, messages, now, truncated)
            elif kind == "set" and connected:
                registry.set_state(name, str(op[2]), f"v{counter}", now)
            elif kind == "close" and connected:
                registry.disconnect(name, now)
        except RegistryRefusal:
            pass
        if kind == "tick":
            now += float(str(op[1]))
            registry.expire(now)
        elif kind == "flush":
            batch = journal.take()
            if batch is not None:
                if op[1]:
                    disk.write(batch)
                    journal.written(batch)
                else:
                    journal.failed(batch)
    batch = journal.take()
    if batch is not None:
        disk.write(batch)
        journal.written(batch)
    assert registry.confirmed

    restarted = now + 5
    store_again = rebuild(
        MemoryStore(),
        list(disk.clients.values()),
        list(disk.runs.values()),
        disk.last_seq,
        restarted,
    )
    again = Registry(store_again, buffer_size=5, retention_seconds=50, max_retained=2)
    assert snapshot_of(again) == snapshot_of(registry)
    for name in again.names():
        before, after = registry.client(name), again.client(name)
        assert not after.connected
        expected = restarted if before.connected else before.disconnected_at
        assert after.disconnected_at == expected
    # Seqs continue above the highest stored, and the rebuilt ring keeps evicting exactly.
    again.connect("new", restarted)
    again.append("new", ["x"] * 7, restarted)
    assert [e.seq for e in again.log("new")] == list(
        range(registry.last_seq + 3, registry.last_seq + 8)
    )


def test_a_pong_waits_for_the_batch_holding_the_lines_before_its_ping() -> None:
    store = MemoryStore()
    registry = Registry(store)
    journal = Journal(registry, store)
    session = Session(registry)
    session.receive_data(b"IAM a\nLOG one\nPING 1\n", 1.0)
    assert session.data_to_send() == b"" and registry.pongs_waiting
    batch = journal.take()
    assert batch is not None and [run.messages for run in batch.runs] == [("one",)]
    session.receive_data(b"LOG two\nPING 2\n", 2.0)
    journal.written(batch)
    assert session.data_to_send() == b"PONG 1\n"  # PING 2's line is not in that batch
    later = journal.take()
    assert later is not None
    journal.failed(later)  # a full disk: nothing confirmed
    assert session.data_to_send() == b""
    retried = journal.take()
    assert retried is not None and [run.messages for run in retried.runs] == [("two",)]
    journal.written(retried)
    assert session.data_to_send() == b"PONG 2\n"


def test_lines_evicted_before_a_write_never_reach_the_disk() -> None:
    store = MemoryStore()
    registry = Registry(store, buffer_size=3)
    journal = Journal(registry, store)
    registry.connect("a", 1.0)
    for i in range(100):
        registry.append("a", [f"line {i}"], 1.0)
    batch = journal.take()
    assert batch is not None
    assert [run.messages[0] for run in batch.runs] == ["line 97", "line 98", "line 99"]
