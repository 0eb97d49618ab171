"""``python -m poller``."""

import sys

from poller.apps.cli import main

sys.exit(main())
