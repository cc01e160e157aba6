"""``python -m valfusion``: the same as the ``valfusion`` command."""

from valfusion.cli import main

raise SystemExit(main())
