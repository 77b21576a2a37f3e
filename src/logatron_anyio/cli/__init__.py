"""The ``logatron`` command, on click: one group, one module per command.

- ``serve``: the server (``serve.py``: its options become a ``ServeConfig``; ``network.py``:
  its TLS contexts and tokens, and the warning for an exposed server);
- ``send``: stdin lines as one client's log (``send.py``);
- ``clients``, ``state``, ``recent``, ``tail``: consumers over HTTP and WebSocket
  (``consumers.py``), printing through ``render.py``.

Every setting is a flag and a ``LOGATRON_*`` environment variable (the flag wins), shown in
``--help`` with its default. What ``common.py`` says about failing holds for every command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import click

from . import consumers, send, serve

__all__ = ["logatron", "main"]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order added, not sorted


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(package_name="logatron", prog_name="logatron")
@click.pass_context
def logatron(ctx: click.Context) -> None:
    """Logatron: an in-memory logging server."""
    if ctx.invoked_subcommand is None:  # a bare `logatron`: its help, and success
        click.echo(ctx.get_help())


# The modules keep their names: `logatron_anyio.cli.serve` is the module, not the command.
for _command in (
    serve.serve,
    send.send,
    consumers.clients,
    consumers.state,
    consumers.recent,
    consumers.tail,
):
    logatron.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``logatron`` command on ``argv`` (default: ``sys.argv[1:]``) and exit with its
    status: 0 done, 1 failed (one ``logatron: ...`` line on stderr), 2 bad usage (the
    subcommand's usage and an ``Error: ...`` line), 128 + N for a one-shot consumer stopped by
    signal N."""
    logatron.main(args=argv, prog_name="logatron")
