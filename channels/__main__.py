"""`python -m qchan` is the `qchan` command."""

from .cli import main

raise SystemExit(main())
