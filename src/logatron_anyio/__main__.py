"""``python -m logatron_anyio``: the ``logatron`` command."""

from ._cli import main

raise SystemExit(main())
