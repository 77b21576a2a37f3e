"""What the commands share: the options that mean the same everywhere (the TCP address, the
backend, the token), the types of their values, running until Ctrl-C or SIGTERM, and how a run
fails.

Two kinds of failure, never a traceback: bad usage is click's (the subcommand's usage and an
``Error: ...`` line, exit status 2, raised as ``click.BadParameter``/``click.UsageError`` or by
the types here); a failed run is one ``logatron: ...`` line on stderr and exit status 1
(``fail``).
"""

from __future__ import annotations

import os
import signal
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn, TypeVar, get_args

import anyio
import click

from logatron_core import is_valid_name

__all__ = [
    "BACKENDS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PORT",
    "Backend",
    "Integer",
    "Number",
    "Token",
    "backend_option",
    "client_name",
    "env_option",
    "fail",
    "host_option",
    "only",
    "port_option",
    "reason",
    "say_error",
    "token_option",
    "until_signal",
]

Backend = Literal["asyncio", "trio"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2212

_F = TypeVar("_F", bound=Callable[..., Any])
_E = TypeVar("_E", bound=BaseException)


class Integer(click.IntRange):
    """``click.IntRange`` whose error for a non-number says "not a valid integer" (click's own
    says "integer range", which reads as if a range were expected)."""

    name = "integer"


class Number(click.FloatRange):
    """``click.FloatRange`` whose error for a non-number says "not a valid number"."""

    name = "number"


PORT = Integer(0, 65535)


class Token(click.types.StringParamType):
    """A bearer token as it can travel in an ``Authorization`` header: not empty, no control
    characters, no space or tab at either end (HTTP drops them, so it could never match).
    Non-ASCII text is fine: it is sent as UTF-8."""

    name = "token"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text: str = super().convert(value, param, ctx)
        if not text:
            self.fail("a token cannot be empty (leave the option out for none)", param, ctx)
        if text != text.strip():
            self.fail("a token cannot start or end with whitespace", param, ctx)
        if any(unicodedata.category(char) == "Cc" for char in text):
            self.fail("a token cannot hold control characters", param, ctx)
        return text


def client_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The callback of a NAME argument: a client name as the protocol allows it (``IAM``)."""
    if value is not None and not is_valid_name(value):
        raise click.BadParameter(f"{value!r} is not a client name (1-128 of A-Z a-z 0-9 _ - . : @)")
    return value


class _EnvOption(click.Option):
    """An option whose invalid value is reported under the name it was given by: the flag, or
    the environment variable."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        if (
            ctx is not None
            and self.name is not None
            and ctx.get_parameter_source(self.name) is click.core.ParameterSource.ENVIRONMENT
        ):
            return f"environment variable {self.envvar}"
        return click.Parameter.get_error_hint(self, ctx)


def env_option(flag: str, envvar: str, **attrs: Any) -> Callable[[_F], _F]:
    """``click.option(flag, envvar=envvar, show_envvar=True, **attrs)``: the flag wins over
    the variable, and --help shows both."""
    return click.option(flag, cls=_EnvOption, envvar=envvar, show_envvar=True, **attrs)


def host_option(help: str) -> Callable[[_F], _F]:
    return env_option("--host", "LOGATRON_HOST", default=DEFAULT_HOST, metavar="HOST", help=help)


def port_option(help: str) -> Callable[[_F], _F]:
    return env_option(
        "--port", "LOGATRON_PORT", type=PORT, default=DEFAULT_PORT, metavar="PORT", help=help
    )


def token_option(help: str) -> Callable[[_F], _F]:
    return env_option("--token", "LOGATRON_TOKEN", type=Token(), metavar="TOKEN", help=help)


def _installed_backend(ctx: click.Context, param: click.Parameter, value: Backend) -> Backend:
    """The callback of --backend: trio is an extra (``logatron[trio]``) that may be missing."""
    if value == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise click.BadParameter(
                "trio is not installed: pip install 'logatron[trio]'", ctx, param
            ) from None
    return value


backend_option = env_option(
    "--backend",
    "LOGATRON_BACKEND",
    type=click.Choice(BACKENDS),
    default="asyncio",
    callback=_installed_backend,
    help="the event loop to run on (trio: pip install 'logatron[trio]')",
)


def say_error(message: str) -> None:
    """``logatron: message`` on stderr: how every failed run is told."""
    print(f"logatron: {message}", file=sys.stderr, flush=True)


def reason(error: BaseException) -> str:
    """Why an operation failed, in a few words: the words of the innermost OSError with an
    errno among ``error`` and its causes ("connection refused", "address already in use"),
    else what ``error`` says after its last ``": "``."""
    said = str(error)
    words = said.rpartition(": ")[2] or said
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            text = os.strerror(cause.errno) if cause.errno > 0 else (cause.strerror or "")
            if text:
                words = text[0].lower() + text[1:]
        cause = cause.__cause__ or cause.__context__
    return words


def fail(message: str) -> NoReturn:
    """Say ``message`` and end the command with exit status 1."""
    say_error(message)
    raise click.exceptions.Exit(1)


def only(raised: BaseException, kind: type[_E]) -> _E | None:
    """The ``kind`` exception that ``raised`` is, or is a group of only (the first); else None."""
    while isinstance(raised, BaseExceptionGroup):
        matched, rest = raised.split(kind)
        if matched is None or rest is not None:
            return None
        raised = matched.exceptions[0]
    return raised if isinstance(raised, kind) else None


async def until_signal(
    body: Callable[[], Awaitable[object]], on_signal: Callable[[int], None] | None = None
) -> int | None:
    """Run ``body`` until it returns or Ctrl-C/SIGTERM cancels it; the signal's number, or None.

    The signal receiver is open before ``body`` starts: a signal sent as soon as ``body`` has
    printed something is never missed. ``on_signal`` is called before the cancellation."""
    stopped_by: int | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await body()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            async for signum in signals:
                stopped_by = signum
                if on_signal is not None:
                    on_signal(signum)
                tg.cancel_scope.cancel()
                break
    return stopped_by
