"""``python -m poller.emulator``: the standalone emulator server (see :mod:`.cli`)."""

from __future__ import annotations

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
