"""Local sandbox for the code judge: runs :mod:`_code_harness` in a throwaway process tree (judges-reference.md §3.2).

One job is one ``python -I -S _code_harness.py RESULT_FD`` process (H), started

* in ``"namespaces"`` isolation with ``unshare --net --mount --pid --fork --kill-child`` as root, or with
  ``unshare --user --map-root-user ...`` otherwise: no network (an empty network namespace), a private
  tmpfs over every world-writable directory and a fresh ``/proc`` (mount namespace), and every process
  the solution starts dies with H (pid namespace);
* in ``"rlimits"`` isolation directly, with the rlimits and the uid switch only (no network isolation):
  an explicit, weaker choice for hosts without namespaces.

In both, the process gets a fresh temporary directory as cwd (always removed), a minimal environment,
``close_fds``, its own session, and the job as JSON on stdin; H sets the rlimits and, as root, runs the
solution under a per-slot uid (``uid_base + slot``) so that ``RLIMIT_NPROC`` contains fork bombs and the
solution can neither write outside its directory nor signal or trace anything else. The parent enforces
a wall-clock deadline and then ``killpg(SIGKILL)``s the whole group, reads stdout and stderr up to a cap
(draining the rest), and takes the verdict only from the nonce-tagged report H writes on a dedicated
pipe (``pass_fds``).

**Fail closed.** Before the first job, a self-test job checks that the configured isolation really holds
(network unreachable, writes to ``/tmp`` invisible on the host, own pid namespace, non-root uid, no
inherited environment). If the tools are missing or the self-test fails, every job returns
``sandbox_error`` (verdict -1) with the reason, and nothing runs on the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("_code_harness.py")
Isolation = Literal["namespaces", "rlimits"]

# Only these reach the sandbox; secrets, HF and proxy variables of the trainer never do.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
}
_LEN = struct.Struct(">I")
_MAX_REPORT = 32 << 20


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of every job; see :class:`cgpo_judges.code.CodeJudge.Params` for the meaning.

    No defaults here: the code judge's ``Params`` hold them (the one place a task YAML overrides), and
    a second copy would drift.
    """

    isolation: Isolation
    timeout_s: float
    memory_mb: int
    file_size_mb: int
    max_processes: int
    max_output_bytes: int
    workers: int
    uid_base: int
    unshare: str
    python: str
    startup_grace_s: float = 10.0


@dataclass(frozen=True)
class SandboxResult:
    """What one job produced.

    Attributes:
        status: ``ok`` (the tests ran; look at ``tests``/``outputs``), ``error`` (the solution failed to
            define itself or broke the harness), ``timeout`` (wall clock or CPU limit), or
            ``sandbox_error`` (our machinery failed; never the solution's fault).
        tests: Per-test ``{"ok": bool, "reason": str}`` for assert and ``check`` jobs, in order; tests
            after the first failure are absent when stopping early.
        outputs: Per-case ``{"stdout", "rc", "truncated", "timeout"}`` for stdin/stdout jobs.
        detail: Short explanation for a non-``ok`` status.
        values: The probe job's observations (self-test only).
        stdout: The first bytes of the sandbox's stdout (diagnostics only, never a verdict).
        stderr: The first bytes of its stderr.
        runtime_s: Wall time of the whole job, process start to exit.
        oom: The solution raised MemoryError at least once.
    """

    status: str
    tests: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""
    values: dict[str, Any] | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    runtime_s: float = 0.0
    oom: bool = False


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _LEN.pack(len(data)) + data


class Sandbox:
    """Runs harness jobs, at most ``config.workers`` at a time, each under its own slot uid. Thread-safe."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(max(1, config.workers)):
            self._slots.put(slot)
        self._probe_lock = threading.Lock()
        self._probed = False
        self._unavailable: str | None = None
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()

    # ------------------------------------------------------------------------------------ isolation

    def _command(self) -> tuple[list[str], str]:
        """The argv prefix and the worker identity mode (``setuid`` | ``userns`` | ``none``) for this host."""
        python = self.config.python or sys.executable
        harness = [python, "-I", "-S", str(HARNESS)]
        root = os.geteuid() == 0
        if self.config.isolation == "rlimits":
            return harness, "setuid" if root else "none"
        unshare = shutil.which(self.config.unshare)
        if unshare is None:
            raise RuntimeError(f"isolation 'namespaces' needs {self.config.unshare!r}, which was not found")
        ns = ["--net", "--mount", "--pid", "--fork", "--kill-child"]
        if root:
            return [unshare, *ns, *harness], "setuid"
        return [unshare, "--user", "--map-root-user", *ns, *harness], "userns"

    def _use_zygote(self) -> bool:
        # The fork server needs unshare(2) of mount/net/pid namespaces, i.e. root; the unshare(1) tool is
        # still required so that a host without it fails closed the same way in every mode.
        return self.config.isolation == "namespaces" and os.geteuid() == 0

    def _get_zygote(self) -> _Zygote:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote(self.config.python or sys.executable)
            return self._zygote

    def cpu_seconds(self) -> float:
        """CPU time of all finished jobs run through the fork server so far (for benchmarks)."""
        with self._zygote_lock:
            zygote = self._zygote
        if zygote is None:
            return 0.0
        fields = Path(f"/proc/{zygote.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime

    def close(self) -> None:
        """Stop the fork server, if one was started. Jobs in flight finish with -1."""
        with self._zygote_lock:
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()

    def unavailable(self) -> str | None:
        """``None`` when the configured isolation works here, else why not. Runs the self-test once."""
        with self._probe_lock:
            if not self._probed:
                try:
                    self._unavailable = self._self_test()
                except Exception as exc:  # noqa: BLE001 - any failure of the probe itself also fails closed
                    self._unavailable = f"{type(exc).__name__}: {exc}"
                self._probed = True
                if self._unavailable is not None:
                    logger.error(
                        "code judge sandbox (isolation=%r) is UNAVAILABLE, every verdict will be -1: %s",
                        self.config.isolation,
                        self._unavailable,
                    )
            return self._unavailable

    def _self_test(self) -> str | None:
        marker = f"/tmp/cgpo-sandbox-probe-{secrets.token_hex(8)}"
        namespaces = self.config.isolation == "namespaces"
        program = "\n".join(
            [
                "import os, socket, math, json, collections, fractions",
                "uid = os.getuid()",
                "env = ','.join(sorted(os.environ))",
                "pids = len([p for p in os.listdir('/proc') if p.isdigit()])",
                "try:",
                f"    open({marker!r}, 'w').close()",
                "    tmp_write = 'ok'",
                "except OSError as exc:",
                "    tmp_write = type(exc).__name__",
                "net = 'not tried'",
                "if " + repr(namespaces) + ":",
                "    try:",
                "        socket.create_connection(('192.0.2.1', 9), timeout=2).close()",  # RFC 5737 TEST-NET-1
                "        net = 'connected'",
                "    except OSError as exc:",
                "        net = f'{type(exc).__name__} errno={exc.errno}'",
            ]
        )
        result = self._run_once({"kind": "probe", "program": program}, {}, slot=None)
        if os.path.exists(marker):
            os.unlink(marker)
            if namespaces:  # rlimits mode has no private /tmp: a documented weakness, not a failed self-test
                return f"self-test: the sandbox wrote {marker} on the host"
        if result.status == "error" and "ModuleNotFoundError" in result.detail:
            return (
                f"the sandboxed uid cannot import the standard library of {self.config.python or sys.executable} "
                f"({result.detail}); use isolation 'namespaces' or an interpreter readable by all users"
            )
        if result.status != "ok" or not isinstance(result.values, dict):
            return f"self-test job failed: {result.status}: {result.detail or result.stderr[-300:].decode(errors='replace')}"
        v = result.values
        problems = []
        if os.geteuid() == 0 and v.get("uid") == 0:
            problems.append("the solution ran as root")
        extra = set(str(v.get("env", "")).split(",")) - set(SANDBOX_ENV) - {""}
        if extra:
            problems.append(f"environment leaked: {sorted(extra)}")
        if namespaces:
            if v.get("net") == "connected" or not str(v.get("net", "")).startswith("OSError"):
                problems.append(f"network reachable ({v.get('net')})")
            if not isinstance(v.get("pids"), int) or v["pids"] > 8:
                problems.append(f"host processes visible ({v.get('pids')} pids)")
        return "self-test: " + "; ".join(problems) if problems else None

    # ----------------------------------------------------------------------------------------- jobs

    def run(self, job: dict[str, Any], body: dict[str, Any]) -> SandboxResult:
        """Run one job. ``job`` (kind, program, ...) is sent before the solution starts; ``body`` (tests) after."""
        reason = self.unavailable()
        if reason is not None:
            return SandboxResult("sandbox_error", detail=f"sandbox unavailable ({self.config.isolation}): {reason}")
        slot = self._slots.get()
        try:
            return self._run_once(job, body, slot)
        finally:
            self._slots.put(slot)

    def _limits(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "wall_s": cfg.timeout_s,
            "cpu_s": int(cfg.timeout_s) + 1,
            "as_bytes": cfg.memory_mb << 20,
            "fsize_bytes": cfg.file_size_mb << 20,
            "tmpfs_bytes": max(4 * cfg.file_size_mb, 16) << 20,
            "nofile": 64,
            "nproc": cfg.max_processes,
            "output_bytes": cfg.max_output_bytes,
        }

    def _run_once(self, job: dict[str, Any], body: dict[str, Any], slot: int | None) -> SandboxResult:
        cfg = self.config
        try:
            argv, identity = self._command()
        except RuntimeError as exc:
            return SandboxResult("sandbox_error", detail=str(exc))
        nonce = secrets.token_hex(16)
        header = {
            "namespaces": cfg.isolation == "namespaces",
            "identity": identity,
            "uid": cfg.uid_base + (slot if slot is not None else max(1, cfg.workers)),
            "limits": self._limits(),
            "stop_early": True,
            **job,
        }
        payload = _frame(header) + _frame({**body, "nonce": nonce})
        tmp = tempfile.mkdtemp(prefix="cgpo-code-")
        start = time.monotonic()
        try:
            os.chmod(tmp, 0o711)  # the solution's uid must traverse it to reach tmp/work (rlimits mode)
            deadline = start + cfg.timeout_s + cfg.startup_grace_s
            if self._use_zygote():
                report, out, err, timed_out, rc = self._run_zygote(payload, tmp, deadline)
            else:
                report, out, err, timed_out, rc = self._run_exec(argv, payload, tmp, deadline)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._parse(report, nonce, out, err, timed_out, rc, time.monotonic() - start)

    def _run_exec(
        self, argv: list[str], payload: bytes, tmp: str, deadline: float
    ) -> tuple[bytes, bytes, bytes, bool, int | None]:
        """One fresh ``[unshare ...] python -I -S _code_harness.py FD`` per job."""
        rfd, wfd = os.pipe()
        try:
            proc = subprocess.Popen(
                [*argv, str(wfd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(wfd,),
                close_fds=True,
                start_new_session=True,
                cwd=tmp,
                env=dict(SANDBOX_ENV),
            )
        except OSError as exc:
            os.close(rfd)
            return b"", b"", f"cannot start the sandbox: {exc}".encode(), False, None
        finally:
            os.close(wfd)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            fds = (proc.stdin.fileno(), rfd, proc.stdout.fileno(), proc.stderr.fileno())
            report, out, err, timed_out = self._communicate(payload, *fds, deadline)
        finally:
            os.close(rfd)
            # Kill the group before reaping: the unreaped leader keeps its pgid from being reused.
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
        return report, out, err, timed_out, proc.returncode

    def _run_zygote(self, payload: bytes, tmp: str, deadline: float) -> tuple[bytes, bytes, bytes, bool, int | None]:
        """Ask the fork server for a job process in fresh namespaces; kill it through its pidfd at the end."""
        pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, result
        child_ends = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
        pidfd = None
        try:
            try:
                pidfd = self._get_zygote().spawn(tmp, child_ends)
            except (OSError, RuntimeError) as exc:
                return b"", b"", f"fork server failed: {exc}".encode(), False, None
            finally:
                for fd in child_ends:
                    os.close(fd)
            report, out, err, timed_out = self._communicate(payload, ours[0], ours[3], ours[1], ours[2], deadline)
        finally:
            if pidfd is not None:
                # The job's namespace init dies with it (PDEATHSIG), and with that every process inside.
                try:  # noqa: SIM105 - explicit
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
                os.close(pidfd)
            for fd in ours:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return report, out, err, timed_out, None

    def _communicate(
        self, payload: bytes, stdin_fd: int, rfd: int, out_fd: int, err_fd: int, deadline: float
    ) -> tuple[bytes, bytes, bytes, bool]:
        """Feed stdin, read the report fd, stdout and stderr (capped, drained) until EOF or the deadline."""
        cap = self.config.max_output_bytes
        bufs = {rfd: bytearray(), out_fd: bytearray(), err_fd: bytearray()}
        caps = {rfd: _MAX_REPORT, out_fd: cap, err_fd: cap}
        sel = selectors.DefaultSelector()
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        view = memoryview(payload)
        open_reads = set(bufs)
        timed_out = False
        try:
            while open_reads:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(left):
                    fd = key.fd
                    if fd == stdin_fd:
                        try:
                            view = view[os.write(fd, view) :]
                        except OSError:  # the harness died or closed stdin: its report tells why
                            view = view[:0]
                        if not view:
                            sel.unregister(fd)
                        continue
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        sel.unregister(fd)
                        open_reads.discard(fd)
                        continue
                    room = caps[fd] - len(bufs[fd])
                    if room > 0:
                        bufs[fd] += chunk[:room]
        finally:
            sel.close()
        return bytes(bufs[rfd]), bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out

    def _parse(
        self, report: bytes, nonce: str, out: bytes, err: bytes, timed_out: bool, rc: int | None, runtime: float
    ) -> SandboxResult:
        def broken(why: str) -> SandboxResult:
            tail = err[-300:].decode(errors="replace").strip()
            return SandboxResult(
                "sandbox_error",
                detail=f"{why} (rc={rc}{'; ' + tail if tail else ''})",
                stdout=out,
                stderr=err,
                runtime_s=runtime,
            )

        if not report:
            if timed_out:
                return broken(
                    f"the harness did not report within {self.config.timeout_s + self.config.startup_grace_s:.0f} s"
                )
            return broken("the harness exited without a report")
        try:
            data = json.loads(report)
        except ValueError:
            return broken("the harness report is not valid JSON")
        if not isinstance(data, dict):
            return broken("the harness report is not an object")
        status = data.get("status")
        if status == "sandbox_error":
            return broken(f"harness failure: {data.get('detail', '')}")
        if not secrets.compare_digest(str(data.get("nonce", "")), nonce):
            return broken("the report does not carry this job's nonce")
        if status not in ("ok", "error", "timeout"):
            return broken(f"unknown status {status!r}")
        return SandboxResult(
            status=status,
            tests=[t for t in data.get("tests", []) if isinstance(t, dict)],
            outputs=[o for o in data.get("outputs", []) if isinstance(o, dict)],
            detail=str(data.get("detail", ""))[:500],
            values=data.get("values") if isinstance(data.get("values"), dict) else None,
            stdout=out,
            stderr=err,
            runtime_s=runtime,
            oom=bool(data.get("oom", False)),
        )


class _Zygote:
    """Parent's handle on the ``_code_harness.py --zygote`` fork server (see :func:`_code_harness._zygote`)."""

    def __init__(self, python: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [python, "-I", "-S", str(HARNESS), "--zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                start_new_session=True,
                cwd="/",
                env=dict(SANDBOX_ENV),
            )
        finally:
            theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, cwd: str, fds: list[int]) -> int:
        """Start one job process with ``fds`` as its stdin, stdout, stderr and result fd; returns its pidfd."""
        with self.lock:  # one request/reply pair at a time keeps replies matched to requests
            socket.send_fds(self.sock, [json.dumps({"cwd": cwd}).encode()], fds)
            msg, got, _, _ = socket.recv_fds(self.sock, 4096, 1)
        if not msg:
            raise RuntimeError("the fork server exited")
        reply = json.loads(msg)
        if "error" in reply or len(got) != 1:
            for fd in got:
                os.close(fd)
            raise RuntimeError(str(reply.get("error", "no pidfd in the reply")))
        return got[0]

    def close(self) -> None:
        self.sock.close()  # the zygote exits on EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
