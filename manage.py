#!/usr/bin/env python
"""Django's command-line utility for Distillery."""

import os
import sys


def main() -> None:
    """Run a Django management command with Distillery's settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
