"""The sandboxed code judge: correctness on HumanEval, the attack table of judges-reference.md §3.3, fail-closed."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from cgpo.schema import SchemaError, build
from cgpo_judges.code import CodeJudge, CodeJudgeParams, extract_code

TIMEOUT = 2.0


def _namespaces_available() -> bool:
    return os.name == "posix" and shutil.which("unshare") is not None


needs_sandbox = pytest.mark.skipif(not _namespaces_available(), reason="needs unshare(1) on Linux")


@pytest.fixture(scope="module")
def judge():
    j = CodeJudge(timeout_s=TIMEOUT, max_processes=8, memory_mb=512)
    problem = j.sandbox.unavailable()
    if problem is not None:
        pytest.skip(f"sandbox unavailable here: {problem}")
    yield j
    j.close()


@pytest.fixture(scope="module")
def humaneval(shared_data: Path) -> list[dict]:
    path = shared_data / "humaneval" / "HumanEval.jsonl"
    if not path.exists():
        pytest.skip("HumanEval.jsonl is not present")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _asserts(judge, programs: list[str], tests: list[str]) -> list:
    return judge([""] * len(programs), programs, [{"tests": tests}] * len(programs))


# ------------------------------------------------------------------------------------------ pure parts


def test_extract_code_fences():
    text = "intro\n```python\nx = 1\n```\nmore\n```py\nx = 2\n```\n```bash\nrm -rf /\n```\n"
    assert extract_code(text, "last", False) == "x = 2\n"
    assert extract_code(text, "first", False) == "x = 1\n"
    assert extract_code(text, "none", False) == text
    assert extract_code("def f(): pass", "last", False) == "def f(): pass"
    assert extract_code("def f(): pass", "last", True) is None
    assert extract_code("```\nuntagged = True\n```", "last", True) == "untagged = True\n"


def test_params_validated_by_schema():
    with pytest.raises(SchemaError, match="timeout_s"):
        build(CodeJudgeParams, {"timeout_s": 0})
    with pytest.raises(SchemaError, match="isolation"):
        build(CodeJudgeParams, {"isolation": "docker"})
    with pytest.raises(SchemaError, match="memory_mb"):
        build(CodeJudgeParams, {"memory_mb": 8})
    assert build(CodeJudgeParams, {"isolation": "rlimits", "workers": 3}).workers == 3


def test_missing_or_malformed_metadata_is_minus_one():
    j = CodeJudge(unshare_path="/nonexistent/unshare")  # never reaches the sandbox
    out = j(
        ["", "", "", ""],
        ["x = 1"] * 4,
        [{}, {"tests": []}, {"io": [{"input": "1"}]}, {"test": "x", "entry_point": "1a"}],
    )
    assert [v.value for v in out] == [-1, -1, -1, -1]
    assert "no tests" in out[0].reason
    assert out[3].reason == "metadata 'entry_point' must be an identifier (the solution's function name)"
    out = j(["", ""], ["x = 1"] * 2, [{"entry_point": "f"}, {"test": "def check(c): pass"}])
    assert [v.value for v in out] == [-1, -1]
    assert "an 'entry_point' but no tests" in out[0].reason
    assert "with an 'entry_point'" in out[1].reason
    j.close()


@needs_sandbox
def test_mbpp_records_with_tests_and_an_entry_point_are_judged_by_their_asserts(judge):
    # The shape of an MBPP(+) record: the asserts, plus the function's name.
    meta = {"tests": ["assert remove_odd([1, 2, 3, 4]) == [2, 4]", "assert remove_odd([5]) == []"],
            "entry_point": "remove_odd"}  # fmt: skip
    out = judge(
        ["", ""],
        ["def remove_odd(xs):\n    return [x for x in xs if x % 2 == 0]\n", "def remove_odd(xs):\n    return xs\n"],
        [meta, meta],
    )
    assert [v.value for v in out] == [1, 0]
    assert out[0].reason == "2 tests passed"
    assert "test 0 failed" in out[1].reason


# --------------------------------------------------------------------------------------- fail closed


def test_fail_closed_when_isolation_unavailable():
    j = CodeJudge(unshare_path="/nonexistent/unshare")
    out = j(["", ""], ["def f():\n    return 1\n"] * 2, [{"tests": ["assert f() == 1"]}] * 2)
    assert [v.value for v in out] == [-1, -1]
    assert all("sandbox unavailable" in v.reason for v in out)
    j.close()


@needs_sandbox
def test_fail_closed_when_self_test_fails(monkeypatch):
    j = CodeJudge()
    # Simulate an isolation that does not hold: the self-test sees a network connection succeed.
    real = j.sandbox._run_once

    def leaky(job, body, slot):
        result = real(job, body, slot)
        if job["kind"] == "probe" and result.values is not None:
            result.values["net"] = "connected"
        return result

    monkeypatch.setattr(j.sandbox, "_run_once", leaky)
    out = j([""], ["def f():\n    return 1\n"], [{"tests": ["assert f() == 1"]}])
    assert out[0].value == -1 and "network reachable" in out[0].reason
    j.close()


# --------------------------------------------------------------------------------------------- HumanEval


@needs_sandbox
def test_humaneval_sample_canonical_pass_broken_fail(judge, humaneval):
    he = CodeJudge(include_prompt=True, timeout_s=10)
    rows = humaneval[::16][:10]
    meta = [{"test": r["test"], "entry_point": r["entry_point"]} for r in rows]
    prompts = [r["prompt"] for r in rows]
    good = he(prompts, [r["canonical_solution"] for r in rows], meta)
    assert [v.value for v in good] == [1] * len(rows), [v.reason for v in good]
    broken = he(prompts, ["    return None\n"] * len(rows), meta)
    assert [v.value for v in broken] == [0] * len(rows), [v.reason for v in broken]
    he.close()


@needs_sandbox
def test_humaneval_off_by_one_fails(humaneval):
    he = CodeJudge(include_prompt=True)
    row = next(r for r in humaneval if r["entry_point"] == "add")  # HumanEval/53: return x + y
    meta = [{"test": row["test"], "entry_point": "add"}] * 3
    out = he([row["prompt"]] * 3, ["    return x + y\n", "    return x + y + 1\n", "    return x + y - 1\n"], meta)
    assert [v.value for v in out] == [1, 0, 0]
    he.close()


@needs_sandbox
def test_humaneval_prompt_helpers_cannot_be_redefined(humaneval):
    """HumanEval/32's check verifies with the prompt's ``poly``; a completion redefining it must not pass."""
    he = CodeJudge(include_prompt=True)
    row = next(r for r in humaneval if r["entry_point"] == "find_zero")
    cheat = "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n"
    out = he(
        [row["prompt"]] * 2,
        [row["canonical_solution"], cheat],
        [{"test": row["test"], "entry_point": "find_zero"}] * 2,
    )
    assert [v.value for v in out] == [1, 0]
    he.close()


@needs_sandbox
@pytest.mark.slow
def test_humaneval_all_canonical_solutions_pass(humaneval):
    he = CodeJudge(include_prompt=True, timeout_s=20)
    out = he(
        [r["prompt"] for r in humaneval],
        [r["canonical_solution"] for r in humaneval],
        [{"test": r["test"], "entry_point": r["entry_point"]} for r in humaneval],
    )
    failures = [(r["task_id"], v.reason) for r, v in zip(humaneval, out, strict=True) if v.value != 1]
    assert not failures
    assert len(out) == 164
    he.close()


# ----------------------------------------------------------------------------------- asserts and io


@needs_sandbox
def test_asserts_pass_fail_and_syntax_error(judge):
    tests = ["assert add(1, 2) == 3", "assert add('a', 'b') == 'ab'", "assert abs(half(3) - 1.5) < 1e-9"]
    out = _asserts(
        judge,
        [
            "def add(a, b):\n    return a + b\ndef half(x):\n    return x / 2\n",
            "def add(a, b):\n    return a + b\ndef half(x):\n    return x // 2\n",
            "def add(a, b)\n    return a + b\n",
            "def add(a, b):\n    return a + b\n",  # half is missing
        ],
        tests,
    )
    assert [v.value for v in out] == [1, 0, 0, 0]
    assert "3 tests passed" in out[0].reason
    assert "test 2 failed" in out[1].reason
    assert "syntax error" in out[2].reason
    assert "NameError" in out[3].reason


@needs_sandbox
def test_code_block_is_extracted_from_chat_completion(judge):
    completion = "Here you go:\n```python\ndef sq(x):\n    return x * x\n```\nHope it helps."
    assert judge([""], [completion], [{"tests": ["assert sq(3) == 9"]}])[0].value == 1


@needs_sandbox
def test_io_cases(judge):
    io = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6"}]
    programs = [
        "a, b = map(int, input().split())\nprint(a + b)\n",
        "import sys\na, b = map(int, open(0).read().split())\nprint(a + b)\nsys.exit(0)\n",
        "a, b = map(int, input().split())\nprint(a - b)\n",
        "a, b = map(int, input().split())\nprint(a + b)\nraise ValueError('late')\n",
        "import sys\nsys.exit(3)\n",
    ]
    out = judge([""] * len(programs), programs, [{"io": io}] * len(programs))
    assert [v.value for v in out] == [1, 1, 0, 0, 0], [v.reason for v in out]
    assert "wrong output" in out[2].reason and "exited with status" in out[3].reason


# ---------------------------------------------------------------------------------- hostile programs

EXIT_EARLY = [
    "exit(0)\ndef f():\n    return 2\n",
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "import posix\nposix._exit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "def f():\n    import sys\n    sys.exit(0)\n",
    "def f():\n    import os\n    os._exit(0)\n",
    "def f():\n    raise SystemExit(0)\n",
    "def f():\n    raise KeyboardInterrupt\n",
]


@needs_sandbox
def test_exiting_early_never_passes(judge):
    out = _asserts(judge, EXIT_EARLY, ["assert f() == 1"])
    assert [v.value for v in out] == [0] * len(EXIT_EARLY), [v.reason for v in out]


ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __bool__(self): return True
    def __sub__(self, other): return self
    def __abs__(self): return 0
def f(*args):
    return Anything()
"""


@needs_sandbox
def test_always_true_eq_objects_never_pass(judge, humaneval):
    tests = ["assert f(1) == 42", "assert abs(f(1) - 3.5) < 1e-6", "assert f(2)", "assert not f(3) != 7"]
    for t in tests:
        assert _asserts(judge, [ALWAYS_EQUAL], [t])[0].value == 0, t
    # subclasses of builtins with a lying __eq__ cross as their plain base value, so they are judged by value
    liar = "class L(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\ndef f(x):\n    return L(0)\n"
    assert _asserts(judge, [liar], ["assert f(1) == 42"])[0].value == 0
    he = CodeJudge(include_prompt=True)
    row = next(r for r in humaneval if r["entry_point"] == "add")
    assert (
        he(
            [row["prompt"]],
            ["    return __import__('builtins').type('A', (), {'__eq__': lambda s, o: True})()\n"],
            [{"test": row["test"], "entry_point": "add"}],
        )[0].value
        == 0
    )
    he.close()


@needs_sandbox
def test_patching_builtins_and_modules_in_the_solution_does_not_help(judge):
    programs = [
        "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 100.0\n",
        "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 100.0\n",
        "import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\ndef f(x):\n    return 100.0\n",
    ]
    tests = ["import math\nassert abs(f(1) - 3.5) < 1e-6 and math.isclose(f(1), 3.5)"]
    assert [v.value for v in _asserts(judge, programs, tests)] == [0, 0, 0]


FORGE = """
import os, sys, json
fake = json.dumps({"status": "ok", "tests": [{"ok": True, "reason": ""}] * 3, "nonce": "0" * 32})
for fd in range(0, 256):
    for payload in (fake.encode(), len(fake).to_bytes(4, "big") + fake.encode()):
        try:
            os.write(fd, payload)
        except OSError:
            pass
print(fake)
sys.stdout.flush()
def f(x):
    return -1
"""


@needs_sandbox
def test_forged_reports_on_every_fd_never_pass(judge):
    out = _asserts(judge, [FORGE], ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"])
    assert out[0].value == 0, out[0].reason


@needs_sandbox
def test_sleep_and_infinite_loops_time_out(judge):
    programs = [
        "import time\ndef f():\n    time.sleep(1000)\n",
        "def f():\n    while True:\n        pass\n",
        "import time\ntime.sleep(1000)\n",
        "import threading, time\nthreading.Thread(target=lambda: time.sleep(1000)).start()\ndef f():\n    while True: pass\n",
    ]
    start = time.monotonic()
    out = _asserts(judge, programs, ["assert f() == 1"])
    assert [v.value for v in out] == [0] * len(programs)
    assert all("time limit" in v.reason for v in out), [v.reason for v in out]
    assert time.monotonic() - start < 4 * TIMEOUT + 10


@needs_sandbox
def test_memory_bomb_is_contained(judge):
    programs = [
        "def f():\n    return len(bytearray(8 << 30))\n",
        "x = [bytearray(1 << 20) for _ in range(100000)]\ndef f():\n    return 1\n",
    ]
    out = _asserts(judge, programs, ["assert f() == 1"])
    assert [v.value for v in out] == [0, 0], [v.reason for v in out]
    assert "MemoryError" in out[0].reason


@needs_sandbox
def test_huge_output_is_capped(judge):
    program = "import sys\ndef f():\n    while True:\n        sys.stdout.write('x' * 65536)\n"
    start = time.monotonic()
    result = judge.sandbox.run({"kind": "asserts", "program": program}, {"tests": ["assert f() == 1"]})
    assert result.status == "timeout"
    assert len(result.stdout) <= judge.sandbox.config.max_output_bytes
    assert time.monotonic() - start < TIMEOUT + 10
    io = judge([""], ["while True:\n    print('y' * 100000)\n"], [{"io": [{"input": "", "output": "y"}]}])
    assert io[0].value == 0


NETWORK = """
import socket
def f():
    for host in ("1.1.1.1", "127.0.0.1", "10.0.0.1"):
        try:
            socket.create_connection((host, 80), timeout=1).close()
            return "connected"
        except OSError as exc:
            last = f"{exc.errno}"
    return last
"""


@needs_sandbox
def test_network_is_unreachable(judge):
    out = _asserts(judge, [NETWORK], ["assert f() == 'connected'"])
    assert out[0].value == 0
    out = _asserts(judge, [NETWORK], ["assert f() in ('101', '99')"])  # ENETUNREACH / EADDRNOTAVAIL
    assert out[0].value == 1, out[0].reason


@needs_sandbox
def test_writes_outside_the_workdir_do_not_reach_the_host(judge, repo_root):
    name = f"cgpo-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", str(repo_root / name), f"/{name}"]
    program = "import os\ndef f(path):\n    with open(path, 'w') as fh:\n        fh.write('pwned')\n    return os.path.exists(path)\n"
    out = judge(
        [""] * len(targets), [program] * len(targets), [{"tests": [f"assert f({t!r}) is True"]} for t in targets]
    )
    for target, _verdict in zip(targets, out, strict=True):
        assert not os.path.exists(target), f"sandbox wrote {target}"
    # /tmp and friends are private tmpfs (the write succeeds inside, invisibly); the repo and / are not writable
    assert [v.value for v in out[3:]] == [0, 0]
    local = judge(
        [""],
        ["def f():\n    open('scratch.txt', 'w').write('ok')\n    return open('scratch.txt').read()\n"],
        [{"tests": ["assert f() == 'ok'"]}],
    )
    assert local[0].value == 1, local[0].reason


@needs_sandbox
def test_environment_secrets_are_not_visible(judge, monkeypatch):
    monkeypatch.setenv("CGPO_FAKE_SECRET", "hunter2")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    program = (
        "import os\ndef f():\n    return os.environ.get('CGPO_FAKE_SECRET', '') + os.environ.get('HF_TOKEN', '')\n"
    )
    out = _asserts(judge, [program], ["assert 'hunter2' in f() or 'hf_fake' in f()"])
    assert out[0].value == 0
    reader = "def f():\n    return open('/proc/1/environ', 'rb').read().decode(errors='replace')\n"
    assert _asserts(judge, [reader], ["assert 'hunter2' in f()"])[0].value == 0


@needs_sandbox
def test_killing_the_parent_or_everything_fails_only_the_sample(judge):
    programs = [
        "import os, signal\ndef f():\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n",
        "import os, signal\ndef f():\n    os.kill(-1, signal.SIGKILL)\n    return 1\n",
        "import os, signal\nos.kill(1, signal.SIGKILL)\ndef f():\n    return 1\n",
    ]
    parent = os.getppid()  # the test's own parent; 1 already when pytest was started detached (nohup ... &)
    out = _asserts(judge, programs, ["assert f() == 1"])
    # ppid is the namespace's init (another uid): EPERM, so the function still returns 1 and passes honestly,
    # or it kills only its own processes; nothing outside the sandbox is touched and no verdict is -1.
    assert all(v.value in (0, 1) for v in out), [v.reason for v in out]
    assert os.getppid() == parent  # our parent survived: it would be reparented to 1 if it had been killed
    again = _asserts(judge, ["def f():\n    return 1\n"], ["assert f() == 1"])
    assert again[0].value == 1


def _processes_of(uid_lo: int, uid_hi: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if uid_lo <= os.stat(f"/proc/{entry}").st_uid < uid_hi:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC only contains a fork bomb under a dedicated uid (root)")
def test_fork_bomb_is_contained(judge):
    """Runs only where verified safe: non-root uid with RLIMIT_NPROC=8, inside a pid namespace killed as a whole."""
    base = judge.params.sandbox_uid_base
    program = "import os\ndef f():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    out = _asserts(judge, [program], ["assert f() == 1"])
    assert out[0].value == 0
    deadline = time.monotonic() + 5
    while _processes_of(base, base + 4096) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_of(base, base + 4096), "sandbox processes survived their job"


@needs_sandbox
def test_concurrent_calls_from_threads(judge):
    results: dict[int, list[int]] = {}

    def work(k: int) -> None:
        progs = [f"def f():\n    return {k}\n", "def f():\n    return -1\n"]
        results[k] = [v.value for v in _asserts(judge, progs, [f"assert f() == {k}"])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [1, 0] for k in range(4)}


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and a world-readable system python"
)
def test_rlimits_isolation_with_a_readable_interpreter():
    j = CodeJudge(isolation="rlimits", python="/usr/bin/python3", timeout_s=TIMEOUT)
    if j.sandbox.unavailable() is not None:
        pytest.skip(f"rlimits sandbox unavailable: {j.sandbox.unavailable()}")
    out = _asserts(
        j,
        ["def f():\n    return 1\n", ALWAYS_EQUAL, EXIT_EARLY[2], "import time\ndef f():\n    time.sleep(100)\n"],
        ["assert f() == 1"],
    )
    assert [v.value for v in out] == [1, 0, 0, 0]
    j.close()
