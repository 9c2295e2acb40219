"""A small pool of persistent, killable worker processes for work that can hang or exhaust memory.

Judges that call into sympy or math-verify cannot bound that work from inside the caller: SIGALRM
only works in the main thread, a signal handler never runs while C code holds the interpreter (a huge
integer power, ``str()`` of a huge sympy integer), a thread cannot be killed, and
``ProcessPoolExecutor`` cannot kill one running task (judges-reference.md §2.3). This module runs the
work in child processes instead and bounds it twice:

* **soft bound** -- each worker runs one job at a time in its own main thread under
  ``setitimer(ITIMER_REAL)``; the handler raises an exception derived from ``BaseException`` so no
  library's ``except Exception`` swallows it. The worker also sets ``RLIMIT_AS`` (and no core files)
  before importing anything, so a memory blow-up is a ``MemoryError`` inside the worker, not an OOM kill
  of the trainer.
* **hard bound** -- the parent keeps a wall-clock deadline per job. When it passes, the parent SIGKILLs
  the worker, reports the job as ``timeout`` and starts a replacement on the next need.

Workers are fresh interpreters (``subprocess`` fork+exec of ``sys.executable``, the equivalent of
multiprocessing's ``spawn``), never a bare ``fork`` of a possibly threaded or CUDA-initialised trainer,
and the parent's ``__main__`` is not re-imported. They start lazily on the first job, are reused across
calls, and cannot outlive the parent: each sets ``PR_SET_PDEATHSIG`` (SIGKILL) against a long-lived
spawner thread (the signal follows the *thread* that forked the child, so spawning from a short-lived
caller thread would kill idle workers when it exits), ``close()`` kills them, and a ``weakref``
finalizer does the same at garbage collection or interpreter exit.

Only JSON crosses the pipes: one line per job (``{"id", "args"}``) and one per result. Handlers take
and return plain data (strings, numbers, lists, dicts); never sympy objects.

A pool is thread-safe: concurrent :meth:`WorkerPool.map` calls are serialised by a lock (each call
uses every worker), which keeps the bookkeeping simple and is cheap next to the work itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

ErrorKind = Literal["timeout", "memory", "crashed", "exception", "start_failed"]

_PR_SET_PDEATHSIG = 1
_READ_CHUNK = 1 << 16

# In the child, ``sys.path`` is replaced by the parent's before anything else is imported, so the
# handler module resolves exactly as it does in the parent (editable installs, source checkouts).
_BOOTSTRAP = (
    "import json, sys; cfg = json.loads(sys.argv[1]); sys.path[:] = cfg['sys_path']; "
    "import importlib; importlib.import_module(cfg['pool_module'])._child_main(cfg)"
)


@dataclass(frozen=True)
class JobResult:
    """Outcome of one job.

    Attributes:
        ok: The handler returned normally; ``value`` holds its (JSON) return value.
        value: The handler's return value when ``ok``, else ``None``.
        error: When not ``ok``: ``timeout`` (soft or hard bound), ``memory`` (``MemoryError`` under the
            address-space limit), ``crashed`` (the worker died, e.g. a segfault), ``exception`` (the
            handler raised) or ``start_failed`` (no worker could be started).
        detail: A short human-readable explanation of the error.
    """

    ok: bool
    value: Any = None
    error: ErrorKind | None = None
    detail: str = ""


class _SoftTimeout(BaseException):
    """Raised in the worker by SIGALRM. ``BaseException`` so that ``except Exception`` cannot swallow it."""


# ----------------------------------------------------------------------------------------------------
# Child side
# ----------------------------------------------------------------------------------------------------


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _send(out: BinaryIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def _child_main(cfg: dict[str, Any]) -> None:
    """Worker entry point: limits, handler import, then one job per stdin line until EOF."""
    # Die with the spawner thread of the parent; if the parent is already gone, leave at once.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(0)
    # Results go to a private copy of stdout; stray prints from libraries go to stderr instead of
    # corrupting the protocol.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cfg["memory_limit_bytes"]:
            limit = int(cfg["memory_limit_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cfg["setup"]:
            _resolve(cfg["setup"])()
        handler = _resolve(cfg["handler"])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the jobs (-1)
        _send(out, {"startup_error": f"{type(exc).__name__}: {exc}"[:500]})
        os._exit(1)

    armed = False

    def on_alarm(signum: int, frame: Any) -> None:
        if armed:
            raise _SoftTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    soft = float(cfg["soft_timeout_seconds"])
    _send(out, {"ready": True})
    for line in sys.stdin.buffer:
        job = json.loads(line)
        try:
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, soft)
                value = handler(*job["args"])
            finally:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            reply: dict[str, Any] = {"id": job["id"], "ok": True, "value": value}
        except _SoftTimeout:
            reply = {"id": job["id"], "ok": False, "error": "timeout", "detail": f"soft timeout after {soft:g}s"}
        except MemoryError:
            reply = {"id": job["id"], "ok": False, "error": "memory", "detail": "MemoryError under RLIMIT_AS"}
        except Exception as exc:  # noqa: BLE001 - any handler error is reported, the worker lives on
            # The message was built when the exception was raised; cap it, never format objects here.
            detail = f"{type(exc).__name__}: {exc}"[:300]
            reply = {"id": job["id"], "ok": False, "error": "exception", "detail": detail}
        try:
            _send(out, reply)
        except (TypeError, ValueError) as exc:  # a handler returned something JSON cannot carry
            _send(out, {"id": job["id"], "ok": False, "error": "exception", "detail": f"unserialisable: {exc}"})
    os._exit(0)


# ----------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------

_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _forget_spawner() -> None:
    global _spawner
    _spawner = None  # its thread does not exist in a forked child


os.register_at_fork(after_in_child=_forget_spawner)


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a worker from one long-lived thread, so PR_SET_PDEATHSIG follows the process, not a caller."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpo-worker-spawner")
        spawner = _spawner
    future = spawner.submit(
        subprocess.Popen,
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
        env=env,
    )
    return future.result()


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, proc: subprocess.Popen[bytes], start_deadline: float) -> None:
        self.proc = proc
        self.owner_pid = os.getpid()
        self.fd = proc.stdout.fileno()  # type: ignore[union-attr]
        self.buffer = b""
        self.state: Literal["starting", "idle", "busy"] = "starting"
        self.deadline = start_deadline
        self.job_index = -1

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def read_messages(self, max_bytes: int) -> list[dict[str, Any]] | None:
        """Read what is available; complete messages, or ``None`` at EOF or when output exceeds ``max_bytes``."""
        chunk = os.read(self.fd, _READ_CHUNK)
        if not chunk:
            return None
        self.buffer += chunk
        if len(self.buffer) > max_bytes:
            return None
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def exit_description(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)  # it closed its pipe: give the kernel a moment to report why
        code = self.proc.poll()
        if code is None:
            return "worker stopped responding"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"worker killed by {signal.Signals(-code).name}"
        return f"worker exited with code {code}"


def _kill_all(workers: list[_Worker]) -> None:
    while workers:
        worker = workers.pop()
        if worker.owner_pid == os.getpid():  # never the workers of the process we were forked from
            worker.kill()


class WorkerPool:
    """Persistent worker processes that run ``handler(*args)`` per job under soft and hard bounds.

    Args:
        handler: ``module:function`` run in the worker for each job; takes and returns plain JSON data.
        setup: Optional ``module:function`` run once per worker before it reports ready (heavy imports,
            warm-up), so start-up time never counts against a job's deadline.
        num_workers: Upper bound on concurrently running workers.
        timeout_seconds: Hard wall-clock bound per job, enforced by SIGKILL from the parent.
        soft_timeout_seconds: In-worker SIGALRM bound per job; defaults to 80% of ``timeout_seconds`` so
            a cooperative timeout usually wins and the worker survives.
        memory_limit_mb: ``RLIMIT_AS`` of each worker, or ``None`` for no limit.
        start_timeout_seconds: How long a worker may take to import its handler and report ready.
        max_result_bytes: Largest result line accepted from a worker; more is treated as a crash.
    """

    def __init__(
        self,
        handler: str,
        *,
        setup: str | None = None,
        num_workers: int = 2,
        timeout_seconds: float = 5.0,
        soft_timeout_seconds: float | None = None,
        memory_limit_mb: int | None = 1024,
        start_timeout_seconds: float = 120.0,
        max_result_bytes: int = 1 << 20,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")
        self.handler = handler
        self.setup = setup
        self.num_workers = num_workers
        self.timeout_seconds = float(timeout_seconds)
        self.soft_timeout_seconds = (
            float(soft_timeout_seconds) if soft_timeout_seconds is not None else 0.8 * self.timeout_seconds
        )
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_seconds = float(start_timeout_seconds)
        self.max_result_bytes = max_result_bytes
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    # -- public -------------------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._lock:
            return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def map(self, jobs: Sequence[Sequence[Any]]) -> list[JobResult]:
        """Run ``handler(*args)`` for each ``args`` in ``jobs``; results in input order, one per job."""
        if not jobs:
            return []
        with self._lock:
            if os.getpid() != self._owner_pid:
                # A fork of the owner (e.g. a fork-started data loader) shares the owner's pipes: forget
                # those workers without killing them, and start this process's own.
                self._workers.clear()
                self._owner_pid = os.getpid()
            return self._run(jobs)

    def close(self) -> None:
        """Kill every worker. Safe to call twice; a later :meth:`map` starts new workers."""
        with self._lock:
            _kill_all(self._workers)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        cfg = {
            "sys_path": list(sys.path),
            "pool_module": __name__,
            "parent_pid": os.getpid(),
            "handler": self.handler,
            "setup": self.setup,
            "memory_limit_bytes": self.memory_limit_mb * 1024 * 1024 if self.memory_limit_mb else 0,
            "soft_timeout_seconds": self.soft_timeout_seconds,
        }
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        proc = _spawn([sys.executable, "-c", _BOOTSTRAP, json.dumps(cfg)], env)
        worker = _Worker(proc, time.monotonic() + self.start_timeout_seconds)
        self._workers.append(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)

    def _run(self, jobs: Sequence[Sequence[Any]]) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        start_failures = 0
        last_start_error = ""
        for worker in list(self._workers):  # drop workers that died while idle
            if worker.proc.poll() is not None:
                self._discard(worker)

        while pending or any(w.state == "busy" for w in self._workers):
            # Give pending jobs to idle workers; start more workers when there is more work than workers.
            wanted = min(self.num_workers, len(pending) + sum(w.state == "busy" for w in self._workers))
            while len(self._workers) < wanted:
                self._start_worker()
            for worker in self._workers:
                if worker.state == "idle" and pending:
                    index = pending.popleft()
                    try:
                        worker.send({"id": index, "args": list(jobs[index])})
                    except (BrokenPipeError, OSError):  # died while idle: retry the job on another worker
                        pending.appendleft(index)
                        worker.state = "busy"  # so the loop below reaps it
                        worker.deadline = 0.0
                        worker.job_index = -1
                        continue
                    worker.state, worker.job_index = "busy", index
                    worker.deadline = time.monotonic() + self.timeout_seconds

            watched = [w for w in self._workers if w.state in ("starting", "busy")]
            if not watched:
                break
            timeout = max(0.0, min(w.deadline for w in watched) - time.monotonic())
            ready, _, _ = select.select([w.fd for w in watched], [], [], timeout)
            now = time.monotonic()
            for worker in watched:
                messages: list[dict[str, Any]] | None = []
                if worker.fd in ready:
                    try:
                        messages = worker.read_messages(self.max_result_bytes)
                    except (OSError, ValueError):
                        messages = None
                failure: tuple[ErrorKind, str] | None = None
                if messages is None:
                    failure = ("crashed", worker.exit_description())
                for message in messages or ():
                    if worker.state == "starting":
                        if message.get("ready"):
                            worker.state = "idle"
                        else:
                            failure = ("start_failed", str(message.get("startup_error", message))[:500])
                    elif message.get("id") == worker.job_index:
                        results[worker.job_index] = JobResult(
                            ok=bool(message["ok"]),
                            value=message.get("value"),
                            error=message.get("error"),
                            detail=str(message.get("detail", "")),
                        )
                        worker.state, worker.job_index = "idle", -1
                if failure is None and worker.state != "idle" and now >= worker.deadline:
                    if worker.state == "starting":
                        failure = ("start_failed", f"worker not ready after {self.start_timeout_seconds:g}s")
                    else:
                        failure = ("timeout", f"no result within {self.timeout_seconds:g}s; worker killed")
                if failure is None:
                    continue
                kind, detail = failure
                if worker.state == "starting" or kind == "start_failed":
                    start_failures += 1
                    last_start_error = detail
                elif worker.job_index >= 0:
                    results[worker.job_index] = JobResult(ok=False, error=kind, detail=detail)
                self._discard(worker)

            # Workers that cannot start (bad handler, a memory limit below the import footprint) would
            # otherwise be restarted forever: give up on this call's remaining jobs instead.
            if start_failures > self.num_workers and pending:
                detail = f"could not start a worker: {last_start_error}"
                while pending:
                    results[pending.popleft()] = JobResult(ok=False, error="start_failed", detail=detail)

        return [r if r is not None else JobResult(ok=False, error="crashed", detail="no result") for r in results]
