"""``python -m fslib``: the command line (:mod:`fslib.cli`)."""

from fslib.cli import main

raise SystemExit(main())
