"""Trusted harness of the code judge's sandbox: ``python -I -S _code_harness.py RESULT_FD``.

The judge (:mod:`cgpo_judges._sandbox`) runs this file by path, never imports it, and it uses the standard
library only (``-S``: no site-packages; ``-I``: no environment variables, no script directory on
``sys.path``). One process of this script, **H**, runs one job and never executes the solution itself.

Process layout of one job::

    judge --stdin: header frame, body frame-->  H  (trusted; root; PID 1 of a fresh pid namespace in
          <--RESULT_FD: one nonce-tagged report-  |  "namespaces" mode, also in fresh net and mount ones)
                                                  |  fork() *before* the body (tests, nonce) is read
                                                  v
                                                  U  (untrusted: closes RESULT_FD, drops to the job's uid,
                                                      sets rlimits, execs the solution, answers RPCs)

Why the split (judges-reference.md §3.2, §3.3):

* **The report cannot be forged.** Only H holds RESULT_FD and the nonce; U closes the fd before it runs a
  line of solution code, runs as another uid (so it cannot open ``/proc/<H>/fd``), and was forked before
  H read the nonce and the tests, so neither is even in U's memory. Exit codes prove nothing: the verdict
  is the per-test list in H's report, and a solution that exits, is killed or breaks the protocol simply
  leaves its tests failed.
* **Values are compared in the trusted process.** Assert statements and HumanEval ``check`` functions
  run in H. The solution's functions appear there as proxies: each call is an RPC to U, and the return
  value crosses the pipe as tagged JSON, so H only ever sees genuine builtin values (None, bool, int,
  float, complex, str, bytes, list, tuple, dict, set, frozenset). An object whose ``__eq__`` is always
  true, a patched ``builtins.abs`` or a patched ``math.isclose`` lives in U and cannot influence H's
  comparisons. Other objects come back as opaque handles whose comparisons and truth value raise.
* **stdin/stdout tests** run the program once per case in a fresh child with the case's input on fd 0;
  H returns the captured stdout and the judge compares it with the expected output, which never enters
  the sandbox.

Wire format: every frame is a 4-byte big-endian length and a UTF-8 JSON document.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import types
from collections.abc import Callable
from typing import Any

_LEN = struct.Struct(">I")
_MAX_JOB_FRAME = 64 << 20
_MAX_RPC_FRAME = 16 << 20
_MAX_DEPTH = 100
_MAX_ITER_ITEMS = 100_000
_MOUNT_TARGETS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable places on a typical host
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MNT_DETACH = 2, 4, 8, 4096, 16384, 2
_CLONE_NEWUSER, _CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWPID = 0x10000000, 0x00020000, 0x40000000, 0x20000000
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
# Exceptions raised by the solution are re-raised in H under the same name when they are ordinary
# Exception subclasses, so tests that expect e.g. ValueError still work; anything else (SystemExit,
# KeyboardInterrupt, custom classes) becomes RuntimeError and can never stop H.
_SAFE_EXCEPTIONS = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
}
# Modules the solution imported are re-imported in H under the same name (never proxied: a proxied
# ``math`` would run U's possibly patched copy).
_BUILTIN_BASES: tuple[Any, ...] = (bool, int, float, str, bytes, tuple, list, dict, frozenset, set)
_SAFE_MODULES = frozenset(
    [
        "math",
        "cmath",
        "re",
        "string",
        "itertools",
        "functools",
        "collections",
        "heapq",
        "bisect",
        "operator",
        "random",
        "statistics",
        "fractions",
        "decimal",
        "datetime",
        "json",
        "copy",
        "typing",
        "hashlib",
        "array",
        "textwrap",
        "unicodedata",
        "numbers",
        "calendar",
    ]
)


# --------------------------------------------------------------------------------------------- framing


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("stream closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, cap: int) -> Any:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    if n > cap:
        raise ValueError(f"frame of {n} bytes exceeds {cap}")
    return json.loads(_read_exact(fd, n))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _LEN.pack(len(data)) + data


# ------------------------------------------------------------------------------------ value encoding


def _encode(value: Any, on_other: Callable[[Any], Any], depth: int = 0) -> Any:
    """Tagged JSON for builtin data; ``on_other`` handles anything else (a handle, or an error)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str or t is int or t is float:
        return value
    d = depth + 1
    if t is list:
        return {"l": [_encode(v, on_other, d) for v in value]}
    if t is tuple:
        return {"t": [_encode(v, on_other, d) for v in value]}
    if t is dict:
        return {"d": [[_encode(k, on_other, d), _encode(v, on_other, d)] for k, v in value.items()]}
    if t is set:
        return {"s": [_encode(v, on_other, d) for v in value]}
    if t is frozenset:
        return {"f": [_encode(v, on_other, d) for v in value]}
    if t is complex:
        return {"c": [value.real, value.imag]}
    if t is bytes:
        return {"b": value.hex()}
    return on_other(value)


def _decode(obj: Any, on_handle: Callable[[dict[str, Any]], Any], depth: int = 0) -> Any:
    """Inverse of :func:`_encode`; strict: anything unexpected raises ValueError."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is str or t is int or t is float:
        return obj
    if t is not dict or not obj:
        raise ValueError(f"malformed value {str(obj)[:80]}")
    if "h" in obj:
        return on_handle(obj)
    if len(obj) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = obj.items()
    d = depth + 1
    if tag in "ltsf" and type(body) is list:
        items = [_decode(v, on_handle, d) for v in body]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict item")
            out[_decode(pair[0], on_handle, d)] = _decode(pair[1], on_handle, d)
        return out
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    raise ValueError(f"unknown tag {tag!r}")


# ------------------------------------------------------------------------ U: the untrusted worker side


def _to_builtin(value: Any) -> Any:
    """U side: subclasses of builtin containers and scalars (namedtuple, Counter, IntEnum) to their base."""
    for base in _BUILTIN_BASES:
        if isinstance(value, base) and type(value) is not base:
            return base(value)
    return value


def _serve(code: types.CodeType, rfd: int, wfd: int) -> None:
    """U: run the solution, send its top-level names, then answer call/getattr/iter requests forever."""
    handles: dict[int, Any] = {}

    def register(value: Any) -> Any:
        handles[id(value)] = value
        return {"h": id(value), "r": type(value).__name__[:60]}

    def handle(value: Any) -> Any:
        plain = _to_builtin(value)
        return _encode(plain, handle) if plain is not value else register(value)

    def by_handle(obj: dict[str, Any]) -> Any:
        return handles[obj["h"]]

    def send(obj: Any) -> None:
        _write_all(wfd, _frame(obj))

    ns: dict[str, Any] = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        exec(code, ns)  # noqa: S102 - running the solution is the point; U is the sandboxed process
    except BaseException as exc:  # noqa: BLE001 - everything the solution raises is its own failure
        send({"error": f"{type(exc).__name__} while defining the solution: {str(exc)[:300]}"})
        return
    names = {}
    for name, value in ns.items():
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            names[name] = {"m": value.__name__}
            continue
        try:
            names[name] = _encode(value, handle)
        except (ValueError, TypeError, RecursionError):  # too deep to send by value: a proxy instead
            names[name] = register(value)
    send({"names": names})
    while True:
        try:
            req = _read_frame(rfd, _MAX_RPC_FRAME)
        except EOFError:
            return
        try:
            target = handles[req["h"]]
            if req["op"] == "call":
                args = [_decode(a, by_handle) for a in req["args"]]
                kwargs = {k: _decode(v, by_handle) for k, v in req["kwargs"]}
                result = target(*args, **kwargs)
            elif req["op"] == "getattr":
                result = getattr(target, req["name"])
            elif req["op"] == "iter":
                result = []
                for item in target:
                    result.append(item)
                    if len(result) > _MAX_ITER_ITEMS:
                        raise ValueError(f"iterable has more than {_MAX_ITER_ITEMS} items")
            else:
                raise ValueError(f"unknown op {req['op']!r}")
            reply = {"v": _encode(result, handle)}
        except BaseException as exc:  # noqa: BLE001 - reported to H, which fails the test
            reply = {"exc": type(exc).__name__, "msg": str(exc)[:300]}
        data = _frame(reply)
        if len(data) > _MAX_RPC_FRAME:
            data = _frame({"exc": "ValueError", "msg": f"return value too large ({len(data)} bytes)"})
        _write_all(wfd, data)


def _become_untrusted(job: dict[str, Any], keep: tuple[int, ...]) -> None:
    """In a freshly forked child: lose every fd but 0-2 and ``keep``, drop privileges, set rlimits, enter the workdir."""
    fd = 3
    for kept in sorted(set(keep) | {2}):  # close the gaps between the fds we keep, then everything above
        if kept >= fd:
            os.closerange(fd, kept)
            fd = kept + 1
    os.closerange(fd, 1 << 16)
    identity = job["identity"]
    if identity == "setuid":
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    elif identity == "userns":
        # Unprivileged sandbox: H is "root" of a user namespace we cannot map more uids into. A nested
        # user namespace leaves U without any capability over H's namespace (no ptrace, no signals).
        import ctypes

        if ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")
    lim = job["limits"]
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if identity != "none":  # RLIMIT_NPROC counts per real uid and means nothing for root
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    os.chdir(job["workdir"])


def _fork_untrusted(
    job: dict[str, Any], body: Callable[[], None], stdin: int | None, stdout: int | None, keep: tuple[int, ...]
) -> int:
    """Fork U; in the child drop everything, run ``body`` and never return into H's code.

    fd 0 becomes ``stdin`` or /dev/null: H's own stdin still holds the unread body frame (tests, nonce),
    which U must never see.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.setpgid(0, 0)
        os.dup2(stdin if stdin is not None else os.open(os.devnull, os.O_RDONLY), 0)
        if stdout is not None:
            os.dup2(stdout, 1)
        _become_untrusted(job, keep)
        body()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - U's own failure shows up as missing results
        code = 71
        try:  # noqa: SIM105 - contextlib is not imported in the harness to keep startup cheap
            os.write(2, f"{type(exc).__name__}: {str(exc)[:500]}\n".encode(errors="replace"))
        except BaseException:  # noqa: BLE001,S110 - stderr may be closed by the solution
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return 0  # unreachable


# ---------------------------------------------------------------------------- H: the trusted side


class _Dead(BaseException):
    """The worker is gone or out of time; a BaseException so that ``except Exception`` in tests cannot hide it."""


class _Channel:
    """H's end of the RPC pipes to U, with the job's wall-clock deadline."""

    def __init__(self, pid: int, wfd: int, rfd: int, deadline: float) -> None:
        self.pid, self.wfd, self.rfd, self.deadline = pid, wfd, rfd, deadline
        self.buf = b""
        self.dead: str | None = None  # "timeout" | "exited" | "protocol"; sticky
        self.oom = False

    def recv(self) -> Any:
        while True:
            if len(self.buf) >= _LEN.size:
                (n,) = _LEN.unpack(self.buf[: _LEN.size])
                if n > _MAX_RPC_FRAME:
                    self._die("protocol", f"worker sent a frame of {n} bytes")
                if len(self.buf) >= _LEN.size + n:
                    data, self.buf = self.buf[_LEN.size : _LEN.size + n], self.buf[_LEN.size + n :]
                    try:
                        return json.loads(data)
                    except ValueError:
                        self._die("protocol", "worker sent a malformed frame")
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._die("timeout", "time limit exceeded")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    self._die("exited", "the solution's process exited")
                self.buf += chunk

    def _die(self, kind: str, message: str) -> None:
        if self.dead is None:
            self.dead = kind
        raise _Dead(message)

    def request(self, req: dict[str, Any]) -> Any:
        if self.dead is not None:
            raise _Dead(f"worker unavailable ({self.dead})")
        try:
            _write_all(self.wfd, _frame(req))
        except OSError:
            self._die("exited", "the solution's process exited")
        reply = self.recv()
        if type(reply) is not dict:
            self._die("protocol", "worker sent a malformed reply")
        if "exc" in reply:
            name, msg = str(reply.get("exc")), str(reply.get("msg", ""))[:300]
            if name == "MemoryError":
                self.oom = True
            exc_type = _SAFE_EXCEPTIONS.get(name)
            raise exc_type(msg) if exc_type is not None else RuntimeError(f"{name[:60]}: {msg}")
        if "v" not in reply:
            self._die("protocol", "worker sent a malformed reply")
        try:
            return _decode(reply["v"], self.remote)
        except (ValueError, TypeError, KeyError, RecursionError):
            self._die("protocol", "worker sent a malformed value")

    def remote(self, obj: dict[str, Any]) -> _Remote:
        if type(obj.get("h")) is not int:
            raise ValueError("malformed handle")
        return _Remote(self, obj["h"], str(obj.get("r", "object"))[:60])

    def encode_arg(self, value: Any) -> Any:
        def other(v: Any) -> Any:
            if type(v) is _Remote:
                return {"h": v._id}
            for base in _BUILTIN_BASES:
                if isinstance(v, base):  # trusted test data: a namedtuple or Counter passes as its base
                    return _encode(base(v), other)
            raise TypeError(f"cannot pass a {type(v).__name__} to the solution")

        return _encode(value, other)


class _Remote:
    """An object living in U (a solution function, class or instance). Only calls and attributes cross."""

    __slots__ = ("_chan", "_id", "_type")

    def __init__(self, chan: _Channel, ident: int, type_name: str) -> None:
        self._chan, self._id, self._type = chan, ident, type_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enc = self._chan.encode_arg
        req = {
            "op": "call",
            "h": self._id,
            "args": [enc(a) for a in args],
            "kwargs": [[k, enc(v)] for k, v in kwargs.items()],
        }
        return self._chan.request(req)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._chan.request({"op": "getattr", "h": self._id, "name": name})

    def __iter__(self) -> Any:
        return iter(self._chan.request({"op": "iter", "h": self._id}))

    def _untrusted(self, *_: Any) -> Any:
        raise TypeError(f"a {self._type} object returned by the solution cannot be compared or tested for truth")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __contains__ = _untrusted

    def __hash__(self) -> int:
        return hash((_Remote, self._id))

    def __repr__(self) -> str:
        return f"<{self._type} from the solution>"


def _namespace(chan: _Channel, names: dict[str, Any]) -> dict[str, Any]:
    """Test globals: H's own builtins, plain values by value, modules re-imported here, the rest as proxies."""
    ns: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins}
    for name, obj in names.items():
        if type(name) is not str:
            continue
        if type(obj) is dict and "m" in obj:
            if obj["m"] in _SAFE_MODULES:
                ns[name] = __import__(obj["m"], fromlist=["_"])
            continue
        try:
            ns[name] = _decode(obj, chan.remote)
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
    return ns


def _run_test(chan: _Channel, fn: Callable[[], None]) -> tuple[bool, str]:
    try:
        fn()
    except _Dead as exc:
        return False, str(exc)
    except AssertionError as exc:
        return False, f"assertion failed{': ' + str(exc)[:200] if str(exc) else ''}"
    except Exception as exc:  # noqa: BLE001 - any error inside a test fails that test
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    if chan.dead is not None:  # a test swallowed _Dead with a bare except: it still failed
        return False, f"worker unavailable ({chan.dead})"
    return True, ""


def _exec_in(code: types.CodeType, ns: dict[str, Any]) -> Callable[[], None]:
    def run() -> None:
        exec(code, ns)  # noqa: S102 - a trusted assert statement from the dataset, run in H

    return run


def _run_rpc_job(job: dict[str, Any], body: dict[str, Any], chan: _Channel, stop_early: bool) -> dict[str, Any]:
    first = chan.recv()
    if type(first) is not dict or ("error" not in first and "names" not in first):
        chan._die("protocol", "worker sent a malformed manifest")
    if "error" in first:
        return {"status": "error", "detail": str(first["error"])[:400], "tests": []}
    names = first["names"] if type(first["names"]) is dict else {}
    tests: list[dict[str, Any]] = []
    if job["kind"] == "check":
        entry = body["entry_point"]
        ns = _namespace(chan, names)
        if body.get("prompt") is not None:
            # Helpers defined by the (trusted) prompt come from the prompt itself, so a completion
            # cannot redefine e.g. HumanEval/32's ``poly`` that ``check`` uses to verify the answer.
            prompt_ns = {"__name__": "__test__", "__builtins__": builtins}
            try:
                exec(compile(body["prompt"], "<prompt>", "exec"), prompt_ns)  # noqa: S102 - trusted prompt text from the dataset
                ns.update(prompt_ns)
            except Exception:  # noqa: BLE001,S110 - a prompt that is not a program on its own: use the solution's names
                pass
        candidate = names.get(entry)
        if type(candidate) is not dict or "h" not in candidate:
            return {"status": "error", "detail": f"the solution does not define {entry!r}", "tests": []}
        ns[entry] = chan.remote(candidate)
        exec(compile(body["test"], "<test>", "exec"), ns)  # noqa: S102 - trusted test code from the dataset, run in H
        check = ns.get("check")
        if not callable(check):
            raise RuntimeError("the test code defines no check(candidate) function")
        ok, reason = _run_test(chan, lambda: check(ns[entry]))
        tests.append({"ok": ok, "reason": reason})
    else:
        ns = _namespace(chan, names)
        compiled = [compile(t, f"<test {i}>", "exec") for i, t in enumerate(body["tests"])]
        for code in compiled:
            ok, reason = _run_test(chan, _exec_in(code, ns))
            tests.append({"ok": ok, "reason": reason})
            if not ok and stop_early:
                break
    return {"status": "ok", "tests": tests}


def _run_io_job(
    job: dict[str, Any], body: dict[str, Any], code: types.CodeType, deadline: float, stop_early: bool
) -> dict[str, Any]:
    cap = job["limits"]["output_bytes"]
    outputs = []
    for text in body["inputs"]:
        memfd = os.memfd_create("stdin")
        _write_all(memfd, text.encode())
        os.lseek(memfd, 0, os.SEEK_SET)
        rfd, wfd = os.pipe()

        def program() -> None:
            sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            try:
                exec(code, {"__name__": "__main__", "__builtins__": builtins})  # noqa: S102 - runs in the sandboxed child U
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    sys.stdout.flush()
                    os._exit(exc.code if isinstance(exc.code, int) else 1)
            sys.stdout.flush()

        pid = _fork_untrusted(job, program, memfd, wfd, ())
        os.close(wfd)
        os.close(memfd)
        out, truncated, timed_out = b"", False, False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            if len(out) < cap:
                out += chunk[: cap - len(out)]
            else:
                truncated = True
        os.close(rfd)
        status = _reap(pid, deadline) if not timed_out else None
        if status is None:
            timed_out = True
            _kill_group(pid)
        rc = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
        outputs.append(
            {"stdout": out.decode("utf-8", "replace"), "rc": rc, "truncated": truncated, "timeout": timed_out}
        )
        if timed_out or (stop_early and rc != 0):
            break
    return {"status": "ok", "outputs": outputs}


def _reap(pid: int, deadline: float) -> int | None:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _sweep_uid(uid: int) -> None:
    """Kill every process of ``uid`` (``kill(-1)`` sent as that uid), for stragglers that left our process group."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _mount(libc: Any, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    import ctypes

    def enc(v: str | None) -> bytes | None:
        return v.encode() if v is not None else None

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target} failed")


def _expose_interpreter(libc: Any) -> None:
    """Let the solution's uid read the standard library even when it lives under a private home (pyenv in /root).

    The outermost ancestor of ``sys.base_prefix`` that others cannot traverse is covered, in our private
    mount namespace only, by an empty tmpfs into which the prefix alone is bind-mounted back: the solution
    sees the interpreter and nothing else of that directory (no dotfiles, keys or tokens of the host user).
    """
    prefix = os.path.realpath(sys.base_prefix)
    blocked, path = None, "/"
    for part in prefix.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & 0o001:
            blocked = path
            break
    if blocked is None:
        return
    stage = "/tmp/.cgpo-python"
    os.mkdir(stage, 0o755)
    _mount(libc, prefix, stage, None, _MS_BIND | _MS_REC, None)
    _mount(libc, "tmpfs", blocked, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.makedirs(prefix, 0o755, exist_ok=True)
    _mount(libc, stage, prefix, None, _MS_BIND | _MS_REC, None)
    libc.umount2(stage.encode(), _MNT_DETACH)
    os.rmdir(stage)


def _setup(job: dict[str, Any]) -> None:
    """H, before any fork: private tmpfs over world-writable dirs and a fresh /proc (namespaces mode), workdir."""
    if job["namespaces"]:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"size={job['limits']['tmpfs_bytes']},nr_inodes=4096,mode=1777"
        for target in _MOUNT_TARGETS:
            if os.path.isdir(target):
                _mount(libc, "tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, opts)
        _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
        if job["identity"] == "setuid":
            _expose_interpreter(libc)
        job["workdir"] = "/tmp/work"
    else:
        job["workdir"] = os.path.join(os.getcwd(), "work")
    os.mkdir(job["workdir"], 0o700)
    if job["identity"] == "setuid":
        os.chown(job["workdir"], job["uid"], job["uid"])


def _run(result_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    job = _read_frame(0, _MAX_JOB_FRAME)
    report: dict[str, Any]
    try:
        _setup(job)
        try:
            code = compile(job["program"], "<solution>", "exec")
        except (SyntaxError, ValueError) as exc:
            code, syntax_error = None, f"{type(exc).__name__}: {exc}"[:400]
        pid = chan = None
        if code is not None and job["kind"] in ("check", "asserts", "probe"):
            r1, w1 = os.pipe()  # H -> U requests
            r2, w2 = os.pipe()  # U -> H replies
            pid = _fork_untrusted(job, lambda: _serve(code, r1, w2), None, None, (r1, w2))
            os.close(r1)
            os.close(w2)
        body = _read_frame(0, _MAX_JOB_FRAME)  # tests and nonce: read only after U was forked
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not close(0): a later fd must never become fd 0
        deadline = time.monotonic() + job["limits"]["wall_s"]
        if code is None:
            report = {"status": "error", "detail": f"syntax error: {syntax_error}", "tests": []}
        elif job["kind"] == "io":
            report = _run_io_job(job, body, code, deadline, job["stop_early"])
        else:
            assert pid is not None
            chan = _Channel(pid, w1, r2, deadline)
            try:
                if job["kind"] == "probe":
                    first = chan.recv()
                    if type(first) is dict and "names" in first:
                        report = {"status": "ok", "values": first["names"]}
                    else:
                        report = {
                            "status": "error",
                            "detail": str(first.get("error") if type(first) is dict else first)[:400],
                        }
                else:
                    report = _run_rpc_job(job, body, chan, job["stop_early"])
            except _Dead:
                report = {"status": "error", "tests": []}
            if chan.dead is not None:
                report["status"] = {"timeout": "timeout"}.get(chan.dead, "error")
                report["detail"] = {
                    "timeout": "time limit exceeded",
                    "exited": "the solution's process exited before the tests finished",
                    "protocol": "the solution's process broke the harness protocol",
                }[chan.dead]
                if chan.dead == "exited" and pid is not None:
                    status = _reap(pid, time.monotonic() + 0.5)
                    if status is not None and os.WIFSIGNALED(status):
                        sig = os.WTERMSIG(status)
                        report["detail"] += f" (signal {signal.Signals(sig).name})"
                        if sig in (signal.SIGXCPU, signal.SIGKILL):
                            report["status"] = "timeout"
            if chan.oom and report["status"] == "ok":
                report["oom"] = True
        report["nonce"] = body["nonce"]
    except BaseException as exc:  # noqa: BLE001 - H's own failure: the judge maps this to -1
        report = {"status": "sandbox_error", "detail": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        if not job.get("namespaces") and job.get("identity") == "setuid":
            _sweep_uid(job["uid"])
    _write_all(result_fd, json.dumps(report).encode())
    os.close(result_fd)


# ------------------------------------------------------------------------------------ fork server


def _zygote(sock_fd: int) -> None:
    """Fork server (root, namespaces isolation): one pre-imported H template that forks per job.

    Starting an interpreter and importing this module costs several times more CPU than a job, so the judge
    starts ``_code_harness.py --zygote FD`` once. Per job, the judge sends ``{"cwd"}`` and four fds (stdin,
    stdout, stderr, result) over a SOCK_SEQPACKET socket; the zygote forks a child that enters fresh mount,
    network and pid namespaces with ``unshare(2)`` (what ``unshare --net --mount --pid --fork --kill-child``
    does), and replies with a pidfd of that child so the judge can SIGKILL it without pid-reuse races.
    The zygote never reads job data and never runs untrusted code; it exits when the judge closes the socket.
    """
    import ctypes
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(fileno=sock_fd)
    while True:
        while True:  # reap finished jobs
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not done:
                break
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            return
        if not msg:
            return
        try:
            if len(fds) != 4:
                raise ValueError(f"expected 4 fds, got {len(fds)}")
            req = json.loads(msg)
            pid = os.fork()
            if pid == 0:
                _zygote_child(libc, sock, str(req["cwd"]), fds)
            pidfd = os.pidfd_open(pid)
            try:
                socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
            finally:
                os.close(pidfd)
        except Exception as exc:  # noqa: BLE001 - reported to the judge, which returns -1 for the job
            sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _zygote_child(libc: Any, sock: Any, cwd: str, fds: list[int]) -> None:
    """In the forked child: become the job's session leader in fresh namespaces, then run H as their PID 1."""
    code = 72
    try:
        sock.close()
        os.setsid()
        for target, fd in enumerate(fds):  # 0 stdin, 1 stdout, 2 stderr, 3 result
            os.dup2(fd, target)
        os.closerange(4, 1 << 16)
        os.chdir(cwd)
        if libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID) != 0:
            raise OSError(_errno(), "unshare(CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWPID) failed")
        # Mounts made inside must never propagate back to the host.
        _mount(libc, "none", "/", None, _MS_REC | _MS_PRIVATE, None)
        pid = os.fork()  # the first child in the new pid namespace is its PID 1
        if pid == 0:
            # Die with the parent the judge may kill. (Had the parent died before this line, H still ends
            # at its own deadline: the job is bounded either way.)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            _run(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status) & 0xFF
    except BaseException as exc:  # noqa: BLE001 - no report: the judge maps it to -1
        try:
            os.write(2, f"zygote child: {type(exc).__name__}: {exc}\n".encode(errors="replace"))
        finally:
            os._exit(code)
    os._exit(code)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        _zygote(int(sys.argv[2]))
    else:
        _run(int(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)  # in namespaces mode H is PID 1: leaving kills every process the solution started
