#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callops.settings")
    from django.core.management import execute_from_command_line

    from callops.config import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # A bad environment variable: say which, without a traceback.
        sys.exit(f"callops: configuration error: {exc}")


if __name__ == "__main__":
    main()
