"""`python -m distill_core …` runs the command line (see distill_core/cli.py)."""

from distill_core.cli import main

raise SystemExit(main())
