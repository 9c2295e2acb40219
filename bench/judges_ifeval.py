"""Throughput of the ``ifeval`` judge on IFEval's 541 prompts with GPT-4's responses, against a naive baseline.

Judge: ``IFEvalJudge(mode=...)`` on all 541 responses as one batch, each with its own instructions from
``input_data.jsonl``. Baseline: the same judge with language identification done by calling
``langdetect.detect`` (seed 0) directly, as IFEval's reference code does; the two differ only there, since
langdetect dominates the cost (91 of the 541 responses need it in strict mode). We also time the prompts
that have no language-dependent instruction (446), which shows the cost of everything else.

Rounds alternate baseline and judge so that load from other processes hits both alike; figures are medians
over rounds. The first judge call of the process (cold per-character and per-word memo tables) is reported
separately, and so are responses per CPU-second of this process (closer to what a core of its own gives
on a shared machine). Every call's verdict counts are checked against the reference (417 strict, 431 loose).

    python bench/judges_ifeval.py --rounds 5 --out bench_ifeval.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval"
LANGUAGE_IDS = {"language:response_language", "change_case:english_capital", "change_case:english_lowercase"}
EXPECTED_SATISFIED = {"strict": 417, "loose": 431}


@contextlib.contextmanager
def naive_language_detection() -> Iterator[None]:
    """Route the judge's language detection through ``langdetect.detect`` itself (the baseline)."""
    import langdetect
    from langdetect.lang_detect_exception import LangDetectException

    import cgpo_judges._ifeval_langdetect as fast

    langdetect.DetectorFactory.seed = 0

    def detect(text: str) -> str:
        try:
            return str(langdetect.detect(text))
        except LangDetectException as exc:
            raise fast.UndetectableLanguage(str(exc)) from None

    def detect_many(texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for text in texts:
            try:
                out.append(detect(text))
            except fast.UndetectableLanguage:
                out.append(None)
        return out

    originals = fast.detect, fast.detect_many
    fast.detect, fast.detect_many = detect, detect_many  # type: ignore[assignment]
    try:
        yield
    finally:
        fast.detect, fast.detect_many = originals  # type: ignore[assignment]


def timed(judge: Any, batch: tuple[list[str], list[str], list[dict[str, Any]]]) -> tuple[float, int, float]:
    """(responses per wall-clock second, satisfied count, responses per CPU second of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    verdicts = judge(*batch)
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
    n = len(batch[1])
    return n / elapsed, sum(v.value == 1 for v in verdicts), n / max(cpu_elapsed, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=["strict", "loose"], default=["strict", "loose"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from cgpo_judges.ifeval import IFEvalJudge

    inputs = [json.loads(line) for line in (args.data / "input_data.jsonl").open()]
    responses = {r["prompt"]: r["response"] for r in map(json.loads, (args.data / "responses_gpt4.jsonl").open())}

    def batch(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        return (
            [r["prompt"] for r in rows],
            [responses[r["prompt"]] for r in rows],
            [{"instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]} for r in rows],
        )

    full = batch(inputs)
    no_language = batch([r for r in inputs if not LANGUAGE_IDS & set(r["instruction_id_list"])])
    report: dict[str, Any] = {
        "data": str(args.data),
        "responses": len(full[1]),
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "modes": {},
    }
    for mode in args.modes:
        judge = IFEvalJudge(mode=mode)
        cold_rate, cold_ok, _ = timed(judge, full)
        base_rates, judge_rates, rest_rates, base_cpu, judge_cpu = [], [], [], [], []
        for _ in range(args.rounds):
            with naive_language_detection():
                rate, ok, cpu_rate = timed(judge, full)
            assert ok == EXPECTED_SATISFIED[mode], (mode, "baseline", ok)
            base_rates.append(rate)
            base_cpu.append(cpu_rate)
            rate, ok, cpu_rate = timed(judge, full)
            assert ok == EXPECTED_SATISFIED[mode], (mode, "judge", ok)
            judge_rates.append(rate)
            judge_cpu.append(cpu_rate)
            rest_rates.append(timed(judge, no_language)[0])
        assert cold_ok == EXPECTED_SATISFIED[mode]
        result = {
            "satisfied": cold_ok,
            "judge_responses_per_s_median": round(statistics.median(judge_rates)),
            "baseline_responses_per_s_median": round(statistics.median(base_rates)),
            "speedup_median": round(statistics.median(j / b for j, b in zip(judge_rates, base_rates, strict=True)), 2),
            # Per CPU-second of this process: what the judge does when it has a core to itself.
            "judge_responses_per_cpu_s_median": round(statistics.median(judge_cpu)),
            "baseline_responses_per_cpu_s_median": round(statistics.median(base_cpu)),
            "judge_first_call_responses_per_s": round(cold_rate),
            "no_language_ids_responses_per_s_median": round(statistics.median(rest_rates)),
            "no_language_ids_responses": len(no_language[1]),
            "judge_rounds": [round(r) for r in judge_rates],
            "baseline_rounds": [round(r) for r in base_rates],
        }
        report["modes"][mode] = result
        print(
            f"{mode}: judge {result['judge_responses_per_s_median']}/s vs baseline "
            f"{result['baseline_responses_per_s_median']}/s (x{result['speedup_median']}); per CPU-s "
            f"{result['judge_responses_per_cpu_s_median']} vs {result['baseline_responses_per_cpu_s_median']}; first call "
            f"{result['judge_first_call_responses_per_s']}/s; without language ids "
            f"{result['no_language_ids_responses_per_s_median']}/s"
        )
    report["loadavg_after"] = os.getloadavg()
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
