"""Throughput of the sandboxed ``code`` judge against a naive baseline, on HumanEval canonical solutions.

Baseline: one fresh ``python -I -c "prompt + solution + test + check(entry_point)"`` per sample, run one
after another, exit code 0 = pass (what a minimal HumanEval runner does, with no sandbox at all).
Judge: ``CodeJudge(include_prompt=True)`` on the same samples as one batch (namespaces isolation, fork
server, ``workers`` sandboxes at once). Rounds alternate baseline and judge so that load from other
processes hits both alike; the figures are medians over rounds.

    python bench/judges_code.py --n 200 --rounds 3 --out bench_code.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline(rows: list[dict]) -> tuple[float, int]:
    start, passed = time.perf_counter(), 0
    for r in rows:
        program = r["prompt"] + r["canonical_solution"] + "\n" + r["test"] + f"\ncheck({r['entry_point']})\n"
        proc = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, timeout=30, check=False)
        passed += proc.returncode == 0
    return len(rows) / (time.perf_counter() - start), passed


def judged(judge, rows: list[dict]) -> tuple[float, int]:
    start = time.perf_counter()
    verdicts = judge(
        [r["prompt"] for r in rows],
        [r["canonical_solution"] for r in rows],
        [{"test": r["test"], "entry_point": r["entry_point"]} for r in rows],
    )
    return len(rows) / (time.perf_counter() - start), sum(v.value == 1 for v in verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=164, help="samples per round (HumanEval cycled)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="judge sandboxes at once (0: the judge's default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from cgpo_judges.code import CodeJudge

    base_rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = [base_rows[i % len(base_rows)] for i in range(args.n)]
    judge = CodeJudge(include_prompt=True, workers=args.workers)
    t0 = time.perf_counter()
    problem = judge.sandbox.unavailable()
    startup = time.perf_counter() - t0
    if problem is not None:
        print(f"sandbox unavailable: {problem}")
        return 1
    base_rates, judge_rates, base_pass, judge_pass, base_cpu, judge_cpu = [], [], [], [], [], []
    for rnd in range(args.rounds):
        c0 = children_cpu()
        b_rate, b_ok = baseline(rows)
        base_cpu.append((children_cpu() - c0) / len(rows) * 1000)
        c0 = judge.sandbox.cpu_seconds()
        j_rate, j_ok = judged(judge, rows)
        judge_cpu.append((judge.sandbox.cpu_seconds() - c0) / len(rows) * 1000)
        base_rates.append(b_rate)
        judge_rates.append(j_rate)
        base_pass.append(b_ok)
        judge_pass.append(j_ok)
        print(
            f"round {rnd}: baseline {b_rate:.1f}/s ({b_ok}/{len(rows)} pass), judge {j_rate:.1f}/s ({j_ok}/{len(rows)} pass)"
        )
    result = {
        "n": args.n,
        "rounds": args.rounds,
        "workers": judge.workers,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "loadavg_at_end": os.getloadavg(),
        "sandbox_startup_s": round(startup, 3),
        "baseline_programs_per_s": round(statistics.median(base_rates), 2),
        "judge_programs_per_s": round(statistics.median(judge_rates), 2),
        "judge_over_baseline": round(
            statistics.median(j / b for j, b in zip(judge_rates, base_rates, strict=True)), 2
        ),
        # CPU per program (user + sys of every process it used): less sensitive to other load than rates.
        "baseline_cpu_ms_per_program": round(statistics.median(base_cpu), 2),
        "judge_cpu_ms_per_program": round(statistics.median(judge_cpu), 2),
        "judge_capacity_on_idle_cores_per_s": round(
            1000 * len(os.sched_getaffinity(0)) / statistics.median(judge_cpu), 1
        ),
        "baseline_passed": base_pass,
        "judge_passed": judge_pass,
    }
    judge.close()
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
