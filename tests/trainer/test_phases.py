"""The step's phases: each does the work it is named for (a_bar included), and their small helpers."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import cgpo.phases.rollout as rollout_phase
import cgpo.trainer as trainer_module
from cgpo.config_loader import load_run_config
from cgpo.judging import MixtureResult, Verdict
from cgpo.metrics import PhaseTimer
from cgpo.phases.judge import judge_rates
from cgpo.phases.rollout import fitting_prompts, grouped, row_slices
from cgpo.scoring import TaskScorer
from cgpo.trainer import CGPOTrainer


class RecordingTimer(PhaseTimer):
    """A PhaseTimer that knows which phase is running in each thread (judging may run in a worker thread)."""

    _running = threading.local()

    @contextmanager
    def __call__(self, phase: str, **kwargs):
        RecordingTimer._running.phase = phase
        try:
            with super().__call__(phase, **kwargs):
                yield
        finally:
            RecordingTimer._running.phase = None

    @classmethod
    def current(cls) -> str | None:
        return getattr(cls._running, "phase", None)


def test_a_bar_is_generated_in_the_generate_phase_and_judged_in_the_judge_phase(write_run_config, monkeypatch):
    # tiny_json: CRRAFT with a generated a_bar (see conftest.py)
    config = write_run_config(training={"max_steps": 1, "learning_rate": 1.0e-3, "seed": 0})
    trainer = CGPOTrainer(load_run_config(config), log=lambda _: None, fresh=True)
    trainer.setup()
    calls: list[tuple[str, str | None]] = []
    original_generate = rollout_phase.generate

    def recording_generate(model, *args, **kwargs):
        calls.append(("reference" if model is trainer.reference else "policy", RecordingTimer.current()))
        return original_generate(model, *args, **kwargs)

    original_verdicts = TaskScorer.baseline_verdicts

    def recording_verdicts(self, *args, **kwargs):
        calls.append(("a_bar verdicts", RecordingTimer.current()))
        return original_verdicts(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "PhaseTimer", RecordingTimer)
    monkeypatch.setattr(rollout_phase, "generate", recording_generate)
    monkeypatch.setattr(TaskScorer, "baseline_verdicts", recording_verdicts)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.close()
    assert ("reference", "generate") in calls  # a_bar of tiny_json, sampled from pi_ref
    assert ("policy", "generate") in calls
    assert ("a_bar verdicts", "judge") in calls  # CRRAFT's fallback reads the verdicts on a_bar
    assert all(phase in ("generate", "judge") for _, phase in calls), calls
    assert metrics["time/generate"] > 0 and metrics["time/judge"] > 0


def test_prompt_filter_grouping_and_row_slices():
    assert fitting_prompts([[1] * 3, [1] * 8, [1] * 5], max_new_tokens=4, max_positions=9) == [0, 2]
    assert fitting_prompts([[1] * 100], max_new_tokens=4, max_positions=0) == [0]  # 0: no limit
    assert grouped(["a1", "b1", "a2"], key=lambda s: s[0]) == [("a", ["a1", "a2"]), ("b", ["b1"])]
    assert row_slices([4, 0, 2]) == [slice(0, 4), slice(4, 4), slice(4, 6)]


def test_judge_rates_count_violations_and_errors_per_judge():
    column = [Verdict(1, "ok"), Verdict(0, "no"), Verdict(-1, "broke"), Verdict(0, "no")]
    mixture = MixtureResult(verdicts=[1, 0, -1, 0], per_judge={"format": column})
    assert judge_rates(mixture) == {"format": {"violation_rate": 0.5, "error_rate": 0.25}}
