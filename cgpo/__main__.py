"""``python -m cgpo`` is the same as the ``cgpo`` console script."""

from cgpo.cli import entry

entry()
