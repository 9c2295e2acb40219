"""Errors that mean "the user asked for something we cannot do": the CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A user mistake or an unusable input, with a message that says what to fix.

    The CLI prints ``cgpo <command>: <message>`` and exits with status 2.
    """


class ConfigError(UserError):
    """A configuration problem located in a file: ``FILE: key.path: reason (line N)``.

    Attributes:
        file: The file that holds the bad value (or ``<command line>`` for an override).
        key_path: Dotted key path inside that file; empty for a whole-file problem.
        reason: What is wrong and, where possible, what would be right.
        line: 1-based line of the key in ``file``, when known.
    """

    def __init__(self, file: str, key_path: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.key_path = key_path
        self.reason = reason
        self.line = line
        where = f" (line {line})" if line else ""
        super().__init__(f"{file}: {key_path or '(top level)'}: {reason}{where}")
