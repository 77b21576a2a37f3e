"""A registry whose changes are decided by a shared store (Redis) that several front ends use.

In a deployment of several front ends, a name's claim, a state key's limit and above all the
seq of every line can only be decided in the shared store, atomically, in the order changes
reach it. So a :class:`RemoteRegistry` does not apply its sessions' changes: it queues them as
*commands* (:class:`Claim`, :class:`Append`, :class:`SetKey`, :class:`Release`), in order, and
its adapter sends them to the shared store in batches (:meth:`RemoteRegistry.take`). What the
shared store decided reaches every front end, this one included, as an ordered stream of
changes that the adapter applies here with the ``apply_*`` methods: they update the local
mirror (a :class:`MemoryStore`, which serves every read, snapshot and tail) and emit the events.

Sessions work unchanged: a ``PING`` is answered once the batch holding every change before it
has been acknowledged by the shared store (:meth:`RemoteRegistry.committed`, through the
registry's ``hold_pongs``/``confirm``), and a refusal decided there comes back through
:meth:`RemoteRegistry.refused`, which makes the session that asked answer ``ERR`` (closing the
connection for a refused claim). A session's lines that follow a claim refused there are
discarded by the shared store, which appends only for the connection holding the claim.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._errors import ErrorCode, NameTaken
from ._events import ClientClosed, ClientExpired, ClientReady, Logged, RegistryEvent, StateSet
from ._lines import Lines
from ._memory import RUN_FORMS, MemoryStore
from ._registry import Registry
from ._store import Snapshot, Subscriber

# The shared store enforces the deployment's limits; the mirror takes what it decided.
_NO_LIMIT = 2**62


class _Origin(Protocol):
    """What a command's ``session`` is: a Session, told of the shared store's refusals."""

    def refuse_late(self, code: ErrorCode, detail: str, now: float) -> None: ...


__all__ = [
    "Append",
    "Claim",
    "Command",
    "Release",
    "RemoteRegistry",
    "SetKey",
    "decode_run",
    "encode_run",
]


def encode_run(messages: Sequence[str]) -> tuple[int, bytes]:
    """A run's messages as a shared store keeps them: (form, bytes), the bytes they arrived in
    when there are (nothing is parsed), read back by :func:`decode_run`."""
    lines = messages if type(messages) is Lines else Lines(messages)
    data, parse = lines.encoded()
    return RUN_FORMS.index(parse), data


def decode_run(form: int, data: bytes, count: int) -> Lines:
    """The ``count`` messages :func:`encode_run` gave as ``(form, data)`` (parsed when first
    read). Raises IndexError for an unknown form."""
    return Lines.from_bytes(data, count, RUN_FORMS[form])


@dataclass(frozen=True, slots=True)
class Claim:
    """``session`` identified as ``name``: connect it if no other connection holds the name."""

    name: str
    timestamp: float
    session: object


@dataclass(frozen=True, slots=True)
class Append:
    """A run of lines from the connection holding ``name``'s claim (``session``); its
    messages immutable (a tuple, or a ``Lines`` kept unparsed)."""

    name: str
    messages: Sequence[str]
    timestamp: float
    truncated: bool
    session: object


@dataclass(frozen=True, slots=True)
class SetKey:
    """Set a state key of ``name`` (refused past the key limit)."""

    name: str
    key: str
    value: str
    timestamp: float
    session: object


@dataclass(frozen=True, slots=True)
class Release:
    """The connection holding ``name``'s claim closed."""

    name: str
    timestamp: float
    session: object


Command = Claim | Append | SetKey | Release


class RemoteRegistry(Registry):
    """A front end's registry over a shared store (see the module comment).

    ``mirror`` is the local copy that every read is served from; it changes only through the
    ``apply_*`` methods. Limits are the deployment's and are enforced by the shared store; the
    ones given here are told to it by the adapter.
    """

    def __init__(self, mirror: MemoryStore | None = None, **limits: float) -> None:
        self.mirror = mirror if mirror is not None else MemoryStore()
        super().__init__(self.mirror, **limits)  # type: ignore[arg-type]
        self._commands: list[Command] = []
        self._claimed: dict[str, object] = {}  # names this front end's sessions claimed
        # Called when a command is queued while none was: the adapter's cue to send soon.
        self.on_queued: Callable[[], object] | None = None
        self.hold_pongs()

    # -- what sessions do: queued as commands ---------------------------------------------------

    def connect(self, name: str, now: float, *, origin: object = None) -> None:
        """Queue a claim. Raises NameTaken at once when a connection of this front end holds
        or claims the name (the shared store decides for the others)."""
        if name in self._claimed:
            raise NameTaken(f"{name} is already connected")
        self._claimed[name] = origin
        self._queue(Claim(name, now, origin))
        self._stats.connections_total += 1

    def append(
        self,
        name: str,
        messages: Sequence[str],
        now: float,
        truncated: bool = False,
        *,
        origin: object = None,
    ) -> None:
        if messages:
            kept = messages if type(messages) is Lines else tuple(messages)
            self._queue(Append(name, kept, now, truncated, origin))

    def set_state(
        self, name: str, key: str, value: str, now: float, *, origin: object = None
    ) -> None:
        self._queue(SetKey(name, key, value, now, origin))

    def disconnect(self, name: str, now: float, *, origin: object = None) -> None:
        if self._claimed.get(name, self) is origin:
            del self._claimed[name]
            self._queue(Release(name, now, origin))

    def expire(self, now: float) -> None:
        """Expiry is the shared store's (it arrives through :meth:`apply_expired`)."""

    def count_error(self, name: str | None, code: ErrorCode) -> None:
        """Counted for this front end only (a client's own error count is not shared)."""
        super().count_error(None, code)

    def _queue(self, command: Command) -> None:
        if not self._commands and self.on_queued is not None:
            self.on_queued()
        self._commands.append(command)
        self.mark += 1

    # -- the adapter's side ---------------------------------------------------------------------

    def take(self) -> tuple[int, list[Command]]:
        """The commands queued since the last call, in order, and the mark to pass to
        :meth:`committed` once the shared store has applied all of them."""
        commands, self._commands = self._commands, []
        return self.mark, commands

    def committed(self, mark: int) -> None:
        """The shared store applied every command up to ``mark``: answer the PINGs after them."""
        self.confirm(mark)

    def refused(self, command: Command, code: ErrorCode, detail: str, now: float) -> None:
        """The shared store refused ``command`` (a claim: ``name-taken`` or
        ``too-many-clients``; a state key: ``too-many-keys``): the session that sent it answers
        ``ERR``, and closes for a claim."""
        if isinstance(command, Claim) and self._claimed.get(command.name, self) is command.session:
            del self._claimed[command.name]
        if hasattr(command.session, "refuse_late"):
            origin: _Origin = command.session
            origin.refuse_late(code, detail, now)

    def follow(
        self, subscriber: Subscriber, since: int = 0, client: str | None = None
    ) -> tuple[Snapshot, Callable[[], None]]:
        """Subscribe and snapshot in one step (see LogSource.follow). A cursor past the
        mirror's newest seq comes from a front end whose mirror is further ahead (seqs are
        the deployment's: they never start again): the snapshot is empty and reaches the
        cursor, and the lines up to it are not delivered when this mirror gets them."""
        if since <= self.mirror.last_seq:
            return super().follow(subscriber, since, client)

        def after_cursor(event: RegistryEvent) -> None:
            if type(event) is Logged and event.first_seq <= since:
                keep = event.last_seq - since
                if keep <= 0:
                    return
                messages = event.messages
                kept = messages.tail(keep) if type(messages) is Lines else messages[-keep:]
                event = Logged(event.name, since + 1, event.timestamp, kept, event.truncated)
            subscriber(event)

        return Snapshot([], since, 0), self.subscribe(after_cursor)

    def replace_mirror(self, mirror: MemoryStore) -> None:
        """Serve every read from ``mirror`` from now on: the shared store's state, loaded anew
        (at start, or after the shared store lost changes). Subscribers are not told."""
        self.mirror = mirror
        self.store = mirror

    def apply_ready(self, name: str, now: float) -> None:
        """The shared store connected ``name`` (on any front end)."""
        self.mirror.connect(name, now, _NO_LIMIT)
        self._emit(ClientReady(name, now))

    def apply_logged(
        self, name: str, first_seq: int, now: float, messages: Sequence[str], truncated: bool
    ) -> None:
        """The shared store appended a run to ``name``'s log with seqs from ``first_seq``."""
        mirror = self.mirror
        evicted = mirror.append_at(name, first_seq, now, messages, truncated, self.buffer_size)
        stats = self._stats
        stats.lines_received += len(messages)
        stats.lines_evicted += evicted
        if truncated:
            stats.lines_truncated += len(messages)
        if self._subscribers:
            self._emit(Logged(name, first_seq, now, messages, truncated))

    def apply_set(self, name: str, key: str, value: str, now: float) -> None:
        self.mirror.set_state(name, key, value, _NO_LIMIT)
        self._emit(StateSet(name, key, value, now))

    def apply_closed(self, name: str, now: float) -> None:
        if self.mirror.disconnect(name, now):
            self._emit(ClientClosed(name, now))

    def apply_expired(self, name: str, now: float) -> None:
        if self.mirror.forget(name):
            self._stats.clients_expired += 1
            self._emit(ClientExpired(name, now))
