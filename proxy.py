#!/usr/bin/env python3
"""Retry shield: ``python proxy.py`` starts it (``--help`` lists the settings); the code is in retry_shield/."""

import sys

if sys.version_info < (3, 8):
    raise SystemExit("proxy.py: error: Python 3.8 or newer is required")

from retry_shield.main import main  # noqa: E402 - after the version check, which must run first

if __name__ == "__main__":
    raise SystemExit(main())
