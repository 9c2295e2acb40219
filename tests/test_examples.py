"""The two studies in examples/: the gameable reward, argument parsing, results.json and plots, and a smoke run.

The smoke runs call each ``run.py``'s ``main`` with a tiny budget (2 steps, 4 held-out prompts) on the
unit-test-sized random models of the ``tiny_models_dir`` fixture, so they exercise the real ``cgpo train`` and
``cgpo eval`` end to end without the built tiny model; the numbers they produce mean nothing, only their shape
is checked. The full studies (``python examples/*/run.py --out DIR``) are documented in each folder's README.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cgpo.schema import SchemaError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(path: Path, name: str) -> ModuleType:
    """Import an example script by path (the examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hacking = load(EXAMPLES / "reward_hacking" / "run.py", "example_reward_hacking_run")
sweep = load(EXAMPLES / "raft_k_sweep" / "run.py", "example_raft_k_sweep_run")
length_reward = load(EXAMPLES / "reward_hacking" / "length_reward.py", "example_length_reward")
real_model = load(EXAMPLES / "real_model" / "run.py", "example_real_model_run")


def eval_result(task: str, *, n: int, pass_rate: float, reward: float, length: float = 10.0) -> dict[str, Any]:
    """The shape of a ``cgpo eval --output`` file with one task."""
    return {
        "model": "m",
        "tasks": {
            task: {
                "n": n,
                "pass_rate": pass_rate,
                "reward": reward,
                "calibrated_reward": 0.5,
                "judges": {"ifeval": {"violation_rate": 1 - pass_rate, "error_rate": 0.0}},
                "response_length": length,
                "skipped_prompts": 0,
            }
        },
        "skipped": {},
    }


# ----------------------------------------------------------------------------------------------------------------
# The gameable reward
# ----------------------------------------------------------------------------------------------------------------
def test_length_reward_counts_characters_or_words_whatever_the_content():
    fn = length_reward.LengthReward()
    assert fn(["p", "p"], ['"ok"', "rambling on"], [{}, {}]) == [pytest.approx(0.4), pytest.approx(1.1)]
    words = length_reward.LengthReward(unit="words", scale=1.0, cap=2)
    assert words(["p"] * 3, ["", "one two", "one two three"], [{}] * 3) == [0.0, 2.0, 2.0]


def test_length_reward_params_are_validated():
    with pytest.raises(SchemaError, match="scale"):
        length_reward.LengthReward.parse_params({"scale": 0})
    with pytest.raises(SchemaError, match="cap"):
        length_reward.LengthReward.parse_params({"cap": 0})
    with pytest.raises(SchemaError, match="unit"):
        length_reward.LengthReward.parse_params({"unit": "tokens"})


def test_the_study_configs_validate_with_the_plugin_on_the_path(monkeypatch):
    from cgpo.config_loader import load_run_config

    monkeypatch.syspath_prepend(str(EXAMPLES / "reward_hacking"))
    optimizers = {name: load_run_config(str(path), []).tasks[0].optimizer.name for name, path in hacking.RUNS.items()}
    assert optimizers == {"unconstrained": "raft", "cgpo": "crraft"}
    runs = [load_run_config(str(path), []) for path in hacking.RUNS.values()]
    # Same budget: everything but the optimizer (and the output folder) is identical.
    assert runs[0].training == runs[1].training
    assert runs[0].tasks[0].sampling == runs[1].tasks[0].sampling
    assert runs[0].tasks[0].batch_size == runs[1].tasks[0].batch_size
    assert runs[0].tasks[0].reward == runs[1].tasks[0].reward
    config = load_run_config(str(sweep.CONFIG), ["tasks.0.sampling.num_samples=8"])
    assert config.tasks[0].optimizer.name == "raft" and config.tasks[0].sampling.num_samples == 8


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def test_reward_hacking_arguments(tmp_path):
    args = hacking.parse_args(["--out", str(tmp_path), "--steps", "2", "--max-eval-prompts", "4"])
    assert (args.out, args.steps, args.max_eval_prompts, args.threads) == (tmp_path, 2, 4, 1)
    assert hacking.overrides(args, tmp_path / "cgpo") == [f"output_dir={tmp_path / 'cgpo'}", "training.max_steps=2"]
    assert hacking.eval_args(args, Path("e.json"), Path("s.jsonl"))[-2:] == ["--max-prompts", "4"]
    defaults = hacking.parse_args(["--out", "x"])
    assert defaults.steps is None and hacking.overrides(defaults) == []
    for bad in (["--steps", "0"], ["--max-eval-prompts", "0"], ["--threads", "0"], []):
        with pytest.raises(SystemExit) as info:
            hacking.parse_args(([] if bad == [] else ["--out", "x"]) + bad)
        assert info.value.code == 2


def test_k_sweep_arguments():
    args = sweep.parse_args(["--out", "x", "--ks", "4", "1", "--seeds", "3", "--reward-model", "rm", "--policy", "pi"])
    assert args.ks == [1, 4] and args.seeds == [3]
    assert sweep.overrides(args) == ["policy.path=pi", "tasks.0.reward.model=rm"]
    defaults = sweep.parse_args(["--out", "x"])
    assert (defaults.ks, defaults.seeds) == ([1, 2, 4, 8], [0, 1, 2])
    for bad in (["--ks", "0"], ["--ks", "2", "2"], ["--seeds", "1", "1"], ["--seeds", "-1"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--out", "x", *bad])


# ----------------------------------------------------------------------------------------------------------------
# results.json and plots from given evaluations
# ----------------------------------------------------------------------------------------------------------------
def test_reward_hacking_summary_and_check(tmp_path):
    start = eval_result("t", n=48, pass_rate=0.3, reward=1.5, length=15.0)
    end = eval_result("t", n=48, pass_rate=0.0, reward=3.2, length=32.0)
    row = hacking.summarize(start, end, optimizer="raft", steps=60, train_seconds=12.34, examples=[])
    assert row["reward_start"] == 1.5 and row["reward_end"] == 3.2
    assert row["pass_rate_start"] == 0.3 and row["pass_rate_end"] == 0.0
    assert row["response_length_end"] == 32.0 and row["eval_prompts"] == 48 and row["train_seconds"] == 12.3
    results = {"unconstrained": row, "cgpo": dict(row, pass_rate_end=0.6)}
    hacking.check_results(results)
    with pytest.raises(ValueError, match=r"cgpo\.reward_end"):
        hacking.check_results({"unconstrained": row, "cgpo": dict(row, reward_end=math.nan)})
    with pytest.raises(ValueError, match="no 'cgpo'"):
        hacking.check_results({"unconstrained": row})
    with pytest.raises(ValueError, match="different prompt counts"):
        hacking.summarize(start, eval_result("t", n=4, pass_rate=0, reward=0), optimizer="raft", steps=1,
                          train_seconds=0, examples=[])  # fmt: skip

    metrics = [
        {"step": s, "task/t/reward": 1.0 + s, "task/t/pass_rate": 0.5, "task/t/response_length": 9.0} for s in (1, 2)
    ]
    curves = hacking.training_curves(metrics, "t")
    assert curves == {"step": [1.0, 2.0], "reward": [2.0, 3.0], "pass_rate": [0.5, 0.5], "response_length": [9.0] * 2}
    assert hacking.moving_average([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    paths = hacking.plot(results, {"unconstrained": curves, "cgpo": curves}, tmp_path)
    assert [p.name for p in paths] == ["training_curves.png", "held_out.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_k_sweep_summary_and_check(tmp_path):
    start = eval_result("j", n=48, pass_rate=0.0, reward=-0.3)
    ks, seeds = (1, 2, 4, 8), (0, 1)
    # Seed 1 ends 0.2 above seed 0 for every K.
    ends = {k: {s: eval_result("j", n=48, pass_rate=0.0, reward=0.1 * k + 0.2 * s) for s in seeds} for k in ks}
    curves = {k: {s: [0.0, 0.1 * k, 0.2 * k, 0.3 * k + s] for s in seeds} for k in ks}
    results = sweep.summarize(start, ends, curves, dict.fromkeys(ks, 1.0), prompts_per_step=8)
    assert results["reward_start"] == -0.3 and results["steps"] == 4 and results["eval_prompts"] == 48
    assert results["seeds"] == [0, 1] and list(results["final_reward"]) == ["1", "2", "4", "8"]
    assert results["final_reward"]["8"] == pytest.approx(0.9)
    row = results["k"]["4"]
    assert row["reward_end_per_seed"] == [pytest.approx(0.4), pytest.approx(0.6)]
    assert row["reward_end_std"] == pytest.approx(0.1)
    assert row["train_reward_last"] == pytest.approx(1.2 + 0.5)  # the last quarter (one step), mean over seeds
    assert row["judge_violation_rate_end"] == {"ifeval": 1.0} and results["judge_violation_rate_start"] == {
        "ifeval": 1.0
    }
    sweep.check_results(results)
    json.dumps(results)
    with pytest.raises(ValueError, match=r"final_reward\.2"):
        sweep.check_results(dict(results, final_reward={"1": 0.0, "2": math.inf}))
    with pytest.raises(ValueError, match="no final reward"):
        sweep.check_results({"reward_start": 0.0, "final_reward": {}})
    with pytest.raises(ValueError, match="K=1 seed 0"):
        sweep.summarize(start, {1: {0: eval_result("other", n=48, pass_rate=0, reward=0)}}, {1: {0: [0.0]}},
                        {1: 0.0}, prompts_per_step=8)  # fmt: skip
    assert sweep.plot(results, curves, tmp_path).read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------------------------------------------
# Smoke runs: the real cgpo train and cgpo eval, tiny budget, random unit-test models
# ----------------------------------------------------------------------------------------------------------------
def assert_finite(value: Any) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value), value


@pytest.mark.slow
def test_reward_hacking_smoke(tmp_path, tiny_models_dir):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--steps", "2", "--max-eval-prompts", "4", "--policy", str(tiny_models_dir / "policy")]
    assert hacking.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"unconstrained", "cgpo"}
    for name, row in results.items():
        for key in hacking.REQUIRED:
            assert_finite(row[key])
        assert row["steps"] == 2 and row["eval_prompts"] == 4
        assert (out / name / "final" / "config.json").is_file()
    assert (results["unconstrained"]["optimizer"], results["cgpo"]["optimizer"]) == ("raft", "crraft")
    assert results["unconstrained"]["reward_start"] == results["cgpo"]["reward_start"]
    assert (out / "training_curves.png").is_file() and (out / "held_out.png").is_file()


@pytest.mark.slow
def test_k_sweep_smoke(tmp_path, tiny_models_dir):
    out = tmp_path / "sweep"
    argv = [
        *("--out", str(out), "--ks", "1", "2", "--seeds", "0", "--steps", "2", "--max-eval-prompts", "4"),
        *("--policy", str(tiny_models_dir / "policy"), "--reward-model", str(tiny_models_dir / "reward")),
    ]
    assert sweep.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["final_reward"]) == {"1", "2"}
    assert_finite(results["reward_start"])
    for value in results["final_reward"].values():
        assert_finite(value)
    assert results["steps"] == 2 and results["eval_prompts"] == 4 and results["prompts_per_step"] == 8
    assert results["seeds"] == [0] and (out / "k2_s0" / "final" / "config.json").is_file()
    assert (out / "k_sweep.png").is_file()


# ----------------------------------------------------------------------------------------------------------------
# The real-model study (examples/real_model): configs, arguments, per-prompt outcomes, and a smoke run on tiny:policy


def test_real_model_configs_validate():
    from cgpo.config_loader import load_run_config

    train = load_run_config(EXAMPLES / "real_model" / "train.yaml")
    assert [(t.name, t.optimizer.name) for t in train.tasks] == [("ifeval_synth", "crraft"), ("gsm8k_format", "crpg")]
    assert train.training.lora is not None
    evaluation = load_run_config(EXAMPLES / "real_model" / "eval.yaml")
    assert [[j.label or j.name for j in t.judges] for t in evaluation.tasks] == [
        ["strict", "loose"], ["math", "answer_sentence"]
    ]  # fmt: skip
    # The measurement uses the training run's prompts and budgets.
    for a, b in zip(train.tasks, evaluation.tasks, strict=True):
        assert (a.name, a.format, a.sampling.max_new_tokens) == (b.name, b.format, b.sampling.max_new_tokens)


def test_real_model_arguments(tmp_path):
    args = real_model.parse_args(["--out", str(tmp_path)])
    assert (args.seeds, args.ifeval_prompts, args.gsm8k_prompts, args.policy) == ([0, 1], 200, 200, None)
    smoke = real_model.parse_args(["--out", str(tmp_path), "--smoke"])
    assert (smoke.policy, smoke.steps, smoke.ifeval_prompts, smoke.seeds) == ("tiny:policy", 2, 6, [0, 1])
    for bad in (["--seeds", "0", "0"], ["--ifeval-prompts", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            real_model.parse_args(["--out", str(tmp_path), *bad])


def test_real_model_subsets_are_fixed_and_held_out(tmp_path):
    args = real_model.parse_args(["--out", str(tmp_path), "--ifeval-prompts", "5", "--gsm8k-prompts", "7"])
    first = real_model.write_subsets(args, tmp_path / "a")
    assert first == real_model.write_subsets(args, tmp_path / "b")
    assert [len(first[t]) for t in ("ifeval_synth", "gsm8k_format")] == [5, 7]
    lines = (real_model.DATA / "ifeval_eval.jsonl").read_text(encoding="utf-8").splitlines()
    written = (tmp_path / "a" / "ifeval_synth.jsonl").read_text(encoding="utf-8").splitlines()
    assert written == [lines[i] for i in first["ifeval_synth"]]
    train_prompts = {json.loads(line)["prompt"] for line in (real_model.DATA / "ifeval_train.jsonl").open()}
    assert not train_prompts & {json.loads(line)["prompt"] for line in written}


def test_real_model_outcomes_count_prompts_and_instructions():
    meta = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}
    rows = [
        {"task": "ifeval_synth", "prompt": "p", "completion": "this answer is written in plain english, and every word of it is lowercase.", "judges": {"strict": 0, "loose": 0}},
        {"task": "gsm8k_format", "prompt": "q", "completion": "x", "judges": {"math": 1, "answer_sentence": 1}},
    ]  # fmt: skip
    out = real_model.prompt_outcomes(rows, {"p": meta})
    assert out["ifeval_prompt_strict"] == [0.0] and out["ifeval_instruction_strict"] == [1.0]
    assert out["ifeval_instruction_strict_total"] == [2.0]
    assert out["gsm8k_accuracy"] == [1.0] and out["gsm8k_answer_sentence"] == [1.0]


def test_real_model_compare_flags_a_gain_only_when_the_interval_excludes_zero():
    n = 40
    before = {m: [0.0] * n for m in real_model.METRICS}
    before.update({f"ifeval_instruction_{mode}_total": [1.0] * n for mode in ("strict", "loose")})
    gained = {m: [1.0] * n for m in real_model.METRICS}  # every prompt gains on every seed
    mixed = {m: [1.0, 0.0] * (n // 2) for m in real_model.METRICS}
    result = real_model.compare(before, [gained, gained])
    assert all(row["gain"] and row["mean"]["ci_low"] == 1.0 for row in result.values())
    assert result["gsm8k_accuracy"]["mcnemar"][0]["only_after"] == n
    # One seed gains everywhere, the other nowhere: the mean changes by 0.5 on every prompt, still a gain.
    assert real_model.compare(before, [gained, before])["ifeval_prompt_strict"]["mean"]["delta"] == 0.5
    # Half the prompts gain on one seed only: 0.25, and the interval is checked against zero.
    noisy = real_model.compare(before, [mixed, before])["ifeval_prompt_strict"]
    assert noisy["mean"]["delta"] == 0.25 and noisy["gain"] == (noisy["mean"]["ci_low"] > 0)
    assert not real_model.compare(before, [before, before])["gsm8k_accuracy"]["gain"]


@pytest.mark.slow
def test_real_model_smoke(tmp_path, monkeypatch):
    out = tmp_path / "real"
    assert real_model.main(["--out", str(out), "--smoke"]) == 0
    results = json.loads((out / "results.json").read_text())
    # --resume reuses every finished stage: no cgpo train or eval runs again, and the statistics are the same.
    ran: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(real_model, "cgpo", lambda args, log_file: ran.append(args[0]))
        assert real_model.main(["--out", str(tmp_path / "real"), "--smoke", "--resume"]) == 0
    assert ran == ["report"]
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["comparison"] == results["comparison"] and resumed["eval_start_seconds"] is None
    assert all(run["training_reused"] for run in resumed["training"].values())
    results = resumed
    assert results["seeds"] == [0, 1] and results["eval_prompts"] == {"ifeval_synth": 6, "gsm8k_format": 6}
    for metric, row in results["comparison"].items():
        assert len(row["per_seed"]) == 2, metric
        for stats in (*row["per_seed"], row["mean"]):
            assert stats["ci_low"] <= stats["delta"] <= stats["ci_high"]
            assert_finite(stats["before"])
    assert results["training"]["0"]["steps"] == 2
    assert (out / "seed1" / "final" / "config.json").is_file()
    table = (out / "table.md").read_text()
    assert "IFEval prompt-level strict" in table and "GSM8K accuracy" in table
    assert (out / "held_out.png").is_file() and (out / "report" / "summary.md").is_file()
    (out / "table.md").unlink()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:table -->\nold\n<!-- /results:table -->\n<!-- results:samples -->\n"
                      "<!-- /results:samples -->\n<!-- results:outcome -->\n<!-- /results:outcome -->\n")  # fmt: skip
    # Regenerated from results.json alone, the README's measured sections with it.
    assert real_model.main(["--out", str(out), "--report", "--readme", str(readme)]) == 0
    assert (out / "table.md").read_text() == table
    text = readme.read_text()
    assert table in text and "\nold\n" not in text and "*before*" in text and "IFEval prompt-level loose: " in text
