"""Throughput of the math judge against math-verify called directly, run side by side.

Two workloads, each timed in alternating rounds (ours, baseline, ours, ...) so machine load hits both
alike; the figures are medians over rounds:

* ``gsm8k``: GSM8K test questions with CGPO-style completions ("... The final answer is N."), half
  correct and half off by a small amount, against the raw gold solutions ("... #### N").
* ``latex``: MATH-style LaTeX answers (radicals, polynomials, sets, intervals), all different, half
  equivalent rewritings and half near misses; these go through the worker processes.

Baseline: ``math_verify.parse`` + ``verify`` per sample, in-process, with the default extraction
config on the whole completion (the "naive" way); the gold is given pre-extracted (after ``####``) and
wrapped in ``$...$``, both in its favour.

Usage::

    python bench/judges_math.py --n 2000 --out bench-math.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from cgpo_judges.math import MathJudge

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def latex_triple(i: int) -> tuple[str, str, str]:
    """(gold, equivalent answer, near miss), all different for different ``i``."""
    k = i // 8 + 2
    return [
        (f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2", f"(x+{k + 1})^2"),
        (f"\\frac{{\\sqrt{{2}}}}{{{k}}}", f"\\sqrt{{2}}/{k}", f"\\sqrt{{3}}/{k}"),
        (f"\\{{{k},{k + 1}\\}}", f"\\{{{k + 1},{k}\\}}", f"\\{{{k},{k + 2}\\}}"),
        (f"[{k},{k + 1})", f"[{k}, {k + 1})", f"({k},{k + 1}]"),
        (f"{k}\\sqrt{{3}}", f"\\sqrt{{{3 * k * k}}}", f"{k + 1}\\sqrt{{3}}"),
        (f"\\frac{{\\pi}}{{{k}}}", f"\\pi/{k}", f"\\pi/{k + 1}"),
        (f"(-\\infty, {k}]", f"(-\\infty,{k}]", f"(-\\infty,{k})"),
        (f"{k}x-{k}", f"{k}(x-1)", f"{k}(x+1)"),
    ][i % 8]


def gsm8k_samples(n: int, rng: random.Random) -> tuple[list[str], list[str], list[dict], list[str]]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()] if GSM8K.exists() else []
    if not rows:  # synthetic fallback with the same shape
        rows = [
            {"question": f"What is {a} + {a}?", "answer": f"{a}+{a}={2 * a}\n#### {2 * a:,}"} for a in range(1, 500)
        ]
    prompts, completions, metadata, golds = [], [], [], []
    for i in range(n):
        row = rows[i % len(rows)]
        gold = row["answer"].rsplit("####", 1)[1].strip()
        value = int(gold.replace(",", ""))
        said = value if i % 2 == 0 else value + rng.choice([-2, -1, 1, 2, 10])
        steps = row["answer"].rsplit("####", 1)[0].strip()
        prompts.append(row["question"])
        completions.append(f"{steps}\nThe final answer is {said:,}.")
        metadata.append({"answer": row["answer"]})
        golds.append(gold)
    return prompts, completions, metadata, golds


def latex_samples(n: int) -> tuple[list[str], list[str], list[dict], list[str]]:
    prompts, completions, metadata, golds = [], [], [], []
    for i in range(n):
        gold, same, miss = latex_triple(i)
        answer = same if (i // 8) % 2 == 0 else miss
        prompts.append("Solve.")
        completions.append(f"We simplify step by step.\nThe final answer is ${answer}$.")
        metadata.append({"answer": gold})
        golds.append(gold)
    return prompts, completions, metadata, golds


def baseline(completions: list[str], golds: list[str]) -> list[int]:
    from math_verify import parse, verify

    # Gold wrapped in $...$ so that math-verify's LaTeX extraction finds bare LaTeX golds.
    return [
        int(verify(parse(f"${gold}$"), parse(completion))) for completion, gold in zip(completions, golds, strict=True)
    ]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def run_workload(name, judge, samples, rounds):
    prompts, completions, metadata, golds = samples
    n = len(completions)
    ours_s, base_s = [], []
    ours = base = None
    for _ in range(rounds):
        elapsed, verdicts = timed(judge, prompts, completions, metadata)
        ours_s.append(elapsed)
        ours = [v.value for v in verdicts]
        elapsed, base = timed(baseline, completions, golds)
        base_s.append(elapsed)
    ours_rate, base_rate = n / statistics.median(ours_s), n / statistics.median(base_s)
    agree = sum(o == b for o, b in zip(ours, base, strict=True)) / n
    result = {
        "workload": name,
        "n": n,
        "rounds": rounds,
        "ours_verdicts_per_s": round(ours_rate, 1),
        "baseline_verdicts_per_s": round(base_rate, 1),
        "speedup": round(ours_rate / base_rate, 2),
        "ours_seconds": [round(s, 4) for s in ours_s],
        "baseline_seconds": [round(s, 4) for s in base_s],
        "ours_counts": {str(v): ours.count(v) for v in (1, 0, -1)},
        "agreement_with_baseline": round(agree, 4),
    }
    print(
        f"{name:6s} n={n}: ours {ours_rate:,.0f}/s  baseline {base_rate:,.0f}/s  "
        f"ratio {ours_rate / base_rate:.1f}x  agreement {agree:.3f}  ours {result['ours_counts']}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="samples in the gsm8k workload (latex: n/10)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds; medians are reported")
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    judge = MathJudge(answer_format="final_answer", num_workers=args.workers, timeout_seconds=5.0)
    # Persistent workers are part of the design: start them before timing, like a trainer's first step.
    judge(["p"], ["The final answer is $x$."] * 1, [{"answer": "x"}])
    results = {
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "workloads": [
            run_workload("gsm8k", judge, gsm8k_samples(args.n, rng), args.rounds),
            run_workload("latex", judge, latex_samples(max(8, args.n // 10)), args.rounds),
        ],
    }
    judge.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
