"""One run per output directory: an exclusive ``flock`` on ``OUTPUT_DIR/.lock`` held for the run's life.

Two runs writing into one output directory interleave their metrics, prune each other's checkpoints and
resume from each other's state. The second one must refuse at once, naming the first.

Why ``fcntl.flock`` and not a pid file or the ``filelock`` package's soft locks: the kernel releases an
``flock`` when the holding process dies, however it dies (SIGKILL, OOM killer, a node reboot of a local
disk), so a lock never outlives its run and there is no stale-pid guessing. The file's content (pid, host,
start time) is only for the message shown to the second run. The file is never deleted: deleting a locked
file would let a third process lock a new file of the same name while the second still holds the old one.

``flock`` is advisory and per open file: two ``RunLock.acquire`` calls in one process also exclude each
other. On NFS, Linux maps ``flock`` to POSIX byte-range locks served by the NFS lock manager; a file system
without locking support raises a ``UserError`` that says so rather than running unprotected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from cgpo.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """An acquired lock on an output directory; ``release()`` (or process exit) frees it.

    Use ``RunLock.acquire(output_dir)`` on the main process only, before anything is written to
    ``output_dir``; it creates the directory if needed.
    """

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, output_dir: Path | str) -> RunLock:
        """Lock ``output_dir`` or raise ``UserError`` naming the pid and host of the run that holds it."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_FILE
        # "a+": create if absent, never truncate before holding the lock (the holder's details are in it).
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{output_dir} is in use by another cgpo run ({_describe(holder)}); "
                                "wait for it to end, stop it, or choose another output_dir") from None  # fmt: skip
            raise UserError(f"cannot lock {path} ({exc.strerror}): the file system of {output_dir} does not "
                            "support file locks; choose an output_dir on one that does") from exc  # fmt: skip
        handle.seek(0)
        handle.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        """Free the lock (idempotent). The file stays, emptied, for the next run to lock."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: str) -> str:
    """``pid 123 on host gpu-7, since 2026-12-03T10:00:00+0000`` from the lock file's content."""
    try:
        record = json.loads(holder)
        return f"pid {record['pid']} on host {record['host']}, since {record['started']}"
    except (ValueError, KeyError, TypeError):
        # Locked but not yet written (the holder is between flock and write), or an unexpected content.
        return "its pid and host are not recorded yet"
