"""``python -m logatron_anyio``: the ``logatron`` command."""

from .cli import main

main()
