"""Server-side filters: which clients (shell-style name patterns) and which lines (RE2).

A request may carry ``client=PATTERN`` (``worker-*``, ``ci-??``, ``db-[12]``: ``fnmatchcase``),
``include=RE`` and ``exclude=RE``, each repeatable. A client passes if its name matches any
pattern; a line passes if it matches any include (or there is none) and no exclude. Patterns
are RE2 syntax, compiled with RE2 (``google-re2``), whose matching time is linear in the line:
no reader can stall the server with a pattern that makes a backtracking engine (Python's
``re``) run for ever. What RE2 refuses, and anything past the limits below, is a
:class:`FilterError` with the reason (the API answers 400 ``bad-request``).

Speed. A live tail must keep up with ingest, so a run of lines is not matched line by line
first: its messages joined by ``"\\n"`` are searched once by one RE2 program, every pattern in
multi-line mode with ``never_nl`` (no match can cross or contain a newline, ``^``/``$`` match
at each line's ends). No match there means no line matches (the usual case of a rare
pattern), at ~0.05 us a line; otherwise the lines from the first match on are tried one by one
with an ``RE2::Set`` (~0.6 us a line). Patterns whose meaning changes when lines are joined
(``\\A``, ``\\z``, ``\\C``, ``\\Q``, or a flag group turning a flag off) skip the joined
search. A literal pattern (no metacharacter, the usual ``ERROR``) is tried as a substring
(``in``: ~0.05 us a line), with RE2's answer. ``test_filters.py`` checks that every way agrees
with RE2 matching line by line, on random patterns and lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

import re2

from logatron_core import Logged, is_valid_name

__all__ = [
    "MAX_CLIENT_PATTERN_CHARS",
    "MAX_PATTERNS",
    "MAX_REGEX_CHARS",
    "PATTERNS_MAX_MEM",
    "REGEX_MAX_MEM",
    "ClientFilter",
    "FilterError",
    "LineFilter",
    "client_filter",
    "line_filter",
]

# Patterns per parameter (client, include, exclude) in one request. Each include or exclude
# costs every line it examines; stern and Loki users combine a handful.
MAX_PATTERNS = 16

# A client pattern's length: names are at most 128 characters, bracket classes add some.
MAX_CLIENT_PATTERN_CHARS = 256

# A regular expression's length in characters (Elasticsearch's index.max_regex_length: 1000).
MAX_REGEX_CHARS = 1000

# RE2's memory budget for one pattern (RE2's default is 8 MiB): past it RE2 refuses the pattern
# ("pattern too large"). ``\pL{60}`` (any of ~1,700 letters, 60 times) is past it.
REGEX_MAX_MEM = 1 << 20

# The budget for the patterns of one parameter together (the RE2 set and the joined program,
# each: the compiled program and its DFA cache): RE2's default for one pattern.
PATTERNS_MAX_MEM = 8 << 20

# The characters of a client pattern: a name's, and fnmatch's ``* ? [ ] !``.
_CLIENT_PATTERN = re.compile(r"[A-Za-z0-9_\-.:@*?\[\]!]+")
_WILDCARDS = re.compile(r"[*?\[]")
# A pattern without RE2 metacharacters: a substring test gives RE2's answer, ~10x faster.
_LITERAL = re.compile(r"[^\\.+*?()|\[\]{}^$]+")
# What makes a pattern's meaning differ between a line alone and lines joined by "\n".
_NOT_JOINABLE = re.compile(r"\\[ACQz]|\(\?[A-Za-z]*-")

# Names remembered by one ClientFilter (names of clients that come and go are unbounded).
_NAME_CACHE_SIZE = 4096


class FilterError(ValueError):
    """A filter the server refuses; the message says why."""


class ClientFilter:
    """Client names matching any of ``patterns`` (``fnmatchcase``); a callable on a name.

    ``exact`` is the name when the filter is one pattern without wildcards (the API then reads
    only that client's records, and answers 404 for a name it does not know).
    """

    __slots__ = ("_cache", "exact", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        plain = len(self.patterns) == 1 and not _WILDCARDS.search(self.patterns[0])
        self.exact = self.patterns[0] if plain else None
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        cache = self._cache
        found = cache.get(name)
        if found is None:
            if len(cache) >= _NAME_CACHE_SIZE:
                cache.clear()
            found = cache[name] = any(fnmatchcase(name, p) for p in self.patterns)
        return found

    def runs(self, runs: list[Logged]) -> list[Logged]:
        return [run for run in runs if self(run.name)]


def client_filter(patterns: Sequence[str]) -> ClientFilter | None:
    """The filter for ``client=`` values (None for none). Raises FilterError."""
    if not patterns:
        return None
    _check_count("client", patterns)
    for pattern in patterns:
        if len(pattern) > MAX_CLIENT_PATTERN_CHARS:
            raise FilterError(
                f"a client pattern is at most {MAX_CLIENT_PATTERN_CHARS} characters long"
            )
        if not _CLIENT_PATTERN.fullmatch(pattern) or (
            not _WILDCARDS.search(pattern) and not is_valid_name(pattern)
        ):
            raise FilterError(f"invalid client name or pattern: {pattern!r}")
    return ClientFilter(patterns)


def _check_count(parameter: str, values: Sequence[str]) -> None:
    if len(values) > MAX_PATTERNS:
        raise FilterError(f"at most {MAX_PATTERNS} {parameter} patterns per request")


def _options(max_mem: int, *, never_nl: bool = False) -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = max_mem
    options.never_nl = never_nl
    return options


def _reason(error: re2.error) -> str:
    reason = error.args[0] if error.args else ""
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


class _Patterns:
    """Some patterns: matched line by line (literals as substrings, the others by an RE2 set)
    and, where their meaning allows, over lines joined by newlines (one RE2 program)."""

    __slots__ = ("_joined", "_literals", "_set")

    def __init__(self, parameter: str, patterns: Sequence[str]) -> None:
        _check_count(parameter, patterns)
        for pattern in patterns:
            if len(pattern) > MAX_REGEX_CHARS:
                raise FilterError(f"a pattern is at most {MAX_REGEX_CHARS} characters long")
            try:
                re2.compile(pattern, _options(REGEX_MAX_MEM))
            except re2.error as error:
                raise FilterError(f"{parameter} pattern {pattern!r}: {_reason(error)}") from None
        self._literals = tuple(p for p in patterns if _LITERAL.fullmatch(p))
        self._set: Callable[[str], object] | None = None  # its result is truthy on a match
        others = [p for p in patterns if p not in self._literals]
        if others:
            patterns_set = re2.Set.SearchSet(_options(PATTERNS_MAX_MEM))
            try:
                for pattern in others:
                    patterns_set.Add(pattern)
                patterns_set.Compile()
            except re2.error:
                raise FilterError(f"the {parameter} patterns are too large together") from None
            self._set = patterns_set.Match
        self._joined: re2._Regexp[str] | None = None
        if not any(_NOT_JOINABLE.search(pattern) for pattern in patterns):
            joined = "|".join(f"(?m:{pattern})" for pattern in patterns)
            try:
                self._joined = re2.compile(joined, _options(PATTERNS_MAX_MEM, never_nl=True))
            except re2.error:
                pass  # too large together: line by line only

    def first_match(self, messages: Sequence[str]) -> int | None:
        """The index of the first message any pattern matches, None if none does."""
        joined = self._joined
        if joined is None or len(messages) == 1:
            return next(iter(self.matching(messages, range(len(messages)))), None)
        text = "\n".join(messages).encode()
        found = joined.search(text)
        return None if found is None else text.count(b"\n", 0, found.start())

    def matching(self, messages: Sequence[str], indexes: Sequence[int]) -> list[int]:
        """The ``indexes`` whose message some pattern matches."""
        literals, match = self._literals, self._set
        if match is None and len(literals) == 1:
            literal = literals[0]
            return [i for i in indexes if literal in messages[i]]
        return [
            i
            for i in indexes
            if any(literal in messages[i] for literal in literals)
            or (match is not None and match(messages[i]))
        ]


class LineFilter:
    """Lines that match any ``include`` pattern (all, with none) and no ``exclude`` pattern."""

    __slots__ = ("_exclude", "_include")

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._include = _Patterns("include", include) if include else None
        self._exclude = _Patterns("exclude", exclude) if exclude else None

    def kept(self, messages: Sequence[str]) -> list[int] | None:
        """The indexes of the messages that pass, None when they all do."""
        indexes: Sequence[int] = range(len(messages))
        if self._include is not None:
            first = self._include.first_match(messages)
            if first is None:
                return []
            indexes = [first, *self._include.matching(messages, range(first + 1, len(messages)))]
        exclude = self._exclude
        if exclude is not None:
            candidates = messages if isinstance(indexes, range) else [messages[i] for i in indexes]
            first = exclude.first_match(candidates)
            if first is not None:
                excluded = set(exclude.matching(candidates, range(first, len(candidates))))
                indexes = [index for n, index in enumerate(indexes) if n not in excluded]
        return None if isinstance(indexes, range) else list(indexes)

    def runs(self, run: Logged) -> list[Logged]:
        """The lines of ``run`` that pass, as runs of consecutive seqs (the run itself, shared,
        when every line passes)."""
        kept = self.kept(run.messages)
        if kept is None:
            return [run]
        if len(kept) == len(run.messages):
            return [run]
        runs: list[Logged] = []
        messages, first_seq = run.messages, run.first_seq
        start = 0
        for n in range(1, len(kept) + 1):
            if n == len(kept) or kept[n] != kept[n - 1] + 1:
                begin = kept[start]
                part = messages[begin : kept[n - 1] + 1]
                runs.append(Logged(run.name, first_seq + begin, run.timestamp, part, run.truncated))
                start = n
        return runs


def line_filter(include: Sequence[str], exclude: Sequence[str]) -> LineFilter | None:
    """The filter for ``include=``/``exclude=`` values (None for none). Raises FilterError."""
    if not include and not exclude:
        return None
    return LineFilter(include, exclude)
