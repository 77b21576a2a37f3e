"""Runs of messages kept as the bytes of their lines, turned into strings only when read.

Strategy: a run of ``LOG`` lines arrives as one block of bytes. Keeping that block (and the
number of lines in it) instead of one ``str`` per message costs no object per line, so neither
ingest nor the store pays for the messages until someone reads them, which is rare next to
writing (a query, a tail). :class:`Lines` is that run: an immutable sequence of messages whose
``len()`` never parses, and which parses its bytes once, on first access, with the function of
its form.

Every form keeps one message per line, each line ending in ``b"\\n"`` with no other newline in
it, so counting and cutting runs (:func:`line_tail`) work on the bytes of any form:

- the wire's ``LOG`` lines as they arrived, parsed by the connection's own rules
  (``_connection.log_messages``: trimming, ``\\r\\n``, U+FFFD for invalid UTF-8);
- ``parse_text``: the messages themselves in UTF-8 (lone surrogates kept, ``surrogatepass``),
  for messages given as strings without a newline in them;
- ``parse_quoted``: each message as a JSON string, exact for any string.
"""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import overload

__all__ = ["Lines", "Parse", "line_tail", "parse_quoted", "parse_text"]

Parse = Callable[[bytes], Sequence[str]]  # the bytes of a form's lines -> their messages


def parse_text(data: bytes) -> Sequence[str]:
    """The messages of lines of ``parse_text``'s form."""
    return data.decode("utf-8", "surrogatepass")[:-1].split("\n")


def parse_quoted(data: bytes) -> Sequence[str]:
    """The messages of lines of ``parse_quoted``'s form (one JSON string per line)."""
    return [json.loads(line) for line in data.decode("ascii").split("\n")[:-1]]


def line_tail(data: bytes, count: int, keep: int) -> bytes:
    """The last ``keep`` of the ``count`` lines of ``data`` (each line ending in ``b"\\n"``).

    The start is guessed from the mean line length and corrected a whole line at a time, so
    lines of similar length cost one ``rfind`` and one ``count`` whatever ``keep`` is.
    """
    if keep >= count:
        return data
    if keep <= 0:
        return b""
    start = data.rfind(b"\n", 0, len(data) - len(data) * keep // count) + 1
    kept = data.count(b"\n", start)
    while kept > keep:
        start = data.find(b"\n", start) + 1
        kept -= 1
    while kept < keep:
        start = data.rfind(b"\n", 0, start - 1) + 1
        kept += 1
    return data[start:]


class Lines(Sequence[str]):
    """An immutable run of messages: ``Lines(messages)``, or :meth:`from_bytes` for the bytes
    of their lines, parsed on first read.

    Compares equal to a tuple (or another ``Lines``) of the same messages, and hashes alike.
    """

    __slots__ = ("_count", "_data", "_messages", "_parse")

    def __init__(self, messages: Iterable[str] = ()) -> None:
        self._messages: tuple[str, ...] | None = tuple(messages)
        self._count = len(self._messages)
        self._data: bytes | None = None
        self._parse: Parse | None = None

    @classmethod
    def from_bytes(cls, data: bytes, count: int, parse: Parse) -> "Lines":
        """``count`` messages kept as ``data``, their lines in the form ``parse`` reads."""
        lines = cls.__new__(cls)
        lines._messages = None
        lines._count = count
        lines._data = data
        lines._parse = parse
        return lines

    @property
    def messages(self) -> tuple[str, ...]:
        """The messages as a tuple (parsed now if they were not yet)."""
        messages = self._messages
        if messages is None:
            assert self._data is not None and self._parse is not None
            parsed = self._parse(self._data) if self._count else ()
            messages = self._messages = tuple(parsed)
            assert len(messages) == self._count, "a form must give one message per line"
        return messages

    def encoded(self) -> tuple[bytes, Parse]:
        """The bytes of the lines and the form that reads them: the bytes kept if there are,
        else the messages encoded (``parse_text``'s form, or ``parse_quoted``'s when a message
        holds a newline)."""
        if self._data is not None:
            assert self._parse is not None
            return self._data, self._parse
        messages = self.messages
        text = "\n".join(messages) + "\n" if messages else ""
        if text.count("\n") == self._count:
            return text.encode("utf-8", "surrogatepass"), parse_text
        quoted = "".join(json.dumps(message) + "\n" for message in messages)
        return quoted.encode("ascii"), parse_quoted

    def tail(self, keep: int) -> "Lines":
        """The last ``keep`` messages (cut from the bytes, without parsing them)."""
        if keep >= self._count:
            return self
        if keep <= 0:
            return Lines()
        if self._data is None:
            return Lines(self.messages[self._count - keep :])
        assert self._parse is not None
        return Lines.from_bytes(line_tail(self._data, self._count, keep), keep, self._parse)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self.messages[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.messages)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Lines):
            if self._data is not None and self._data is other._data:
                if self._parse is other._parse:
                    return True
            return self.messages == other.messages
        if isinstance(other, tuple):
            return self.messages == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.messages)

    def __repr__(self) -> str:
        return f"Lines({self.messages!r})"
