"""``python -m cgpo`` is the same as the ``cgpo`` console script."""

import sys

from cgpo.cli import main

sys.exit(main())
