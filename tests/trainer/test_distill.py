"""A task's ``sampler``: a teacher of another tokenizer generates, the tiny student re-encodes and trains.

The teacher is the random Llama over SmolLM2's real byte-level BPE tokenizer (``bpe_model_dir``, its own chat
template); the student is the test-size tiny model (character-level tokenizer, ``role: content`` template).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cgpo.cli import main
from cgpo.config_loader import load_run_config
from cgpo.data import encode_prompt
from cgpo.phases.batches import DrawnPrompts
from cgpo.phases.loss import sample_logprobs
from cgpo.phases.rollout import generate_rollouts
from cgpo.rollout import eos_token_ids, generate
from cgpo.samplers import finished_rows, reencode
from cgpo.trainer import CGPOTrainer

REPO = Path(__file__).resolve().parents[2]
MAX_NEW = 12


@pytest.fixture
def distill_config(tmp_path: Path, tiny_models_dir: Path, bpe_model_dir: Path):
    """A run config of two tasks with the BPE teacher as their sampler (crraft and raft), K = 3, T = 12."""

    def write(training: dict | None = None, **task_overrides: object) -> Path:
        reward = {"model": str(tiny_models_dir / "reward"), "baseline": "reference"}
        small = {"batch_size": 2, "sampling": {"num_samples": 3, "max_new_tokens": MAX_NEW}}
        sampler = {"path": str(bpe_model_dir), "dtype": "float32"}
        tasks = [
            {"include": str(REPO / "tasks" / "tiny_json.yaml"), "reward": reward, "optimizer": {"name": "crraft"},
             "kl_threshold": 50.0, "sampler": sampler, **small},
            {"include": str(REPO / "tasks" / "tiny_arithmetic.yaml"), "reward": reward, "optimizer": {"name": "raft"},
             "kl_threshold": None, "sampler": sampler, **small, **task_overrides},
        ]  # fmt: skip
        config = {
            "policy": {"path": str(tiny_models_dir / "policy")},
            "tasks": tasks,
            "training": {"max_steps": 1, "learning_rate": 1.0e-2, "seed": 0, **(training or {})},
            "output_dir": str(tmp_path / "run"),
            "logging": {"progress": "none"},
        }
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture
def trainer(distill_config):
    t = CGPOTrainer(load_run_config(distill_config()), log=lambda _: None, fresh=True)
    t.setup()
    yield t
    t.close()


def _teacher(trainer):
    (sampler,) = trainer.samplers.values()  # both tasks name the same sampler: loaded once
    return sampler


def test_tasks_naming_the_same_sampler_share_one_frozen_teacher_of_another_tokenizer(trainer):
    teacher = _teacher(trainer)
    assert len(teacher.tokenizer) == 49_152 and len(trainer.tokenizer) == 100  # BPE teacher, char-level student
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.model is not trainer.unwrapped and teacher.model is not trainer.reference


def test_samples_come_from_the_teacher_and_are_re_encoded_by_the_student(trainer, monkeypatch):
    def student_must_not_generate(*args, **kwargs):
        raise AssertionError("the student generated a sample")

    monkeypatch.setattr(trainer.unwrapped, "generate", student_must_not_generate)
    drawn = [DrawnPrompts(task, trainer.draw(task)) for task in trainer.tasks]
    torch.manual_seed(7)
    rollouts = generate_rollouts(drawn, trainer.models, max_batch_size=None, policy_name=trainer.policy_path)

    # The teacher's own generate under the same seed, on its own chat template: the same texts, re-encoded.
    teacher, student = _teacher(trainer), trainer.tokenizer
    sampling = trainer.tasks[0].config.sampling  # both tasks sample alike: one teacher call for both
    prompts = [encode_prompt(teacher.tokenizer, d.task.config.format, r.message) for d in drawn for r in d.records]
    assert teacher.tokenizer.decode(prompts[0]).startswith("<|im_start|>")  # SmolLM2's template, not the student's
    torch.manual_seed(7)
    own = generate(teacher.model, teacher.tokenizer, prompts, sampling)
    done = finished_rows(own, eos_token_ids(teacher.model, teacher.tokenizer))
    expected, cut = reencode(own.texts, done, student, MAX_NEW)
    ended = [ids[-1] == student.eos_token_id for ids in expected]
    assert any(ended) and not all(ended)  # both boundaries occur: the student's EOS, and a cut at T
    # A finished teacher text without the student's EOS was cut at T (the EOS did not fit).
    assert all(len(ids) == MAX_NEW for ids, end, fin in zip(expected, ended, done, strict=True) if fin and not end)

    k = sampling.num_samples
    rows = [row for r in rollouts for row in range(r.rollout.completion_ids.shape[0])]
    assert len(rows) == len(expected) == k * sum(len(d.indices) for d in drawn)
    assert [bool(c) for r in rollouts for c in r.rollout.cut] == cut and any(cut)  # what the limit cut
    offset = 0
    for r in rollouts:
        for row in range(r.rollout.completion_ids.shape[0]):
            length = int(r.rollout.completion_mask[row].sum())
            ids = r.rollout.completion_ids[row, :length].tolist()
            assert ids == expected[offset + row]
            assert 0 < len(ids) <= MAX_NEW
            assert r.rollout.texts[row] == student.decode(ids, skip_special_tokens=True)
            prompt = r.rollout.prompt_ids[row][r.rollout.prompt_mask[row].bool()].tolist()
            assert prompt == r.drawn.prompt_ids[row // k]  # the student's own template
        offset += r.rollout.completion_ids.shape[0]


def test_the_student_log_probs_are_on_its_own_re_encoding(trainer):
    drawn = [DrawnPrompts(task, trainer.draw(task)) for task in trainer.tasks]
    torch.manual_seed(3)
    rollouts = generate_rollouts(drawn, trainer.models, max_batch_size=None, policy_name=trainer.policy_path)
    pol_tok, tempered, ref_tok = sample_logprobs(rollouts, trainer.models, with_grad=False)[0]
    assert tempered is None  # teacher samples: no importance weights pi_1 / pi_T for the KL metric
    r, student = rollouts[0], trainer.tokenizer
    k = r.task.config.sampling.num_samples
    for row in range(r.rollout.completion_ids.shape[0]):
        record = r.drawn.records[row // k]
        prompt = encode_prompt(student, r.task.config.format, record.message)
        completion = student(r.rollout.texts[row], add_special_tokens=False)["input_ids"]
        length = int(r.rollout.completion_mask[row].sum())
        if r.rollout.completion_ids[row, length - 1] == student.eos_token_id:
            completion.append(student.eos_token_id)  # the student's own EOS where the teacher ended
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logps = torch.log_softmax(trainer.unwrapped(input_ids=ids).logits[0, :-1].float(), dim=-1)
        direct = logps[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt) :]].sum()
        assert float(pol_tok[row].sum()) == pytest.approx(float(direct), abs=1e-4)
        assert float(ref_tok[row].sum()) == pytest.approx(float(direct), abs=1e-4)  # step 0: pi_ref = pi


def test_a_train_step_on_teacher_samples_changes_the_student_and_reports_its_metrics(trainer):
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in _teacher(trainer).model.named_parameters()}
    metrics = trainer.train_step()
    changed = [n for n, p in trainer.unwrapped.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    assert all(torch.equal(p, teacher_before[n]) for n, p in _teacher(trainer).model.named_parameters())
    for task in ("tiny_json", "tiny_arithmetic"):
        assert metrics[f"task/{task}/opt/kept_prompts"] >= 0
        assert torch.isfinite(torch.tensor(metrics[f"task/{task}/kl"]))
    assert 0.0 <= metrics["task/tiny_json/sampler_cut_rate"] <= 1.0
    assert metrics["task/tiny_arithmetic/opt/kept_prompts"] == 2  # RAFT keeps every prompt: SFT on its best


def test_micro_batching_trains_on_the_same_teacher_samples(distill_config):
    """With micro-batches the forwards run chunk by chunk on the student's re-encoded rollout: same loss."""
    losses = []
    for micro in (None, 2):
        t = CGPOTrainer(load_run_config(distill_config(training={"micro_batch_size": micro})), log=lambda _: None,
                        fresh=True)  # fmt: skip
        t.setup()
        try:
            torch.manual_seed(11)
            losses.append(t.train_step()["loss"])
        finally:
            t.close()
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_reencode_appends_the_students_eos_only_to_finished_texts_cuts_at_max_new_tokens_drops_unknowns(
    tiny_tokenizer,
):
    eos = tiny_tokenizer.eos_token_id
    ids, cut = reencode(["ab", "ab", "abcdef", "a東b", "a</s>"], [True, False, True, True, False], tiny_tokenizer, 4)
    assert cut == [False, False, True, False, True]
    a, b = tiny_tokenizer.convert_tokens_to_ids(["a", "b"])
    assert ids[0] == [a, b, eos]
    assert ids[1] == [a, b]  # the teacher ran out of tokens: no EOS
    assert len(ids[2]) == 4 and eos not in ids[2]  # cut at the student's limit: it ran out of room
    assert ids[3] == [a, b, eos]  # a character the student cannot write is left out
    assert ids[4] == tiny_tokenizer.convert_tokens_to_ids(list("a</s"))  # text, not the student's EOS


def test_a_teacher_prompt_too_long_for_the_teachers_positions_is_a_user_error(distill_config):
    """The student's 256 positions hold prompt + 90 characters; the teacher's 96 do not hold its prompt + 90."""
    from cgpo.errors import UserError

    sampling = {"num_samples": 2, "max_new_tokens": 90}
    t = CGPOTrainer(load_run_config(distill_config(sampling=sampling)), log=lambda _: None, fresh=True)
    t.setup()
    try:
        with pytest.raises(UserError, match=r"exceed its 96 positions; lower sampling\.max_new_tokens"):
            t.train_step()
    finally:
        t.close()


@pytest.mark.parametrize("optimizer", ["crpg", "codpo"])
def test_a_sampler_with_an_on_policy_optimizer_is_a_located_config_error(distill_config, capsys, optimizer):
    params = {"beta": 0.1, "lam": 1.0} if optimizer == "codpo" else {}
    kl = 10.0 if optimizer == "crpg" else None
    config = distill_config(optimizer={"name": optimizer, "params": params}, kl_threshold=kl)
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "run.yaml" in err and "tasks.1.sampler" in err and "raft or crraft" in err
    assert "Traceback" not in err


def test_a_missing_sampler_folder_is_a_located_config_error(distill_config, tmp_path, capsys):
    config = distill_config(sampler={"path": str(tmp_path / "no-such-teacher")})
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tasks.1.sampler.path" in err and "not found" in err


DDP_SCRIPT = r'''
"""Launched once per rank: one step with a teacher; writes this rank's weights digest and teacher samples."""
import hashlib
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

import cgpo.phases.rollout as rollout_phase  # noqa: E402
from cgpo.config_loader import load_run_config  # noqa: E402
from cgpo.trainer import CGPOTrainer  # noqa: E402


def digest(model):
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


trainer = CGPOTrainer(load_run_config(sys.argv[1]), log=lambda message: None, fresh=True)
trainer.setup()
texts = []
original = rollout_phase.sampled_rollout


def recording(*args, **kwargs):
    rollout = original(*args, **kwargs)
    texts.extend(rollout.texts)
    return rollout


rollout_phase.sampled_rollout = recording
initial = digest(trainer.unwrapped)
try:
    trainer.train()
finally:
    trainer.close()
(teacher,) = trainer.samplers.values()
evidence = {"rank": trainer.rank, "wrapper": type(trainer.policy).__name__, "teacher": type(teacher.model).__name__,
            "initial": initial, "final": digest(trainer.unwrapped), "texts": texts}
(Path(sys.argv[2]) / f"rank-{trainer.rank}.json").write_text(json.dumps(evidence))

# Ends as `cgpo train` does (cgpo.distributed.shutdown says why).
from cgpo.distributed.shutdown import exit_process, leave_process_group  # noqa: E402

leave_process_group()
exit_process(0)
'''


@pytest.mark.slow
def test_two_process_ddp_with_a_teacher_keeps_replicas_identical_each_rank_sampling_its_own(distill_config, tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ddp_helpers", Path(__file__).with_name("test_ddp.py"))
    assert spec is not None and spec.loader is not None
    ddp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp)  # the 2-process CPU launcher of test_ddp.py (environment.md §6)
    out = tmp_path / "evidence"
    out.mkdir()
    result, _ = ddp._launch_script(tmp_path, DDP_SCRIPT, [str(distill_config()), str(out)])
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    first, second = (json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert first["wrapper"] == "DistributedDataParallel" and first["teacher"] == "LlamaForCausalLM"  # not wrapped
    assert first["initial"] == second["initial"] and first["final"] == second["final"] != first["initial"]
    assert first["texts"] and first["texts"] != second["texts"]  # each rank's own prompts and draws
