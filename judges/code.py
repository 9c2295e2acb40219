"""The ``code`` judge: run a completion's Python code against the sample's tests in a sandbox.

Per sample, the judge takes the code from the completion, builds a job from the sample's metadata and
runs it in :class:`cgpo_judges._sandbox.Sandbox` (design: judges-reference.md §3; the process layout and
why a solution cannot forge its result are in :mod:`cgpo_judges._code_harness`).

Code extraction (``code_block``):

* ``"last"`` (default) / ``"first"``: the last / first fenced block tagged ``python``, ``py``, ``python3``
  or untagged. With no such block, the whole completion is the code, unless ``require_code_block`` is
  set, in which case the sample is a violation. (A base model completing a HumanEval prompt writes a bare
  function body; a chat model writes a fenced block; both work with the defaults.)
* ``"none"``: the whole completion, fences or not.

Test forms (metadata; the first present wins):

* ``test`` + ``entry_point``: HumanEval. The test code defines ``check(candidate)``; the judge calls it
  with the solution's ``entry_point``. With ``include_prompt`` the program is ``prompt + code`` (the
  model completed the prompt's function), and names the test uses besides the candidate (HumanEval/32's
  ``poly``) come from the prompt alone, so a completion cannot redefine them. One test.
* ``tests``: a list of assert statements (MBPP style), each one test, run against the solution's
  top-level names. An ``entry_point`` next to them (MBPP records often carry one) is accepted and unused:
  the asserts name the function.
* ``io``: a list of ``{"input": str, "output": str}``; the program runs once per case with the input on
  stdin, and its stdout must match the output (``io_match``: ``"lines"`` ignores trailing whitespace on
  each line and trailing blank lines, ``"tokens"`` compares whitespace-separated tokens, ``"exact"``
  compares bytes). Expected outputs never enter the sandbox.

Verdicts: 1 when every expected test ran and passed; 0 when the solution fails a test, times out, runs out
of memory, has a syntax error, exits early, returns a value that is not plain builtin data where one is
compared, or breaks the harness protocol (the policy's fault); -1 when the metadata is missing or
malformed, or the sandbox itself failed or is unavailable (never the policy's fault). Values are
compared in the trusted harness process, never inside the solution's process: an object whose ``__eq__``
is always true cannot pass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cgpo.judging import Judge, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid

from ._sandbox import Isolation, Sandbox, SandboxConfig, SandboxResult

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})


def _default_workers() -> int:
    """Two sandboxes per core: part of each job is kernel latency (namespace setup and teardown), not CPU."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 * max(1, cores)


@dataclass(frozen=True)
class CodeJudgeParams:
    """Parameters of the ``code`` judge (task YAML ``params``).

    Args:
        code_block: Which fenced python block to judge: ``"last"``, ``"first"``, or ``"none"`` (the whole
            completion).
        require_code_block: With ``code_block`` first/last, a completion without a python block is a
            violation instead of being judged as code as a whole.
        include_prompt: The program is ``prompt + code`` (HumanEval completions continue the prompt).
        isolation: ``"namespaces"`` (network, mount and pid namespaces plus rlimits; the default) or
            ``"rlimits"`` (rlimits and a separate uid only, no network isolation). If the chosen
            isolation is unavailable or fails its self-test, every verdict is -1 (fail closed).
        timeout_s: Wall-clock budget for running a sample's tests (all of them); also the CPU limit.
        memory_mb: Address-space limit of the solution's processes (``RLIMIT_AS``).
        file_size_mb: Largest file the solution may write (``RLIMIT_FSIZE``); its private tmpfs holds 4x.
        max_processes: Processes and threads the solution may have (``RLIMIT_NPROC`` under its own uid).
        max_output_kb: Captured stdout per stdin/stdout case, and stdout/stderr kept for diagnostics.
        io_match: How stdin/stdout outputs are compared: ``"lines"``, ``"tokens"`` or ``"exact"``.
        workers: Sandboxes run at once (0: two per available CPU core).
        sandbox_uid_base: The solution runs as uid ``sandbox_uid_base + slot`` when the judge runs as root;
            pick a range no real user or container mapping uses.
        unshare_path: The ``unshare`` executable (util-linux) used for ``"namespaces"``.
        python: Interpreter that runs the harness and the solution (default: the judge's own).
    """

    code_block: Literal["last", "first", "none"] = "last"
    require_code_block: bool = False
    include_prompt: bool = False
    isolation: Isolation = "namespaces"
    timeout_s: float = 10.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 16
    max_output_kb: int = 1024
    io_match: Literal["lines", "tokens", "exact"] = "lines"
    workers: int = 0
    sandbox_uid_base: int = 2_130_706_432
    unshare_path: str = "unshare"
    python: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 3600:
            raise Invalid("timeout_s", f"must be in (0, 3600], got {self.timeout_s}")
        if self.memory_mb < 64:
            raise Invalid("memory_mb", f"must be at least 64 (the interpreter needs ~30 MB), got {self.memory_mb}")
        if self.file_size_mb < 1:
            raise Invalid("file_size_mb", f"must be at least 1, got {self.file_size_mb}")
        if self.max_processes < 1:
            raise Invalid("max_processes", f"must be at least 1, got {self.max_processes}")
        if self.max_output_kb < 1:
            raise Invalid("max_output_kb", f"must be at least 1, got {self.max_output_kb}")
        if self.workers < 0:
            raise Invalid("workers", f"must be 0 (one per core) or positive, got {self.workers}")
        if not 1000 <= self.sandbox_uid_base <= 2**31 - 1 - 4096:
            raise Invalid("sandbox_uid_base", f"must be in [1000, 2**31 - 4097], got {self.sandbox_uid_base}")
        if not self.unshare_path:
            raise Invalid("unshare_path", "must not be empty")


def extract_code(completion: str, code_block: str, require_code_block: bool) -> str | None:
    """The code to judge, or ``None`` when a required python block is missing."""
    if code_block == "none":
        return completion
    blocks = [m.group(2) for m in _FENCE.finditer(completion) if m.group(1).lower() in _PYTHON_TAGS]
    if blocks:
        return blocks[-1] if code_block == "last" else blocks[0]
    return None if require_code_block else completion


class CodeJudge(Judge):
    """Runs the completion's code against assert tests, a HumanEval ``check``, or stdin/stdout pairs, sandboxed."""

    Params = CodeJudgeParams
    kind: ClassVar[Literal["rule"]] = "rule"
    description = "Python code passes the sample's tests (asserts, HumanEval check, or stdin/stdout) in a sandbox"

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p: CodeJudgeParams = self.params
        self.workers = p.workers or _default_workers()
        self.sandbox = Sandbox(
            SandboxConfig(
                isolation=p.isolation,
                timeout_s=p.timeout_s,
                memory_mb=p.memory_mb,
                file_size_mb=p.file_size_mb,
                max_processes=p.max_processes,
                max_output_bytes=p.max_output_kb << 10,
                workers=self.workers,
                uid_base=p.sandbox_uid_base,
                unshare=p.unshare_path,
                python=p.python,
            )
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """Judge every sample; up to ``workers`` sandboxes run at once (the threads only wait on processes)."""
        if len(completions) <= 1:
            return [self._judge_one(p, c, m) for p, c, m in zip(prompts, completions, metadata, strict=True)]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cgpo-code")
            pool = self._pool
        return list(pool.map(self._judge_one, prompts, completions, metadata))

    def _judge_one(self, prompt: str, completion: str, meta: Mapping[str, Any]) -> Verdict:
        p: CodeJudgeParams = self.params
        built = self._build_job(prompt, meta)
        if isinstance(built, Verdict):
            return built
        job, body, expected = built
        code = extract_code(completion, p.code_block, p.require_code_block)
        if code is None:
            return violated("no ```python code block in the completion")
        job["program"] = (prompt + code) if p.include_prompt else code
        result = self.sandbox.run(job, body)
        return self._verdict(result, job["kind"], expected)

    def _build_job(
        self, prompt: str, meta: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], list[str] | int] | Verdict:
        """(header, body, expected) from the metadata, or a -1 verdict for unusable metadata."""
        parts = _test_parts(meta)
        if isinstance(parts, str):
            return failed(parts)
        header, body, expected = parts
        if header["kind"] == "check":
            body["prompt"] = prompt if self.params.include_prompt else None
        return header, body, expected

    @classmethod
    def metadata_problem(cls, metadata: Mapping[str, Any]) -> str | None:
        """Why no test could be built from ``metadata`` (the -1 reason the judge would give), or None."""
        parts = _test_parts(metadata)
        return parts if isinstance(parts, str) else None

    def _verdict(self, result: SandboxResult, kind: str, expected: list[str] | int) -> Verdict:
        if result.status == "sandbox_error":
            return failed(f"sandbox error: {result.detail}"[:500])
        if result.status == "timeout":
            return violated(f"time limit exceeded ({self.params.timeout_s:g} s)")
        if result.status == "error":
            return violated(result.detail[:500] or "the solution failed")
        if kind == "io":
            assert isinstance(expected, list)
            return self._io_verdict(result, expected)
        assert isinstance(expected, int)
        for i, test in enumerate(result.tests[:expected]):
            if test.get("ok") is not True:
                reason = str(test.get("reason", ""))[:400]
                if result.oom and "MemoryError" in reason:
                    reason = f"out of memory ({self.params.memory_mb} MB): {reason}"
                return violated(f"test {i} failed: {reason}")
        if len(result.tests) != expected:  # missing or uncollected tests are failures, never passes
            return violated(f"{len(result.tests)} of {expected} tests reported")
        return satisfied(f"{expected} test{'s' if expected != 1 else ''} passed")

    def _io_verdict(self, result: SandboxResult, expected: list[str]) -> Verdict:
        for i, want in enumerate(expected):
            if i >= len(result.outputs):
                return violated(f"test {i} did not run")
            out = result.outputs[i]
            if out.get("timeout"):
                return violated(f"test {i}: time limit exceeded ({self.params.timeout_s:g} s)")
            if out.get("rc") != 0:
                return violated(f"test {i}: the program exited with status {out.get('rc')}")
            if out.get("truncated"):
                return violated(f"test {i}: output longer than {self.params.max_output_kb} KB")
            if not _same_output(str(out.get("stdout", "")), want, self.params.io_match):
                return violated(f"test {i}: wrong output")
        return satisfied(f"{len(expected)} test{'s' if len(expected) != 1 else ''} passed")

    def close(self) -> None:
        """Stop the thread pool; no sandbox outlives its job, so nothing else needs releasing."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _test_parts(meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str] | int] | str:
    """(header, body, expected) of the sandbox job for this metadata, or why there is none."""
    entry = meta.get("entry_point")
    if "entry_point" in meta and not (isinstance(entry, str) and entry.isidentifier()):
        return "metadata 'entry_point' must be an identifier (the solution's function name)"
    if "test" in meta:
        test = meta["test"]
        if not isinstance(test, str) or entry is None:
            return "metadata 'test' must be a string (HumanEval check code) with an 'entry_point'"
        body = {"test": test, "entry_point": entry}
        return {"kind": "check"}, body, 1
    if "tests" in meta:
        # MBPP-style records often carry the function's name as 'entry_point' too: the asserts name the
        # function themselves, so it is accepted and not needed.
        tests = meta["tests"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            return "metadata 'tests' must be a non-empty list of assert statements"
        return {"kind": "asserts"}, {"tests": list(tests)}, len(tests)
    if "io" in meta:
        cases = meta["io"]
        ok = (
            isinstance(cases, list)
            and cases
            and all(
                isinstance(c, Mapping) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
                for c in cases
            )
        )
        if not ok:
            return "metadata 'io' must be a non-empty list of {input: str, output: str}"
        return {"kind": "io"}, {"inputs": [c["input"] for c in cases]}, [c["output"] for c in cases]
    if entry is not None:
        return "metadata has an 'entry_point' but no tests: add 'test' (HumanEval check code) or 'tests'"
    return "metadata has no tests: expected 'tests', 'test' + 'entry_point', or 'io'"


def _same_output(got: str, want: str, mode: str) -> bool:
    if mode == "exact":
        return got == want
    if mode == "tokens":
        return got.split() == want.split()

    def lines(text: str) -> list[str]:
        rows = [row.rstrip() for row in text.replace("\r\n", "\n").split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    return lines(got) == lines(want)
