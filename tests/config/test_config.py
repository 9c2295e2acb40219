"""Loading task YAMLs and run configs: shorthands, includes, overrides and located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cgpo.config_loader import load_run_config, load_task_config
from cgpo.errors import ConfigError

TASK = """\
name: arith
prompts:
  train: {path: data.jsonl}
  metadata_fields: [answer]
judges:
  - name: math
    params: {answer_format: boxed}
optimizer: crpg
kl_threshold: 10.0
weight: 1.0
"""

RUN = """\
policy: {path: tiny:policy}
tasks:
  - task.yaml
training:
  max_steps: 3
output_dir: out
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"prompt": "What is 1+1?", "answer": "2"}\n')
    (tmp_path / "task.yaml").write_text(TASK)
    (tmp_path / "run.yaml").write_text(RUN)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


def test_task_loads_with_shorthands_expanded(folder):
    task = load_task_config(folder / "task.yaml")
    assert task.optimizer.name == "crpg" and task.optimizer.params == {}
    assert task.prompts.metadata_fields == {"answer": "answer"}
    assert task.judges[0].params == {"answer_format": "boxed"}
    assert Path(task.prompts.train.path) == (folder / "data.jsonl").resolve()  # relative to the YAML


def test_run_config_resolves_task_files_relative_to_itself(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "run.yaml").write_text(RUN.replace("task.yaml", "../task.yaml"))
    config = load_run_config(folder / "sub" / "run.yaml")
    assert [t.name for t in config.tasks] == ["arith"]
    assert config.reference is None and config.training.max_steps == 3


def test_overrides_reach_into_tasks_and_are_typed(folder):
    config = load_run_config(folder / "run.yaml", ["training.max_steps=7", "tasks.0.weight=2", "output_dir=/x"])
    assert config.training.max_steps == 7 and config.tasks[0].weight == 2.0 and config.output_dir == "/x"
    err = error_of(load_run_config, folder / "run.yaml", ["tasks.0.weight=-1"])
    assert (err.file, err.key_path) == ("<command line>", "tasks.0.weight")
    assert "must be >= 0" in err.reason
    err = error_of(load_run_config, folder / "run.yaml", ["tasks.3.weight=1"])
    assert "no list item 3" in err.reason


def test_error_in_task_file_names_the_task_file_key_and_line(folder):
    write(folder, "task.yaml", TASK.replace("weight: 1.0", "weight: -2"))
    err = error_of(load_run_config, folder / "run.yaml")
    assert (err.file, err.key_path, err.line) == ("task.yaml", "weight", 10)
    assert str(err) == "task.yaml: weight: must be >= 0, got -2.0 (line 10)"


def test_unknown_key_gets_did_you_mean_with_line(folder):
    write(folder, "task.yaml", TASK.replace("weight: 1.0", "wieght: 1.0"))
    err = error_of(load_task_config, folder / "task.yaml")
    assert (err.key_path, err.line) == ("wieght", 10) and "did you mean 'weight'" in err.reason


def test_include_overrides_in_run_config_are_located_in_the_run_config(folder):
    write(folder, "run.yaml", RUN.replace("  - task.yaml", "  - {include: task.yaml, batch_size: 0}"))
    err = error_of(load_run_config, folder / "run.yaml")
    assert (err.file, err.key_path, err.line) == ("run.yaml", "tasks.0.batch_size", 3)


def test_task_include_merges_a_base_file(folder):
    write(folder, "variant.yaml", "include: task.yaml\nname: arith2\nsampling: {num_samples: 8}\n")
    task = load_task_config(folder / "variant.yaml")
    assert task.name == "arith2" and task.sampling.num_samples == 8 and task.judges[0].name == "math"


def test_include_switching_optimizer_or_reward_kind_replaces_the_block(folder):
    # Refining a block deep-merges; switching implementation must not inherit the base's params.
    base = TASK.replace("optimizer: crpg", "optimizer: {name: codpo, params: {beta: 0.2}}").replace(
        "kl_threshold: 10.0\n",
        "",  # neither codpo nor raft reads it (a set kl_threshold is refused)
    )
    write(folder, "task.yaml", base + "reward: {model: tiny:reward, baseline: none, batch_size: 4}\n")
    write(
        folder,
        "variant.yaml",
        "include: task.yaml\noptimizer: {name: raft}\nreward: {function: length_penalty, params: {max_length: 9}}\n",
    )
    task = load_task_config(folder / "variant.yaml")
    assert task.optimizer.name == "raft" and task.optimizer.params == {}
    assert task.reward.model is None and task.reward.function == "length_penalty"
    assert task.reward.baseline == "none" and task.reward.batch_size == 4  # calibration settings still merge
    write(folder, "same.yaml", "include: task.yaml\noptimizer: {name: codpo, params: {lam: 2.0}}\n")
    assert load_task_config(folder / "same.yaml").optimizer.params == {"beta": 0.2, "lam": 2.0}


def test_include_cycle_is_reported(folder):
    write(folder, "a.yaml", "include: b.yaml\n")
    write(folder, "b.yaml", "include: a.yaml\n")
    assert "include cycle" in error_of(load_task_config, folder / "a.yaml").reason


@pytest.mark.parametrize(
    ("old", "new", "key_path", "reason"),
    [
        ("optimizer: crpg", "optimizer: crgp", "optimizer", "did you mean 'crpg'"),
        ("  - name: math", "  - name: maths", "judges.0.name", "unknown judge 'maths'"),
        ("{answer_format: boxed}", "{answer_format: boxes}", "judges.0.params.answer_format", "boxed"),
        ("kl_threshold: 10.0", "kl_threshold: 0", "kl_threshold", "must be > 0"),
        ("kl_threshold: 10.0\n", "", "kl_threshold", "needs a KL threshold"),
        ("{path: data.jsonl}", "{path: missing.jsonl}", "prompts.train.path", "data file not found"),
        ("{path: data.jsonl}", "{path: data.txt}", "prompts.train.path", "unsupported file type"),
        ("name: arith", "name: 'a b'", "name", "letters, digits"),
        ("weight: 1.0", "weight: heavy", "weight", "must be a number"),
    ],
)
def test_task_mistakes_are_located(folder, old, new, key_path, reason):
    write(folder, "task.yaml", TASK.replace(old, new))
    err = error_of(load_task_config, folder / "task.yaml")
    assert err.file == "task.yaml" and err.key_path == key_path, str(err)
    assert reason in err.reason, str(err)


def test_template_fields_must_be_known(folder):
    write(folder, "task.yaml", TASK + "format: {template: 'Q: {question}'}\n")
    err = error_of(load_task_config, folder / "task.yaml")
    assert err.key_path == "format.template" and "question" in err.reason


@pytest.mark.parametrize("optimizer", ["codpo", "raft"])
def test_a_kl_threshold_the_optimizer_does_not_read_is_refused(folder, optimizer):
    write(folder, "task.yaml", TASK.replace("optimizer: crpg", f"optimizer: {optimizer}"))
    err = error_of(load_task_config, folder / "task.yaml")
    assert err.file == "task.yaml" and err.key_path == "kl_threshold", str(err)
    assert f"{optimizer} does not read kl_threshold" in err.reason
    # Inherited from an included task, it is cleared with null.
    write(folder, "variant.yaml", f"include: task.yaml\noptimizer: {optimizer}\nkl_threshold: null\n")
    write(folder, "task.yaml", TASK)
    assert load_task_config(folder / "variant.yaml").kl_threshold is None


def test_codpo_needs_two_samples(folder):
    write(folder, "task.yaml", TASK.replace("optimizer: crpg", "optimizer: codpo") + "sampling: {num_samples: 1}\n")
    err = error_of(load_task_config, folder / "task.yaml")
    assert err.key_path == "sampling.num_samples" and "at least 2" in err.reason


@pytest.mark.parametrize(
    ("text", "reason", "line"),
    [
        ("name: [unclosed\n", "invalid YAML", 2),
        ("name: a\nname: b\n", "duplicate key 'name'", 2),
        ("- just\n- a list\n", "must be a mapping", None),
    ],
)
def test_malformed_files(folder, text, reason, line):
    write(folder, "bad.yaml", text)
    err = error_of(load_task_config, folder / "bad.yaml")
    assert reason in err.reason and err.line == line and err.file == "bad.yaml"


def test_missing_file(folder):
    err = error_of(load_run_config, folder / "nope.yaml")
    assert err.file == "nope.yaml" and err.reason == "file not found"
    write(folder, "run.yaml", RUN.replace("task.yaml", "gone.yaml"))
    err = error_of(load_run_config, folder / "run.yaml")
    assert (err.file, err.key_path) == ("run.yaml", "tasks.0") and "gone.yaml" in err.reason


def test_duplicate_task_names_and_empty_tasks(folder):
    write(folder, "run.yaml", RUN.replace("  - task.yaml", "  - task.yaml\n  - task.yaml"))
    err = error_of(load_run_config, folder / "run.yaml")
    assert err.key_path == "name" and "used by task 0" in err.reason
    write(folder, "run.yaml", RUN.replace("  - task.yaml", "  []").replace("tasks:\n", "tasks:"))
    assert "at least one task" in error_of(load_run_config, folder / "run.yaml").reason


def test_run_config_keys(folder):
    write(folder, "run.yaml", RUN.replace("max_steps: 3", "max_steps: 3\n  lora: {r: 0}"))
    err = error_of(load_run_config, folder / "run.yaml")
    assert (err.key_path, err.line) == ("training.lora.r", 6)
    write(folder, "run.yaml", RUN.replace("tiny:policy", "tiny:giant"))
    assert error_of(load_run_config, folder / "run.yaml").key_path == "policy.path"
    write(folder, "run.yaml", RUN.replace("output_dir: out\n", ""))
    err = error_of(load_run_config, folder / "run.yaml")
    assert (err.key_path, err.reason) == ("output_dir", "missing required key")


def test_override_can_replace_the_task_list_with_task_files(folder):
    (folder / "other.yaml").write_text(TASK.replace("name: arith", "name: other"))
    config = load_run_config(folder / "run.yaml", ["tasks=[other.yaml, task.yaml]"])
    assert [t.name for t in config.tasks] == ["other", "arith"]
    err = error_of(load_run_config, folder / "run.yaml", ["tasks=[missing.yaml]"])
    assert "missing.yaml" in err.reason


def test_zero_means_off_for_both_periodic_settings(folder):
    config = load_run_config(folder / "run.yaml", ["training.eval_every=0", "training.save_every=0"])
    assert config.training.eval_every == 0 and config.training.save_every == 0


@pytest.mark.parametrize(
    ("reward", "key", "reason"),
    [
        ("{model: tiny:reward, dtype: float64}", "dtype", "must be one of"),
        ("{model: tiny:reward, chat_template: sometimes}", "chat_template", "must be one of"),
        ("{model: tiny:reward, append_eos: maybe}", "append_eos", "boolean"),
        ("{model: tiny:reward, max_length: 1}", "max_length", "must be >= 2 or null"),
        ("{function: length_penalty, append_eos: true}", "append_eos", "only applies to 'model'"),
        ("{baseline: none, dtype: bfloat16}", "dtype", "only applies to 'model'"),
    ],
)
def test_reward_model_settings_are_checked_with_file_key_and_line(folder, reward, key, reason):
    write(folder, "task.yaml", TASK + f"reward: {reward}\n")
    err = error_of(load_task_config, folder / "task.yaml")
    assert (err.file, err.key_path, err.line) == ("task.yaml", f"reward.{key}", 11), str(err)
    assert reason in err.reason, str(err)


def test_reward_model_settings_load_and_go_when_an_include_switches_to_a_function(folder):
    settings = "reward: {model: tiny:reward, dtype: bfloat16, append_eos: true, chat_template: never, max_length: 2}\n"
    write(folder, "task.yaml", TASK + settings)
    reward = load_task_config(folder / "task.yaml").reward
    assert (reward.dtype, reward.append_eos, reward.chat_template, reward.max_length) == ("bfloat16", True, "never", 2)
    write(folder, "variant.yaml", "include: task.yaml\nreward: {function: length_penalty, params: {max_length: 9}}\n")
    reward = load_task_config(folder / "variant.yaml").reward
    assert reward.function == "length_penalty" and (reward.dtype, reward.append_eos, reward.chat_template) == (
        None, False, "auto",
    )  # fmt: skip
    assert reward.max_length == 2  # a scoring setting shared by both kinds stays
