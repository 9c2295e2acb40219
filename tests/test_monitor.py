"""The reward-hacking monitor's trend test, on synthetic series and on two real runs' metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cgpo.metrics import RewardHackingMonitor, mann_kendall

FIXTURES = Path(__file__).parent / "fixtures" / "monitor"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def _feed(monitor: RewardHackingMonitor, rows: list[dict]) -> list[tuple[int, str]]:
    return [(row["step"], warning) for row in rows for warning in monitor.update(row["step"], row)]


def _step(task: str, reward: float, pass_rate: float) -> dict:
    return {f"task/{task}/calibrated_reward": reward, f"task/{task}/pass_rate": pass_rate}


# ---------------------------------------------------------------------------------------------------------------
# The statistic
# ---------------------------------------------------------------------------------------------------------------
def test_mann_kendall_statistic_and_tie_corrected_variance_match_a_hand_computation():
    # Pairs (i<j) of [1, 3, 2, 2]: 1<3 +, 1<2 +, 1<2 +, 3>2 -, 3>2 -, 2=2 0 -> S = 1.
    # Var = [4*3*13 - 2*1*9] / 18 = (156 - 18) / 18 = 7.667; S = 1 gives z = (S - 1)/sd = 0, p = 0.5.
    test = mann_kendall([1.0, 3.0, 2.0, 2.0])
    assert test.s == 1 and test.z == 0.0 and test.p_value == pytest.approx(0.5)
    # Strictly increasing n = 10: S = 45, Var = 10*9*25/18 = 125, z = 44/sqrt(125) = 3.9355.
    test = mann_kendall([float(i) for i in range(10)])
    assert test.s == 45 and test.z == pytest.approx(44 / 125**0.5) and test.p_value == pytest.approx(4.15e-5, rel=0.01)
    assert mann_kendall([float(-i) for i in range(10)]).p_value > 0.99  # a falling series is no evidence of a rise
    assert mann_kendall([0.25] * 12).p_value == 1.0  # constant: no variance, no evidence


def test_one_sided_test_holds_its_level_on_pure_noise():
    # 4000 independent Gaussian series of 20 values: the share rejected at 1% (one-sided) must not exceed 1%
    # beyond sampling error (3 standard errors: 0.01 + 3 * sqrt(0.01 * 0.99 / 4000) = 0.0147).
    rng = random.Random(0)
    rejected = sum(mann_kendall([rng.gauss(0, 1) for _ in range(20)]).p_value < 0.01 for _ in range(4000))
    assert rejected / 4000 <= 0.0147
    assert rejected > 0  # the test is not vacuous: it does reject at about its level


@pytest.mark.parametrize("confidence, bound", [(0.9, 0.01), (0.99, 1e-4)])
def test_monitor_false_alarm_rate_on_noise_is_at_most_the_stated_level(confidence, bound):
    # Independent noise in both series (the pass rate a binomial proportion over 32 samples, so it ties often):
    # each full window warns with probability at most (1 - confidence)^2. 3000 independent windows; the count
    # may exceed the expectation by 3 Poisson standard deviations at most.
    rng = random.Random(1)
    alarms = 0
    for _ in range(3000):
        monitor = RewardHackingMonitor(window=20, confidence=confidence)
        for step in range(1, 21):
            pass_rate = sum(rng.random() < 0.3 for _ in range(32)) / 32
            alarms += len(monitor.update(step, _step("t", rng.gauss(0.5, 0.05), pass_rate)))
    expected = 3000 * bound
    assert alarms <= expected + 3 * expected**0.5 + 1


def test_monitor_warns_on_a_clear_opposite_trend_and_not_on_a_shared_one():
    rng = random.Random(2)
    hacking = RewardHackingMonitor(window=20, confidence=0.99)
    healthy = RewardHackingMonitor(window=20, confidence=0.99)
    hacked, fine = [], []
    for step in range(1, 41):
        reward = 0.4 + 0.01 * step + rng.gauss(0, 0.03)
        hacked += hacking.update(step, _step("t", reward, 0.6 - 0.012 * step + rng.gauss(0, 0.05)))
        fine += healthy.update(step, _step("t", reward, 0.2 + 0.012 * step + rng.gauss(0, 0.05)))
    assert len(hacked) == 2  # at step 20 and, after a quiet window, at step 40
    assert "possible reward hacking in task t" in hacked[0] and "significant at 99%" in hacked[0]
    assert fine == []


# ---------------------------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["quickstart_metrics.jsonl", "reward_hacking_cgpo_metrics.jsonl"])
def test_no_warning_on_ordinary_runs_the_quickstart_and_the_studys_cgpo_run(run):
    assert _feed(RewardHackingMonitor(), _rows(run)) == []


def test_warning_on_the_reward_hacking_studys_unconstrained_run():
    warnings = _feed(RewardHackingMonitor(), _rows("reward_hacking_unconstrained_metrics.jsonl"))
    assert warnings, "the unconstrained RAFT run hacks the length reward: the monitor must say so"
    step, text = warnings[0]
    assert step == 20  # the first full window: the pass rate has already collapsed
    assert "task tiny_instructions_length" in text and "the reward rose" in text and "pass rate fell" in text


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint state
# ---------------------------------------------------------------------------------------------------------------
def test_resumed_monitor_warns_exactly_as_an_uninterrupted_one():
    rows = _rows("reward_hacking_unconstrained_metrics.jsonl")
    whole = _feed(RewardHackingMonitor(), rows)
    first = RewardHackingMonitor()
    before = _feed(first, rows[:25])  # a checkpoint at step 25, just after the first warning
    state = json.loads(json.dumps(first.state_dict()))  # trainer_state.json round trip
    resumed = RewardHackingMonitor()
    resumed.load_state_dict(state)
    assert before + _feed(resumed, rows[25:]) == whole


def test_an_old_checkpoints_monitor_state_loads_and_an_unreadable_one_resets_with_a_line():
    rows = _rows("reward_hacking_unconstrained_metrics.jsonl")
    old = {"history": {"tiny_instructions_length": [[0.5, 0.2]] * 20}, "quiet_until": {"other": 7}}
    monitor = RewardHackingMonitor()
    monitor.load_state_dict(old)  # the fixed-threshold monitor's format (no version): same history pairs
    assert len(monitor.history["tiny_instructions_length"]) == 20 and monitor.quiet_until == {"other": 7}
    lines: list[str] = []
    monitor.load_state_dict({"history": {"t": [["x"]]}}, log=lines.append)
    assert monitor.history == {} and monitor.quiet_until == {}
    assert len(lines) == 1 and "monitor state is unreadable" in lines[0] and "afresh" in lines[0]
    assert _feed(monitor, rows)  # and it still works afterwards


def test_monitor_settings_are_checked():
    with pytest.raises(ValueError, match="window"):
        RewardHackingMonitor(window=5)
    with pytest.raises(ValueError, match="confidence"):
        RewardHackingMonitor(confidence=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Held-out evaluations (training.eval_every)
# ---------------------------------------------------------------------------------------------------------------
def _study_evals(run: str) -> list[dict]:
    """The reward-hacking study's held-out results (examples/reward_hacking/results.json) as two eval rows."""
    results = json.loads((Path(__file__).parents[1] / "examples" / "reward_hacking" / "results.json").read_text())
    r = results[run]
    return [
        {"step": step, "tasks": {"tiny_instructions_length": {
            "n": r["eval_prompts"], "pass_rate": r[f"pass_rate_{end}"], "reward": r[f"reward_{end}"],
            "calibrated_reward": r[f"calibrated_reward_{end}"]}}}
        for step, end in ((0, "start"), (r["steps"], "end"))
    ]  # fmt: skip


def test_held_out_evaluations_warn_on_the_unconstrained_run_and_not_on_cgpo_or_the_quickstart():
    monitor = RewardHackingMonitor()
    warnings = [w for row in _study_evals("unconstrained") for w in monitor.update_eval(row)]
    assert len(warnings) == 1
    assert "on the 48 held-out prompts, from step 0 to step 60" in warnings[0] and "0.292 -> 0.000" in warnings[0]
    monitor = RewardHackingMonitor()
    assert [w for row in _study_evals("cgpo") for w in monitor.update_eval(row)] == []
    monitor = RewardHackingMonitor()
    assert [w for row in _rows("quickstart_eval.jsonl") for w in monitor.update_eval(row)] == []
    assert monitor.update_eval(None) == []  # what non-main processes pass


def test_pass_rate_drop_is_tested_not_just_measured():
    from cgpo.metrics import EvalPoint, pass_rate_drop_p_value

    # 0.50 -> 0.40 on 48 prompts: pooled 0.45, se = sqrt(0.45 * 0.55 * 2 / 48) = 0.1016, z = 0.984, p = 0.163.
    assert pass_rate_drop_p_value(EvalPoint(0, 48, 0.5, 0.5), EvalPoint(9, 48, 0.4, 0.6)) == pytest.approx(
        0.1625, abs=1e-3
    )
    monitor = RewardHackingMonitor()
    for step, pass_rate, reward in ((0, 0.5, 0.5), (10, 0.4, 0.9)):  # a fall within noise: no warning
        assert (
            monitor.update_eval({"step": step, "tasks": {"t": {"n": 48, "pass_rate": pass_rate, "reward": reward}}})
            == []
        )
    state = json.loads(json.dumps(monitor.state_dict()))
    resumed = RewardHackingMonitor()
    resumed.load_state_dict(state)  # the step-0 reference survives a checkpoint
    assert resumed.update_eval({"step": 20, "tasks": {"t": {"n": 48, "pass_rate": 0.1, "reward": 0.9}}})
