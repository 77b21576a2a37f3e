"""The line splitter: limits per line, chunking invariance, O(n) on long lines."""

import time

from hypothesis import example, given
from hypothesis import strategies as st

from core_helpers import cut
from logatron_core import LineBuffer

Line = tuple[bytes, bool]


def lines_of(buffer: LineBuffer, chunks: list[bytes]) -> list[Line]:
    """Every line the buffer hands out (blocks split into lines), then end of input."""
    out: list[Line] = []
    for chunk in chunks:
        for data, truncated in buffer.feed(chunk):
            assert buffer.buffered <= buffer.max_line_bytes
            if truncated:
                assert len(data) == buffer.max_line_bytes and b"\n" not in data
                out.append((data, True))
            else:
                assert data.endswith(b"\n")
                out.extend((line, False) for line in data[:-1].split(b"\n"))
    for data, truncated in buffer.close():
        assert not truncated
        out.extend((line, False) for line in data[:-1].split(b"\n"))
    return out


def reference(data: bytes, limit: int) -> list[Line]:
    """What the splitter must do, written the obvious way."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [(p[:limit], True) if len(p) > limit else (p, False) for p in pieces]


byte_streams = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\xff"]), max_size=60).map(
    b"".join
)


@given(byte_streams, st.integers(1, 8), st.lists(st.integers(0, 10_000), max_size=12))
@example(b"aaaa\n", 3, [])
@example(b"aaa", 3, [1])
@example(b"aaaa", 3, [2])
def test_lines_match_reference_however_chunked(data: bytes, limit: int, cuts: list[int]) -> None:
    expected = reference(data, limit)
    assert lines_of(LineBuffer(limit), [data] if data else []) == expected
    assert lines_of(LineBuffer(limit), [data[i : i + 1] for i in range(len(data))]) == expected
    assert lines_of(LineBuffer(limit), cut(data, cuts)) == expected


def test_line_at_the_limit_is_whole_and_one_past_is_cut() -> None:
    buffer = LineBuffer(4)
    assert buffer.feed(b"abcd\nabcde\nz\n") == [
        (b"abcd\n", False),
        (b"abcd", True),
        (b"z\n", False),
    ]


def test_long_line_is_cut_before_its_newline_arrives_and_rest_skipped() -> None:
    buffer = LineBuffer(4)
    assert buffer.feed(b"abc") == []
    assert buffer.feed(b"defgh") == [(b"abcd", True)]
    assert buffer.buffered == 0
    assert buffer.feed(b"x" * 100_000) == []
    assert buffer.feed(b"yy\nok\n") == [(b"ok\n", False)]


def test_end_of_input_hands_out_unfinished_line() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"one\ntw") == [(b"one\n", False)]
    assert buffer.close() == [(b"tw\n", False)]
    assert buffer.close() == []


def test_invalid_limit_is_refused() -> None:
    try:
        LineBuffer(0)
    except ValueError:
        return
    raise AssertionError("LineBuffer(0) must raise ValueError")


def test_long_line_a_byte_at_a_time_costs_linear_time() -> None:
    # 300 KB one byte at a time: linear work is ~0.3 s; re-scanning the buffer on every byte
    # (quadratic) would scan ~45 GB and take minutes. The bound is far from both.
    size = 300_000
    buffer = LineBuffer(1 << 20)
    start = time.monotonic()
    for _ in range(size):
        assert buffer.feed(b"x") == []
    assert buffer.feed(b"\n") == [(b"x" * size + b"\n", False)]
    assert time.monotonic() - start < 20


def test_memory_stays_bounded_by_the_limit() -> None:
    buffer = LineBuffer(1024)
    for _ in range(1000):
        buffer.feed(b"y" * 4096)
        assert buffer.buffered <= 1024


def test_long_line_inside_a_large_block_is_found() -> None:
    short = b"LOG " + b"s" * 59 + b"\n"
    for long_length in (65536, 65537, 100_000):
        data = short * 3000 + b"L" * long_length + b"\n" + short * 3000
        assert lines_of(LineBuffer(), [data]) == reference(data, 65536)
