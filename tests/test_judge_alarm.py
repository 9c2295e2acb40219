"""The judge error-rate alarm: consecutive failing steps stop the run or warn once per episode."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgpo.config import JudgeErrorAlarmConfig
from cgpo.config_loader import load_task_config
from cgpo.errors import ConfigError, UserError
from cgpo.judge_alarm import JudgeErrorAlarm, JudgeErrorAlarmStop


def _rates(**by_key: float) -> dict[str, float]:
    """Metrics of one step: ``TASK__LABEL=rate`` gives ``task/TASK/judge/LABEL/error_rate``."""
    metrics: dict[str, float] = {"loss": 0.1}
    for key, rate in by_key.items():
        task, label = key.split("__")
        metrics[f"task/{task}/judge/{label}/error_rate"] = rate
        metrics[f"task/{task}/judge/{label}/violation_rate"] = 0.9  # never read by the alarm
    return metrics


def test_stop_after_n_consecutive_steps_above_the_threshold_names_task_judge_rates_and_steps():
    alarm = JudgeErrorAlarm({"code_task": JudgeErrorAlarmConfig(max_error_rate=0.5, steps=3)}, log=print)
    alarm.update(1, _rates(code_task__code=1.0))
    alarm.update(2, _rates(code_task__code=0.5))  # at the threshold, not above: the episode ends
    alarm.update(3, _rates(code_task__code=0.75))
    alarm.update(4, _rates(code_task__code=1.0))
    with pytest.raises(JudgeErrorAlarmStop) as info:
        alarm.update(5, _rates(code_task__code=0.875))
    message = str(info.value)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line and exits 2
    assert "task code_task" in message and "judge 'code'" in message
    assert "75%, 100%, 88%" in message and "steps 3-5" in message and "max_error_rate 0.5" in message


def test_warn_logs_one_line_per_episode_and_training_goes_on():
    lines: list[str] = []
    alarm = JudgeErrorAlarm({"t": JudgeErrorAlarmConfig(max_error_rate=0.2, steps=2, action="warn")}, lines.append)
    for step, rate in enumerate([0.9, 0.9, 0.9, 0.9, 0.0, 0.3, 0.4, 0.1], start=1):
        alarm.update(step, _rates(t__llm=rate))
    assert len(lines) == 2  # steps 1-2 (not again at 3 and 4), then steps 6-7 after the good step 5
    assert lines[0].startswith("WARNING: task t: judge 'llm'") and "steps 1-2" in lines[0]
    assert "steps 6-7" in lines[1] and "training goes on" in lines[1]


def test_each_judge_and_task_is_counted_on_its_own_with_its_tasks_settings():
    lines: list[str] = []
    settings = {"a": JudgeErrorAlarmConfig(steps=2, action="warn"), "b": JudgeErrorAlarmConfig(steps=4)}
    alarm = JudgeErrorAlarm(settings, lines.append)
    for step in range(1, 4):
        alarm.update(step, _rates(a__math=1.0, a__format=0.0, b__math=1.0))
    assert len(lines) == 1 and "task a: judge 'math'" in lines[0]
    with pytest.raises(JudgeErrorAlarmStop, match="task b: judge 'math'"):
        alarm.update(4, _rates(a__math=1.0, b__math=1.0))


def test_a_step_without_the_judges_rate_neither_extends_nor_ends_an_episode():
    alarm = JudgeErrorAlarm({}, log=print)  # defaults: above 0.5 for 3 steps stops
    alarm.update(1, _rates(t__code=1.0))
    alarm.update(2, {"task/t/judge/code/error_rate": float("nan")})  # no sample judged this step
    alarm.update(3, {"loss": 0.0})
    alarm.update(4, _rates(t__code=1.0))
    with pytest.raises(JudgeErrorAlarmStop, match="steps 1-5"):
        alarm.update(5, _rates(t__code=1.0))


def test_max_error_rate_one_disables_the_alarm_and_state_survives_a_checkpoint():
    off = JudgeErrorAlarm({"t": JudgeErrorAlarmConfig(max_error_rate=1.0, steps=1)}, log=print)
    for step in range(1, 10):
        off.update(step, _rates(t__code=1.0))
    first = JudgeErrorAlarm({}, log=print)
    first.update(1, _rates(t__code=1.0))
    first.update(2, _rates(t__code=1.0))
    resumed = JudgeErrorAlarm({}, log=print)
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(JudgeErrorAlarmStop, match="steps 1-3"):
        resumed.update(3, _rates(t__code=1.0))


TASK = """\
name: arith
prompts:
  train: {path: data.jsonl}
  metadata_fields: [answer]
judges: [math]
optimizer: crpg
kl_threshold: 10.0
"""


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text('{"prompt": "What is 1+1?", "answer": "2"}\n')
    return tmp_path


def test_task_yaml_key_loads_with_defaults_and_overrides(task_folder):
    (task_folder / "task.yaml").write_text(TASK)
    assert load_task_config(task_folder / "task.yaml").judge_error_alarm == JudgeErrorAlarmConfig(0.5, 3, "stop")
    (task_folder / "task.yaml").write_text(TASK + "judge_error_alarm: {max_error_rate: 0.2, steps: 5, action: warn}\n")
    assert load_task_config(task_folder / "task.yaml").judge_error_alarm == JudgeErrorAlarmConfig(0.2, 5, "warn")


@pytest.mark.parametrize(
    "value, key, words",
    [
        ("{max_error_rate: 1.5}", "judge_error_alarm.max_error_rate", "must be in [0, 1]"),
        ("{steps: 0}", "judge_error_alarm.steps", "> 0"),
        ("{action: halt}", "judge_error_alarm.action", "stop"),
        ("{max_rate: 0.3}", "judge_error_alarm", "max_rate"),
    ],
)
def test_bad_judge_error_alarm_values_are_located_errors(task_folder, value, key, words):
    (task_folder / "task.yaml").write_text(TASK + f"judge_error_alarm: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_task_config(task_folder / "task.yaml")
    assert info.value.key_path.startswith(key) and words in str(info.value)
    assert "task.yaml" in str(info.value)
