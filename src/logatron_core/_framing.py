"""Incremental line framing with a limit on each line.

Strategy: bytes are split on ``\\n`` before any decoding (0x0A never occurs inside a UTF-8
sequence). Complete lines are handed out as *blocks*: one ``bytes`` object holding a run of whole
lines, each ending in ``\\n``, so the parser can work on a run at C speed. Only the unfinished
last line is kept, and never more than ``max_line_bytes`` of it: a line longer than that is
handed out at once, cut to the limit and flagged, and the rest of it is skipped up to its
newline. The limit applies to each line (not to the buffer), so the output never depends on how
the bytes were chunked, and every byte is searched once, so a long line that arrives a byte at a
time costs O(n).
"""

from ._limits import MAX_LINE_BYTES

__all__ = ["LineBuffer", "Piece"]

# (data, truncated): a block of whole lines each ending in b"\n", or, when truncated is true,
# one line cut to the limit (no newline).
Piece = tuple[bytes, bool]


class LineBuffer:
    """Splits a byte stream into lines of at most ``max_line_bytes`` bytes (newline excluded).

    Raises ``ValueError`` for a limit below 1.
    """

    __slots__ = ("_max", "_partial", "_skipping")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max = max_line_bytes
        self._partial: bytearray | None = None  # the unfinished line (None: there is none)
        self._skipping = False

    @property
    def max_line_bytes(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line (never more than ``max_line_bytes``)."""
        return 0 if self._partial is None else len(self._partial)

    def feed(self, data: bytes) -> list[Piece]:
        """Take the next bytes of the stream and return the pieces they complete, in order."""
        pieces: list[Piece] = []
        start = 0
        if self._skipping or self._partial:
            newline = data.find(b"\n")
            if newline < 0:
                self._hold(data, pieces)
                return pieces
            if self._skipping:
                self._skipping = False
            else:
                assert self._partial is not None
                line = self._partial + data[:newline]
                self._partial = None
                if len(line) > self._max:
                    pieces.append((bytes(line[: self._max]), True))
                else:
                    line.append(0x0A)
                    pieces.append((bytes(line), False))
            start = newline + 1
        last = data.rfind(b"\n", start)
        if last >= 0:
            if start == 0 and last == len(data) - 1:
                block = data
            else:
                block = data[start : last + 1]
            if len(block) > self._max + 1 and self._has_long_line(block):
                self._cut_long_lines(block, pieces)
            else:
                pieces.append((block, False))
            start = last + 1
        if start < len(data):
            self._hold(data[start:], pieces)
        return pieces

    def close(self) -> list[Piece]:
        """End of input: an unfinished last line is handed out as if it had ended."""
        pieces: list[Piece] = []
        if self._partial:
            self._partial.append(0x0A)
            pieces.append((bytes(self._partial), False))
        self._partial = None
        self._skipping = False
        return pieces

    def _hold(self, data: bytes, pieces: list[Piece]) -> None:
        """Keep ``data`` (no newline in it) as part of the unfinished line, within the limit."""
        if self._skipping:
            return
        partial = self._partial
        if partial is None:
            partial = self._partial = bytearray()
        room = self._max - len(partial)
        if len(data) <= room:
            partial += data
            return
        partial += data[:room]
        pieces.append((bytes(partial), True))
        self._partial = None
        self._skipping = True

    def _has_long_line(self, block: bytes) -> bool:
        """True if a line of ``block`` is longer than the limit; a few ``find`` calls per limit.

        A line longer than the limit contains a whole window ``[k, k + probe)`` with ``k`` a
        multiple of ``probe``; only windows without a newline need measuring their line.
        """
        limit = self._max
        # Any run of more than limit bytes holds a whole aligned window of this size.
        probe = max(1, (limit + 1) // 2)
        for start in range(0, len(block) - probe + 1, probe):
            if block.find(b"\n", start, start + probe) >= 0:
                continue
            line_start = block.rfind(b"\n", 0, start) + 1
            line_end = block.find(b"\n", start + probe)
            if line_end - line_start > limit:
                return True
        return False

    def _cut_long_lines(self, block: bytes, pieces: list[Piece]) -> None:
        run: list[bytes] = []
        for line in block[:-1].split(b"\n"):
            if len(line) <= self._max:
                run.append(line)
                continue
            if run:
                run.append(b"")
                pieces.append((b"\n".join(run), False))
                run = []
            pieces.append((line[: self._max], True))
        if run:
            run.append(b"")
            pieces.append((b"\n".join(run), False))
