"""The real-model study: SmolLM2-135M-Instruct, two tasks, two optimizers, held-out IFEval and GSM8K.

::

    python examples/real_model/run.py --out runs/real_model            # the study (about an hour, 2 CPU cores)
    python examples/real_model/run.py --out runs/real_model --report   # table.md and plots from results.json
    python examples/real_model/run.py --out runs/real_model --report --readme examples/real_model/README.md
    python examples/real_model/run.py --out /tmp/smoke --smoke         # the same pipeline on tiny:policy
    python examples/real_model/run.py --out runs/real_model --resume   # continue a stopped study

1. Fixed random subsets of the held-out prompts (``--subset-seed``): ``--ifeval-prompts`` of IFEval's 541 and
   ``--gsm8k-prompts`` of the GSM8K test set's 1,319, written to ``OUT/data/`` (their line numbers go into
   ``results.json``). Training never sees them: it uses the synthetic IFEval-style prompts and GSM8K train.
2. ``cgpo eval eval.yaml`` of the starting policy (greedy, so one evaluation serves every seed).
3. For each training seed: ``cgpo train train.yaml training.seed=S`` (both tasks in one run: CRRAFT on
   ifeval_synth, CRPG on gsm8k_format, task weights 1:1), then ``cgpo eval eval.yaml --model OUT/seedS/final``.
4. Per-prompt paired results before and after, and for each metric the change with a 95% paired-bootstrap
   interval (prompts resampled, cgpo.studies.paired_bootstrap) per seed and for the mean over seeds, plus the
   exact McNemar test for prompt-level metrics. A gain counts only where the interval excludes zero.
   Metrics: IFEval prompt-level strict and loose, instruction-level strict and loose; GSM8K accuracy (math
   judge, answer in "The final answer is N") and the answer-sentence rate.
5. ``OUT/results.json``, ``OUT/table.md`` (the README's table), ``OUT/held_out.png`` and ``cgpo report`` of the
   training runs in ``OUT/report/``.

Every step is the real command line (``cgpo.cli.main``, in this process so that torch loads once); the output
of each call goes to ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cgpo.studies import check_study_arguments, jsonl_objects, mcnemar_exact, paired_bootstrap

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "train.yaml"
EVAL = HERE / "eval.yaml"
DATA = HERE.parent.parent / "tasks" / "data"
#: Task name -> (index in train.yaml / eval.yaml, held-out file).
TASKS = {"ifeval_synth": (0, DATA / "ifeval_eval.jsonl"), "gsm8k_format": (1, DATA / "gsm8k_test.jsonl")}
#: Metric -> (task, description); prompt-level metrics are pass/fail per prompt.
METRICS = {
    "ifeval_prompt_strict": ("ifeval_synth", "IFEval prompt-level strict"),
    "ifeval_prompt_loose": ("ifeval_synth", "IFEval prompt-level loose"),
    "ifeval_instruction_strict": ("ifeval_synth", "IFEval instruction-level strict"),
    "ifeval_instruction_loose": ("ifeval_synth", "IFEval instruction-level loose"),
    "gsm8k_accuracy": ("gsm8k_format", "GSM8K accuracy (final-answer format)"),
    "gsm8k_answer_sentence": ("gsm8k_format", "GSM8K answer sentence present"),
}
SMOKE = ["--policy", "tiny:policy", "--steps", "2", "--ifeval-prompts", "6", "--gsm8k-prompts", "6",
         "--max-new-tokens", "16", "--seeds", "0", "1", "--max-prompt-chars", "110"]  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` shrinks the study to the tiny model (seconds)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="run.py")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, evaluations, results)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per seed (default: train.yaml's)")
    parser.add_argument("--ifeval-prompts", type=int, default=200, help="IFEval prompts evaluated (of 541)")
    parser.add_argument("--gsm8k-prompts", type=int, default=200, help="GSM8K test prompts evaluated (of 1,319)")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the held-out subsets (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="both tasks' budget (default: the yamls')")
    parser.add_argument("--max-prompt-chars", type=int, default=None, metavar="N",
                        help="draw the subsets from held-out prompts of at most N characters (the smoke run's "
                             "tiny:policy has 256 positions); default: all")  # fmt: skip
    parser.add_argument("--policy", default=None, help="policy to start from (default: smollm2:135m-instruct)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--report", action="store_true", help="only rewrite table.md and the plots from results.json")
    parser.add_argument("--readme", type=Path, default=None, metavar="FILE",
                        help="with --report: also rewrite FILE's measured sections (between <!-- results:KEY --> "
                             "markers) from results.json")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny:policy, 2 steps, 6+6 prompts, 2 seeds")
    parser.add_argument("--resume", action="store_true",
                        help="reuse what a stopped study in OUT finished: the start evaluation, and per seed its "
                             "training (OUT/seedS/final) and its evaluation (OUT/seedS/eval_end.json)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(argv if argv is not None else sys.argv[1:])])
    check_study_arguments(
        parser, args, ("steps", "ifeval_prompts", "gsm8k_prompts", "max_new_tokens", "max_prompt_chars", "threads")
    )
    return args


def cgpo(args: Sequence[str], *, log_file: Path) -> None:
    """Run ``cgpo ARGS`` in this process (the real command line), its output in ``log_file``."""
    from cgpo.cli import run_logged

    run_logged(args, log_file)


def write_subsets(args: argparse.Namespace, out: Path) -> dict[str, list[int]]:
    """Fixed random held-out subsets (0-based line numbers, sorted) into ``out/<task>.jsonl``."""
    sizes = {"ifeval_synth": args.ifeval_prompts, "gsm8k_format": args.gsm8k_prompts}
    out.mkdir(parents=True, exist_ok=True)
    chosen = {}
    for task, (_, source) in TASKS.items():
        lines = source.read_text(encoding="utf-8").splitlines()
        field = "prompt" if task == "ifeval_synth" else "question"
        pool = [i for i, line in enumerate(lines)
                if args.max_prompt_chars is None or len(json.loads(line)[field]) <= args.max_prompt_chars]  # fmt: skip
        if sizes[task] > len(pool):
            raise SystemExit(f"run.py: {sizes[task]} {task} prompts asked, {source} has {len(pool)} to draw from")
        # One generator per task, so a task's subset does not depend on the other's size.
        chosen[task] = sorted(random.Random(f"{args.subset_seed}:{task}").sample(pool, sizes[task]))
        (out / f"{task}.jsonl").write_text("".join(lines[i] + "\n" for i in chosen[task]), encoding="utf-8")
    return chosen


def overrides(args: argparse.Namespace, data: Path) -> list[str]:
    """The ``key=value`` overrides every train and eval call shares (held-out subsets, policy, budget)."""
    out = [f"tasks.{i}.prompts.eval.path={data / f'{task}.jsonl'}" for task, (i, _) in TASKS.items()]
    if args.policy is not None:
        out.append(f"policy.path={args.policy}")
    if args.max_new_tokens is not None:
        out += [f"tasks.{i}.sampling.max_new_tokens={args.max_new_tokens}" for i, _ in TASKS.values()]
    return out


def paired_rows(start: list[dict[str, Any]], end: list[dict[str, Any]]) -> dict[str, list[tuple[Any, Any]]]:
    """Per task, the (before, after) sample rows of each held-out prompt, matched by prompt text."""
    out: dict[str, list[tuple[Any, Any]]] = {}
    after = {(row["task"], row["prompt"]): row for row in end}
    for row in start:
        key = (row["task"], row["prompt"])
        if key not in after:
            raise ValueError(f"task {row['task']}: a prompt evaluated before training is missing after it")
        out.setdefault(row["task"], []).append((row, after[key]))
    if len(end) != len(start):
        raise ValueError(f"{len(start)} prompts evaluated before training, {len(end)} after")
    return out


def instruction_counts(completion: str, meta: dict[str, Any], mode: str) -> tuple[int, int]:
    """(followed, total) IFEval instructions of one response (IFEval's instruction-level accuracy)."""
    from cgpo_judges.ifeval import instruction_results

    results = instruction_results(completion, meta["instruction_id_list"], meta.get("kwargs"), mode)  # type: ignore[arg-type]
    return sum(results), len(results)


def prompt_outcomes(rows: list[dict[str, Any]], metas: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Per metric, each prompt's successes (0/1, or followed instructions), and ``*_total`` denominators."""
    out: dict[str, list[float]] = {}
    for row in rows:
        if row["task"] == "ifeval_synth":
            out.setdefault("ifeval_prompt_strict", []).append(float(row["judges"]["strict"] == 1))
            out.setdefault("ifeval_prompt_loose", []).append(float(row["judges"]["loose"] == 1))
            for mode in ("strict", "loose"):
                followed, total = instruction_counts(row["completion"], metas[row["prompt"]], mode)
                out.setdefault(f"ifeval_instruction_{mode}", []).append(float(followed))
                out.setdefault(f"ifeval_instruction_{mode}_total", []).append(float(total))
        else:
            out.setdefault("gsm8k_accuracy", []).append(float(row["judges"]["math"] == 1))
            out.setdefault("gsm8k_answer_sentence", []).append(float(row["judges"]["answer_sentence"] == 1))
    return out


def compare(before: dict[str, list[float]], afters: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Per metric: each seed's change and the mean-over-seeds change, with 95% paired-bootstrap intervals.

    The mean over seeds pairs each prompt's before with its mean after over the seeds (seeds are fixed, prompts
    resampled). ``gain``: the interval of the mean excludes zero from above; ``loss``: from below.
    """
    out = {}
    for metric in METRICS:
        weights = before.get(f"{metric}_total")
        per_seed = [paired_bootstrap(before[metric], a[metric], weights) for a in afters]
        mean_after = [sum(values) / len(values) for values in zip(*(a[metric] for a in afters), strict=True)]
        pooled = paired_bootstrap(before[metric], mean_after, weights)
        row: dict[str, Any] = {"per_seed": per_seed, "mean": pooled, "gain": pooled["ci_low"] > 0,
                               "loss": pooled["ci_high"] < 0}  # fmt: skip
        if weights is None:  # pass/fail per prompt: the exact test per seed as well
            row["mcnemar"] = [
                mcnemar_exact([x > 0 for x in before[metric]], [y > 0 for y in a[metric]]) for a in afters
            ]
        out[metric] = row
    return out


def samples_before_after(pairs: dict[str, list[tuple[Any, Any]]], count: int = 2) -> list[dict[str, Any]]:
    """A few held-out prompts per task with the completion before and after (the first seed), changed ones first."""
    out = []
    for task, rows in pairs.items():
        ranked = sorted(rows, key=lambda p: p[0]["verdict"] == p[1]["verdict"])  # stable: file order otherwise
        for before, after in ranked[:count]:
            out.append({"task": task, "prompt": before["prompt"], "before": before["completion"],
                        "before_verdict": before["judges"], "after": after["completion"],
                        "after_verdict": after["judges"]})  # fmt: skip
    return out


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, seconds per step and the per-task training curves of one run, from its ``metrics.jsonl``."""
    metrics = jsonl_objects(run_dir / "metrics.jsonl")
    curves = {}
    for task in TASKS:
        prefix = f"task/{task}/"
        curves[task] = {key: [float(m[prefix + key]) for m in metrics if prefix + key in m]
                        for key in ("reward", "pass_rate", "kl", "response_length")}  # fmt: skip
    times = [float(m["time/step"]) for m in metrics if "time/step" in m]
    return {"steps": len(metrics), "seconds_per_step": sum(times) / len(times) if times else None, "curves": curves}


def check_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless every metric has finite before/after values and intervals for every seed."""
    for metric in METRICS:
        row = results["comparison"].get(metric)
        if row is None or len(row["per_seed"]) != len(results["seeds"]):
            raise ValueError(f"results have no comparison for {metric} over every seed")
        for stats in [*row["per_seed"], row["mean"]]:
            for key in ("before", "after", "delta", "ci_low", "ci_high"):
                if not math.isfinite(stats[key]):
                    raise ValueError(f"results.comparison.{metric}.{key} is {stats[key]!r}, not finite")


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}" if value else "0.0"


def table(results: dict[str, Any]) -> str:
    """The README's table (markdown) from ``results.json``: before, after per seed, change and 95% CI."""
    seeds = results["seeds"]
    head = ["metric", "n", "before", *(f"after (seed {s})" for s in seeds), "change, mean of seeds [95% CI]", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, (task, label) in METRICS.items():
        row = results["comparison"][metric]
        mean = row["mean"]
        verdict = "gain" if row["gain"] else ("loss" if row["loss"] else "no significant change")
        cells = [label, str(results["eval_prompts"][task]), f"{100 * mean['before']:.1f}%",
                 *(f"{100 * s['after']:.1f}%" for s in row["per_seed"]),
                 f"{_pct(mean['delta'])} pp [{_pct(mean['ci_low'])}, {_pct(mean['ci_high'])}]", verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per seed (change [95% CI], exact McNemar p where the metric is pass/fail per prompt):")
    lines.append("")
    for metric, (_, label) in METRICS.items():
        row = results["comparison"][metric]
        parts = []
        for i, (seed, s) in enumerate(zip(seeds, row["per_seed"], strict=True)):
            extra = f", p={row['mcnemar'][i]['p_value']:.3f}" if "mcnemar" in row else ""
            parts.append(f"seed {seed}: {_pct(s['delta'])} pp [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]{extra}")
        lines.append(f"- {label}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _quote(text: str, limit: int = 400) -> str:
    """``text`` as a markdown blockquote, cut at ``limit`` characters."""
    text = text if len(text) <= limit else text[:limit] + " [...]"
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def samples_markdown(results: dict[str, Any]) -> str:
    """The before/after samples of ``results.json`` (first seed) as markdown."""
    parts = []
    for sample in results.get("samples", []):
        parts.append(f"**{sample['task']}**: {_quote(sample['prompt'], 300)[2:]}\n")
        for side in ("before", "after"):
            verdicts = ", ".join(f"{k} {v}" for k, v in sample[f"{side}_verdict"].items())
            parts.append(f"*{side}* ({verdicts}):\n\n{_quote(sample[side])}\n")
    return "\n".join(parts)


def outcome_markdown(results: dict[str, Any]) -> str:
    """One line per metric: gain, loss or no significant change (the mean over seeds' 95% interval)."""
    lines = []
    for metric, (_, label) in METRICS.items():
        row = results["comparison"][metric]
        verdict = "gain" if row["gain"] else ("loss" if row["loss"] else "no significant change")
        mean = row["mean"]
        lines.append(f"- {label}: {verdict} ({_pct(mean['delta'])} pp [{_pct(mean['ci_low'])}, "
                     f"{_pct(mean['ci_high'])}])")  # fmt: skip
    steps = {seed: run["steps"] for seed, run in results["training"].items()}
    per_step = [run["seconds_per_step"] for run in results["training"].values() if run["seconds_per_step"]]
    start = results["eval_start_seconds"]
    start_text = "reused from a stopped run" if start is None else f"{start:.0f} s"
    lines.append(f"\nSeeds {results['seeds']}, steps per seed {steps}, mean seconds per training step "
                 f"{sum(per_step) / max(1, len(per_step)):.0f}, start evaluation {start_text}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def fill_readme(path: Path, results: dict[str, Any]) -> None:
    """Replace each ``<!-- results:KEY -->...<!-- /results:KEY -->`` section of ``path`` with measured text."""
    import re

    text = path.read_text(encoding="utf-8")
    for key, body in (("table", table(results)), ("samples", samples_markdown(results)),
                      ("outcome", outcome_markdown(results))):  # fmt: skip
        pattern = re.compile(rf"(<!-- results:{key} -->\n).*?(<!-- /results:{key} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"run.py: {path} has no <!-- results:{key} --> ... <!-- /results:{key} --> section")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    path.write_text(text, encoding="utf-8")


def plot(results: dict[str, Any], out: Path) -> Path:
    """``held_out.png``: each metric before and after (per seed), with the mean change's 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(METRICS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = range(len(metrics))
    left.bar([x - 0.3 for x in xs], [100 * results["comparison"][m]["mean"]["before"] for m in metrics], width=0.2,
             color="lightgray", label="before")  # fmt: skip
    for i, seed in enumerate(results["seeds"]):
        left.bar([x - 0.1 + 0.2 * i for x in xs], [100 * results["comparison"][m]["per_seed"][i]["after"] for m in metrics],
                 width=0.2, label=f"after, seed {seed}")  # fmt: skip
    left.set_xticks(list(xs), [METRICS[m][1].replace("IFEval ", "").replace("GSM8K ", "GSM8K\n") for m in metrics],
                    rotation=30, ha="right", fontsize=8)  # fmt: skip
    left.set_ylabel("%")
    left.set_title("held-out, greedy")
    left.legend(fontsize=8)
    means = [results["comparison"][m]["mean"] for m in metrics]
    right.errorbar(list(xs), [100 * s["delta"] for s in means],
                   yerr=[[100 * (s["delta"] - s["ci_low"]) for s in means], [100 * (s["ci_high"] - s["delta"]) for s in means]],
                   fmt="o", capsize=4)  # fmt: skip
    right.axhline(0, color="gray", linestyle="--")
    right.set_xticks(list(xs), [m.replace("_", " ") for m in metrics], rotation=30, ha="right", fontsize=8)
    right.set_ylabel("percentage points")
    right.set_title(f"change, mean of {len(results['seeds'])} seeds, 95% paired-bootstrap CI")
    fig.tight_layout()
    path = out / "held_out.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish(results: dict[str, Any], out: Path, runs: list[Path]) -> None:
    """``table.md``, ``held_out.png`` and ``cgpo report`` of the training runs (``OUT/report/``)."""
    (out / "table.md").write_text(table(results), encoding="utf-8")
    plot(results, out)
    present = [str(run) for run in runs if (run / "metrics.jsonl").is_file()]
    if present:
        cgpo(["report", *present, "--out", str(out / "report")], log_file=out / "logs" / "report.log")


def run_seed(args: argparse.Namespace, out: Path, shared: list[str], seed: int) -> Path:
    """Train one seed (both tasks) and evaluate its final policy; returns the run folder."""
    run_dir = out / f"seed{seed}"
    steps = [] if args.steps is None else [f"training.max_steps={args.steps}"]
    # final/ and eval_end.json are written atomically and last, so their presence means the stage finished.
    if not (args.resume and (run_dir / "final" / "config.json").is_file()):
        # Plain progress lines into the log (a progress bar would look for a terminal).
        cgpo(["train", str(TRAIN), *shared, *steps, f"training.seed={seed}", f"output_dir={run_dir}",
              "logging.progress=plain", "--fresh"], log_file=out / "logs" / f"train_seed{seed}.log")  # fmt: skip
    if not (args.resume and (run_dir / "eval_end.json").is_file()):
        cgpo(["eval", str(EVAL), *shared, "--model", str(run_dir / "final"), "--output",
              str(run_dir / "eval_end.json"), "--samples", str(run_dir / "samples_end.jsonl")],
             log_file=out / "logs" / f"eval_seed{seed}.log")  # fmt: skip
    return run_dir


def study(args: argparse.Namespace, out: Path, say: Any) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns ``results.json``'s content.

    ``results.json`` is rewritten after every seed with the seeds done so far, so that a long study that is
    stopped still leaves its measured part.
    """
    subsets = write_subsets(args, out / "data")
    shared = overrides(args, out / "data")
    say(f"held-out evaluation of the starting policy ({len(subsets['ifeval_synth'])} IFEval, "
        f"{len(subsets['gsm8k_format'])} GSM8K prompts)")  # fmt: skip
    t0 = time.perf_counter()
    reuse_start = args.resume and (out / "eval_start.json").is_file()
    if not reuse_start:
        cgpo(["eval", str(EVAL), *shared, "--output", str(out / "eval_start.json"), "--samples",
              str(out / "samples_start.jsonl")], log_file=out / "logs" / "eval_start.log")  # fmt: skip
    results: dict[str, Any] = {
        "policy": args.policy or "smollm2:135m-instruct", "seeds": [],
        "eval_prompts": {task: len(rows) for task, rows in subsets.items()},
        "subset_seed": args.subset_seed, "subset_lines": subsets,
        "eval_start_seconds": None if reuse_start else round(time.perf_counter() - t0, 1), "training": {},
    }  # fmt: skip
    say("start evaluation reused" if reuse_start else f"start evaluated in {results['eval_start_seconds']:.0f}s")
    start = jsonl_objects(out / "samples_start.jsonl")
    metas = {json.loads(line)["prompt"]: json.loads(line) for line in (out / "data" / "ifeval_synth.jsonl").open()}
    before = prompt_outcomes(start, metas)
    afters = []
    for seed in args.seeds:
        say(f"seed {seed}: training and held-out evaluation")
        t0 = time.perf_counter()
        training_reused = args.resume and (out / f"seed{seed}" / "final" / "config.json").is_file()
        run_dir = run_seed(args, out, shared, seed)
        end = jsonl_objects(run_dir / "samples_end.jsonl")
        pairs = paired_rows(start, end)  # every seed evaluated the same prompts
        afters.append(prompt_outcomes(end, metas))
        results["seeds"].append(seed)
        # With --resume, seconds_with_eval counts only the stages that ran this time (training_reused says).
        results["training"][str(seed)] = {**training_summary(run_dir), "training_reused": training_reused,
                                          "seconds_with_eval": round(time.perf_counter() - t0, 1)}  # fmt: skip
        results["comparison"] = compare(before, afters)
        if len(afters) == 1:
            results["samples"] = samples_before_after(pairs)
        check_results(results)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        say(f"seed {seed}: done in {results['training'][str(seed)]['seconds_with_eval']:.0f}s; results.json updated")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    runs = [out / f"seed{seed}" for seed in args.seeds]
    if args.report:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        check_results(results)
        finish(results, out, [out / f"seed{seed}" for seed in results["seeds"]])
        if args.readme is not None:
            fill_readme(args.readme, results)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    results = study(args, out, say)
    finish(results, out, runs)
    say(f"results: {out / 'results.json'}; table: table.md; plots: held_out.png, report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
