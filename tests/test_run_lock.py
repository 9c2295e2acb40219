"""The output-directory lock, with real second processes and a SIGKILLed holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgpo.errors import UserError
from cgpo.run_lock import LOCK_FILE, RunLock

HOLD = """
import sys, time
from cgpo.run_lock import RunLock
lock = RunLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""

TRY = """
import sys
from cgpo.errors import UserError
from cgpo.run_lock import RunLock
try:
    RunLock.acquire(sys.argv[1])
except UserError as exc:
    print(exc)
    sys.exit(2)
print("acquired")
"""


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def start_holder(output_dir: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(python(HOLD, str(output_dir)), env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_at_once_naming_the_first_ones_pid_and_host(tmp_path):
    out = tmp_path / "run"
    lock = RunLock.acquire(out)
    try:
        started = time.monotonic()
        second = subprocess.run(python(TRY, str(out)), env=env(), capture_output=True, text=True, check=False)
        assert second.returncode == 2, second.stderr
        message = second.stdout.strip()
        assert message.startswith(
            f"{out} is in use by another cgpo run (pid {os.getpid()} on host {socket.gethostname()}, since "
        )
        assert message.endswith("); wait for it to end, stop it, or choose another output_dir")
        assert time.monotonic() - started < 30  # refused at once, not after waiting (30 s: interpreter start-up)
    finally:
        lock.release()
    # Released: the next run gets it.
    again = subprocess.run(python(TRY, str(out)), env=env(), capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stdout.strip() == "acquired", again.stdout + again.stderr


def test_a_sigkilled_holder_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = start_holder(out)
    try:
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(UserError, match=rf"in use by another cgpo run \(pid {holder.pid} on host "):
            RunLock.acquire(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # No clean-up ran in the killed process; the kernel freed its lock.
    with RunLock.acquire(out) as lock:
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock.path == out / LOCK_FILE


def test_one_process_cannot_lock_twice_and_release_is_idempotent(tmp_path):
    lock = RunLock.acquire(tmp_path)
    with pytest.raises(UserError, match="in use by another cgpo run"):
        RunLock.acquire(tmp_path)
    lock.release()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # the file stays (see the module docstring), emptied
    RunLock.acquire(tmp_path).release()


def test_a_lock_file_without_details_still_refuses(tmp_path):
    import fcntl

    (tmp_path / LOCK_FILE).write_text("")
    with (tmp_path / LOCK_FILE).open("a+") as handle:  # a holder between flock and writing its details
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"\(its pid and host are not recorded yet\)"):
            RunLock.acquire(tmp_path)
