"""FSDP2 on 2 CPU processes: the policy really sharded, trained like DDP, checkpointed in shards, resumed.

accelerate 1.16 never shards on CPU: with ``ACCELERATE_USE_CPU=true`` an FSDP launch becomes MULTI_CPU (DDP)
without a word. cgpo shards the policy itself (``cgpo.distributed.fsdp``) when the launcher asked for FSDP,
so these tests launch ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (the shipped file,
with ``--num_processes 2 --mixed_precision no``) and check that sharding really happened: every parameter
is a DTensor whose local shard is smaller than the full shape, and the checkpoint holds one shard file per
process.

The launched probe (written to ``tmp_path``) drives :class:`cgpo.trainer.CGPOTrainer` as ``cgpo train``
does and writes per-rank evidence (parameter placements, the digest of the gathered weights, each step's
metrics, the optimizer state's shapes) to ``OUT/rank-{rank}.json``. Nothing in the trainer is instrumented.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ddp import _free_port

REPO = Path(__file__).resolve().parents[2]
BATCH = 2  # prompts per task per process

PROBE = r'''
"""Launched once per rank: train with CGPOTrainer, then write this rank's evidence to OUT."""
import hashlib
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from cgpo.config_loader import load_run_config  # noqa: E402
from cgpo.distributed.fsdp import sharded_root  # noqa: E402
from cgpo.trainer import CGPOTrainer  # noqa: E402


def gathered(model):
    """The full weights on every process (a collective under FSDP), in name order."""
    if torch.distributed.is_initialized() and any(isinstance(p, DTensor) for p in model.parameters()):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        state = model.state_dict()
    return {k: v.detach().to(torch.float32).cpu().clone() for k, v in sorted(state.items())}  # no aliases


def digest(state):
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def optimizer_digest(model, optimizer):
    """SHA-256 of the full AdamW state (gathered under FSDP), keyed by parameter name: any sharding compares."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))["state"]
    h = hashlib.sha256()
    for name in sorted(state):
        for key in sorted(state[name]):
            value = state[name][key]
            value = value.full_tensor() if isinstance(value, DTensor) else value
            h.update(f"{name}.{key}".encode())
            h.update(torch.as_tensor(value).detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def placements(model):
    out = {}
    for name, p in model.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        out[name] = {"dtensor": isinstance(p, DTensor), "full": list(p.shape), "local": list(local.shape),
                     "trainable": p.requires_grad}
    return out


config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = CGPOTrainer(load_run_config(config_path, sys.argv[3:]), log=lambda message: None, fresh=False)
trainer.setup()
resumed_at = trainer.step
initial = gathered(trainer.unwrapped)
optimizer = trainer.optimizer.optimizer
optimizer_initial = optimizer_digest(trainer.unwrapped, optimizer) if resumed_at else None
steps = []
original_step = trainer.train_step


def recording_step():
    metrics = original_step()
    steps.append({k: v for k, v in metrics.items() if not k.startswith("time/") and k != "tokens_per_s"})
    return metrics


trainer.train_step = recording_step
try:
    trainer.train()
finally:
    trainer.close()
final = gathered(trainer.unwrapped)
rank = trainer.rank
if rank == 0:
    torch.save(final, out / "final.pt")
    torch.save(initial, out / "initial.pt")
evidence = {
    "rank": rank,
    "world": trainer.world,
    "fsdp": trainer.fsdp,
    "distributed_type": str(trainer.accelerator.distributed_type),
    "policy_class": type(trainer.policy).__name__,
    "root_class": type(sharded_root(trainer.unwrapped)).__name__,
    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    "placements": placements(trainer.unwrapped),
    "exp_avg_local": sorted(
        list((s["exp_avg"].to_local() if isinstance(s["exp_avg"], DTensor) else s["exp_avg"]).shape)
        for s in optimizer.state.values()
    ),
    "resumed_at": resumed_at,
    "initial": digest(initial),
    "optimizer_initial": optimizer_initial,
    "optimizer_final": optimizer_digest(trainer.unwrapped, optimizer),
    "final": digest(final),
    "steps": steps,
    "samplers": {t.name: t.sampler.state_dict() for t in trainer.tasks},
    "step": trainer.step,
}
(out / f"rank-{rank}.json").write_text(json.dumps(evidence))

# Ends as `cgpo train` does: FSDP2's gloo threads outlive the group, and tearing them down in interpreter
# finalization now and then aborts the process (cgpo.distributed.shutdown).
from cgpo.distributed.shutdown import exit_process, leave_process_group  # noqa: E402

leave_process_group()
exit_process(0)
'''


def _run_config(
    models: Path,
    output_dir: Path,
    *,
    steps: int,
    micro_batch_size: int | None = None,
    eval_every: int = 0,
    lora: str = "",
) -> str:
    # A format judge that about 60% of random samples pass, so that every optimizer has satisfied and
    # violating samples to learn from (as in test_ddp.py).
    judge = '[{name: format, params: {must_match: ["[a-m]"]}}]'
    common = f"batch_size: {BATCH}, judges: {judge}, sampling: {{num_samples: 4, max_new_tokens: 6}}"
    extra = f", micro_batch_size: {micro_batch_size}" if micro_batch_size else ""
    extra += f", lora: {lora}" if lora else ""
    return f"""
policy: {{path: {models / "policy"}}}
tasks:
  - {{include: {REPO}/tasks/tiny_arithmetic.yaml, reward: {{model: {models / "reward"}, baseline: reference}}, {common}}}
  - {{include: {REPO}/tasks/tiny_json.yaml, reward: {{model: {models / "reward"}, baseline: reference}}, {common}}}
  - {{include: {REPO}/tasks/tiny_instructions.yaml, weight: 0.5,
     reward: {{model: {models / "reward"}, baseline: generated}}, {common}}}
training: {{max_steps: {steps}, learning_rate: 1.0e-2, lr_scheduler: constant_with_warmup, warmup_steps: 2,
           save_every: 1, keep_checkpoints: 5, eval_every: {eval_every}{extra}}}
output_dir: {output_dir}
logging: {{progress: none}}
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # No inherited ACCELERATE_* settings, and an empty HF_HOME: no default accelerate config file applies.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(ACCELERATE_USE_CPU="true", HF_HOME=str(tmp_path / "hf-home"), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), **extra)  # fmt: skip
    return env


def _launcher(mode: str, processes: int) -> list[str]:
    """``accelerate launch`` for N CPU processes: the shipped FSDP file, or DDP (environment.md §6)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if mode == "fsdp":
        command += ["--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml")]
    else:
        command += ["--multi_gpu"]
    return [*command, "--num_processes", str(processes), "--num_machines", "1", "--main_process_port",
            str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def _probe(tmp_path: Path, name: str, mode: str, config: Path, *, processes: int = 2, args: tuple = ()) -> Path:
    """Run the probe under the launcher (``mode`` fsdp or ddp), or as one plain process (``plain``); returns its
    evidence folder."""
    out = tmp_path / f"evidence-{name}"
    out.mkdir()
    script = tmp_path / "fsdp_probe.py"
    script.write_text(PROBE)
    command = [sys.executable, str(script)] if mode == "plain" else [*_launcher(mode, processes), str(script)]
    result = subprocess.run([*command, str(config), str(out), *args], capture_output=True, text=True,
                            env=_env(tmp_path), timeout=300, check=False, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


def _evidence(out: Path, ranks: int = 2) -> list[dict]:
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(ranks)]


def _assert_sharded(ranks: list[dict], policy_class: str = "FSDPLlamaForCausalLM") -> None:
    """Really FSDP2: DTensor parameters, each rank holding a shard smaller than the full shape."""
    for r, ev in enumerate(ranks):
        assert ev["rank"] == r and ev["world"] == 2 and ev["fsdp"] is True, ev
        assert ev["backend"] == "gloo" and ev["distributed_type"].endswith("MULTI_CPU")
        # No DDP wrapper: FSDP2 shards the module in place, swapping in a subclass of the model's own class
        # (under LoRA the root is the PEFT model's base model)
        assert ev["policy_class"] == policy_class and ev["root_class"] == "FSDPLlamaForCausalLM", ev["policy_class"]
        for name, p in ev["placements"].items():
            assert p["dtensor"], name
            assert p["local"][0] < p["full"][0] and p["local"][1:] == p["full"][1:], (name, p)
    full = sum(_numel(p["full"]) for p in ranks[0]["placements"].values())
    local = [sum(_numel(p["local"]) for p in ev["placements"].values()) for ev in ranks]
    assert sum(local) == full and max(local) < 0.6 * full, (local, full)
    # AdamW state is sharded like the (trainable) parameters
    trainable = sum(_numel(p["local"]) for p in ranks[0]["placements"].values() if p["trainable"])
    assert sum(_numel(s) for s in ranks[0]["exp_avg_local"]) == trainable


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "sharded").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_size", [None, 2], ids=["full-batch", "micro-batch-2"])
def test_fsdp_two_processes_shard_the_policy_and_train_like_ddp(tmp_path, tiny_models_dir, micro_batch_size):
    import torch
    from safetensors.torch import load_file

    steps = 2
    results = {}
    for mode in ("fsdp", "ddp"):
        config = tmp_path / f"{mode}.yaml"
        config.write_text(
            _run_config(tiny_models_dir, tmp_path / mode, steps=steps, micro_batch_size=micro_batch_size)
        )
        results[mode] = _probe(tmp_path, mode, mode, config)
    ranks = _evidence(results["fsdp"])
    _assert_sharded(ranks)
    first, second = ranks
    # Both ranks see the same gathered weights and the same reduced metrics; training moved the weights.
    assert first["initial"] == second["initial"] and first["final"] == second["final"]
    assert first["final"] != first["initial"]
    assert len(first["steps"]) == steps and first["steps"] == second["steps"]
    assert first["samplers"] == second["samplers"]
    # FSDP trains what DDP trains (reduce-scatter and all-reduce sum in different orders: rounding only).
    ddp = _evidence(results["ddp"])[0]
    for a, b in zip(first["steps"], ddp["steps"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    fsdp_final, ddp_final = torch.load(results["fsdp"] / "final.pt"), torch.load(results["ddp"] / "final.pt")
    initial = torch.load(results["fsdp"] / "initial.pt")
    for name, value in fsdp_final.items():
        assert torch.allclose(value, ddp_final[name], atol=1e-5, rtol=1e-4), name
    assert any(not torch.equal(fsdp_final[k], initial[k]) for k in initial)
    # The checkpoint: one shard file per process plus DCP's index, all in the manifest; final/ is plain HF.
    step = tmp_path / "fsdp" / "checkpoints" / f"step-{steps}"
    assert _shard_files(step) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    manifest = json.loads((step / "manifest.json").read_text())["files"]
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp", "scheduler.pt"} <= set(manifest)
    assert not (step / "policy").exists() and not (step / "optimizer.pt").exists()
    assert json.loads((step / "trainer_state.json").read_text())["format"] == "dcp"
    saved = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert all(torch.equal(saved[k].float(), fsdp_final[k]) for k in saved)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final").state_dict()
    assert loaded.keys() == fsdp_final.keys()
    assert all(torch.equal(loaded[k], fsdp_final[k]) for k in loaded)


LORA = "{r: 2, alpha: 4, dropout: 0.0, target_modules: [q_proj, v_proj], save: %s}"
# peft 0.21's get_peft_model reads a property that transformers 5.25 deprecated (as in cgpo.trainer._with_lora)
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


def _lora_runs(tmp_path: Path, models: Path, saves: dict[str, str], micro_batch_size: int | None = None) -> dict:
    """A 2-step LoRA run per mode (fsdp, ddp: its ``save``) on 2 processes; returns each mode's evidence folder."""
    results = {}
    for mode, save in saves.items():
        config = tmp_path / f"{mode}.yaml"
        config.write_text(
            _run_config(models, tmp_path / mode, steps=2, micro_batch_size=micro_batch_size, lora=LORA % save)
        )
        results[mode] = _probe(tmp_path, mode, mode, config)
    return results


def _assert_only_adapters_trained(initial: dict, final: dict) -> None:
    """The gathered weights: adapters on q_proj and v_proj only, and only adapter weights moved."""
    import torch

    assert initial.keys() == final.keys()
    lora = {k for k in initial if ".lora_A." in k or ".lora_B." in k}
    assert lora and all("q_proj" in k or "v_proj" in k for k in lora)
    changed = {k for k in initial if not torch.equal(initial[k], final[k])}
    assert changed and changed <= lora, changed - lora


@pytest.mark.slow
@pytest.mark.filterwarnings(PEFT_WARNING)
def test_fsdp_lora_shards_the_adapters_and_trains_like_ddp(tmp_path, tiny_models_dir):
    """LoRA under FSDP2: base and adapter weights sharded in one unit per layer, the same run as DDP LoRA."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    results = _lora_runs(tmp_path, tiny_models_dir, {"fsdp": "adapter", "ddp": "adapter"})
    ranks = _evidence(results["fsdp"])
    _assert_sharded(ranks, policy_class="PeftModelForCausalLM")
    placements = ranks[0]["placements"]
    adapters = {k: p for k, p in placements.items() if ".lora_A." in k or ".lora_B." in k}
    assert adapters and all(p["dtensor"] and p["trainable"] for p in adapters.values())
    assert not any(p["trainable"] for k, p in placements.items() if k not in adapters)
    first, second = ranks
    assert first["final"] == second["final"] and first["steps"] == second["steps"]
    ddp = _evidence(results["ddp"])[0]
    for a, b in zip(first["steps"], ddp["steps"], strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    initial, final = torch.load(results["fsdp"] / "initial.pt"), torch.load(results["fsdp"] / "final.pt")
    ddp_final = torch.load(results["ddp"] / "final.pt")
    assert final.keys() == ddp_final.keys()
    for name, value in final.items():
        assert torch.allclose(value, ddp_final[name], atol=1e-5, rtol=1e-4), name
    _assert_only_adapters_trained(initial, final)
    # The checkpoint: DCP shards of the whole PEFT model and of AdamW's adapter moments.
    step = tmp_path / "fsdp" / "checkpoints" / "step-2"
    assert _shard_files(step) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # final/ is the adapter (save: adapter), and PeftModel loads it onto the base model.
    assert (tmp_path / "fsdp" / "final" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "fsdp" / "final" / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy")
    loaded = PeftModel.from_pretrained(base, tmp_path / "fsdp" / "final").state_dict()
    for name in (k for k in final if ".lora_" in k):
        assert torch.equal(loaded[name], final[name]), name
    # A resume (to step 3, same output_dir) restores both exactly.
    resumed = _evidence(_probe(tmp_path, "resumed", "fsdp", tmp_path / "fsdp.yaml", args=("training.max_steps=3",)))
    for ev in resumed:
        assert ev["resumed_at"] == 2 and ev["initial"] == first["final"]
        assert ev["optimizer_initial"] == first["optimizer_final"] and ev["final"] != ev["initial"]


@pytest.mark.slow
@pytest.mark.filterwarnings(PEFT_WARNING)
def test_fsdp_lora_with_micro_batches_saves_the_merged_model(tmp_path, tiny_models_dir):
    """``save: merged`` under FSDP: final/ is plain Llama weights, base + scale * B @ A of the trained adapters;
    with micro-batches (gradients unsynced until the last push) the same weights as DDP's within rounding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # DDP saves adapters here: its save_final merges the live PEFT model in place (merge_and_unload), which
    # would leave the probe no adapters to gather and no AdamW parameters to name.
    results = _lora_runs(tmp_path, tiny_models_dir, {"fsdp": "merged", "ddp": "adapter"}, micro_batch_size=2)
    final, ddp_final = torch.load(results["fsdp"] / "final.pt"), torch.load(results["ddp"] / "final.pt")
    _assert_only_adapters_trained(torch.load(results["fsdp"] / "initial.pt"), final)
    for name, value in final.items():
        assert torch.allclose(value, ddp_final[name], atol=1e-5, rtol=1e-4), name
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy"),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    peft.load_state_dict(final, strict=True)
    expected = peft.merge_and_unload().state_dict()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final").state_dict()
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every rank at once, like a lost node (torchrun starts each rank in its own
    session, so killing the launcher's process group would leave the ranks running)."""
    import psutil  # an accelerate dependency

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def _cgpo_train(tmp_path: Path, config: Path, **popen: object) -> subprocess.Popen:
    """``accelerate launch --config_file configs/accelerate/fsdp.yaml ... -m cgpo train CONFIG`` (2 processes)."""
    return subprocess.Popen([*_launcher("fsdp", 2), "-m", "cgpo", "train", str(config)], env=_env(tmp_path),
                            cwd=tmp_path, **popen)  # type: ignore[call-overload]  # fmt: skip


@pytest.mark.slow
def test_fsdp_kill_9_and_resume_reach_the_same_weights(tmp_path, tiny_models_dir):
    """SIGKILL of every process mid-run, then the same command: bit-identical to an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    from cgpo.checkpoint import verify_checkpoint

    steps = 3
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for out in (reference, interrupted):
        (tmp_path / f"{out.name}.yaml").write_text(_run_config(tiny_models_dir, out, steps=steps))
    done = _cgpo_train(tmp_path, tmp_path / "reference.yaml", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
    proc = _cgpo_train(tmp_path, tmp_path / "interrupted.yaml", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "step-1" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-1 checkpoint"
        time.sleep(0.02)
    _kill_tree(proc.pid)
    proc.wait()
    assert not (interrupted / "checkpoints" / f"step-{steps}").exists(), "killed too late: the run had finished"
    assert not (interrupted / "final").exists()
    published = sorted((interrupted / "checkpoints").glob("step-*"))
    assert published and all(verify_checkpoint(folder) is None for folder in published)
    resumed = _cgpo_train(tmp_path, tmp_path / "interrupted.yaml", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-6000:]
    assert "resumed from" in err and f"(step {steps})" not in err.split("resumed from")[1].splitlines()[0]
    expected = load_file(reference / "final" / "model.safetensors")
    actual = load_file(interrupted / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_one_process(tmp_path, tiny_models_dir):
    """2 FSDP processes write shards; one plain process resumes from them (DCP reshards) and trains on."""
    import torch

    config = tmp_path / "run.yaml"
    # Held-out evaluation too: under FSDP every process takes part in its (collective) generation.
    config.write_text(_run_config(tiny_models_dir, tmp_path / "run", steps=2, eval_every=2))
    two = _evidence(_probe(tmp_path, "two", "fsdp", config))
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2] and evals[0]["tasks"].keys() == evals[1]["tasks"].keys()
    one = json.loads((_probe(tmp_path, "one", "plain", config, processes=1, args=("training.max_steps=3",))
                      / "rank-0.json").read_text())  # fmt: skip
    assert one["world"] == 1 and one["fsdp"] is False and one["resumed_at"] == 2
    # Weights and AdamW state exactly as the two processes left them (compared gathered, by parameter name).
    assert one["initial"] == two[0]["final"]
    assert one["optimizer_initial"] == two[0]["optimizer_final"]
    # The samplers continue from the same position of the same global permutation: 2 steps x 2 processes x
    # BATCH prompts were drawn, then 1 step x 1 process x BATCH.
    for task, sampler in one["samplers"].items():
        assert sampler["epoch"] * sampler["size"] + sampler["position"] == 2 * 2 * BATCH + BATCH, (task, sampler)
    assert len(one["steps"]) == 1 and one["steps"][0]["step"] == 3 and one["final"] != one["initial"]
    # The 1-process run writes an ordinary checkpoint, and final/ loads with from_pretrained.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    final = torch.load(tmp_path / "evidence-one" / "final.pt")
    assert all(torch.equal(v.float(), final[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_one_process_fsdp_checkpoint_resumes_on_two_processes(tmp_path, tiny_models_dir):
    """1 FSDP process (world size 1: one shard of everything) writes DCP; 2 FSDP processes reshard and go on."""
    config = tmp_path / "run.yaml"
    config.write_text(_run_config(tiny_models_dir, tmp_path / "run", steps=2))
    one = _evidence(_probe(tmp_path, "one", "fsdp", config, processes=1), ranks=1)[0]
    # Sharded with one process: DTensors whose only shard is the whole tensor, written as one DCP shard file.
    assert one["world"] == 1 and one["fsdp"] is True and one["policy_class"] == "FSDPLlamaForCausalLM"
    assert all(p["dtensor"] and p["local"] == p["full"] for p in one["placements"].values())
    step = tmp_path / "run" / "checkpoints" / "step-2"
    assert _shard_files(step) == [".metadata", "__0_0.distcp"]
    assert json.loads((step / "trainer_state.json").read_text())["format"] == "dcp"
    two = _evidence(_probe(tmp_path, "two", "fsdp", config, args=("training.max_steps=3",)))
    _assert_sharded(two)
    for ev in two:
        assert ev["resumed_at"] == 2
        # Weights and AdamW state exactly as the one process left them (gathered, by parameter name).
        assert ev["initial"] == one["final"] and ev["optimizer_initial"] == one["optimizer_final"]
        # Same position of the same global permutation: 2 steps x 1 process x BATCH prompts were drawn, then
        # 1 step x 2 processes x BATCH.
        for task, sampler in ev["samplers"].items():
            assert sampler["epoch"] * sampler["size"] + sampler["position"] == 2 * BATCH + 2 * BATCH, (task, sampler)
        assert len(ev["steps"]) == 1 and ev["steps"][0]["step"] == 3 and ev["final"] != ev["initial"]
    assert two[0]["final"] == two[1]["final"] and two[0]["samplers"] == two[1]["samplers"]
    assert _shard_files(tmp_path / "run" / "checkpoints" / "step-3") == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_on_one_process_but_not_under_fsdp(tmp_path, tiny_models_dir):
    """The world-size change is a warning, not a refusal; a gathered checkpoint is refused by an FSDP run."""
    config = tmp_path / "run.yaml"
    config.write_text(_run_config(tiny_models_dir, tmp_path / "run", steps=2))
    _probe(tmp_path, "ddp", "ddp", config)
    fsdp = subprocess.run([*_launcher("fsdp", 2), "-m", "cgpo", "train", str(config), "training.max_steps=3"],
                          env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert fsdp.returncode != 0
    refusal = "was written by a run without FSDP (gathered weights); resume it without FSDP"
    refusals = [line for line in fsdp.stderr.splitlines() if line.startswith("cgpo train: ") and refusal in line]
    assert len(refusals) == 2, fsdp.stderr[-4000:]  # one line from each rank (the launcher then reports exit 2)
    assert 'File "' + str(REPO / "cgpo") not in fsdp.stderr  # no traceback through cgpo
    one = subprocess.run([sys.executable, "-m", "cgpo", "train", str(config), "training.max_steps=3"],
                         env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    assert "was written by 2 processes, this run has 1: weights, AdamW state, schedule, step" in one.stderr
    assert "resumed from" in one.stderr and "(step 2)" in one.stderr
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["step"] == 3


# A full disk on rank 1 only, past its small files: its shard write fails with EFBIG (RLIMIT_FSIZE set in
# that process alone, before cgpo is imported) while rank 0 writes its own. `cgpo train` as a user runs it.
FULL_DISK_ON_RANK_1 = r"""
import os
import resource
import signal
import sys

if os.environ["RANK"] == "1":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the failing write returns EFBIG, as a full disk would
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))

from cgpo.cli import main  # noqa: E402

sys.exit(main(["train", sys.argv[1]]))
"""


@pytest.mark.slow
def test_a_failed_shard_write_on_one_rank_stops_every_rank_with_the_same_line(tmp_path, tiny_models_dir):
    from cgpo import checkpoint as ckpt

    config = tmp_path / "run.yaml"
    config.write_text(_run_config(tiny_models_dir, tmp_path / "run", steps=2))
    # The datasets cache first (tens of kB of Arrow files), so that the first file of rank 1 past the limit is
    # its shard (about 180 kB for the test-size policy and its AdamW moments; rng-1.pt is about 14 kB).
    warm = "import sys; from cgpo.config_loader import load_run_config; from cgpo.data import load_records; " \
           "[load_records(task) for task in load_run_config(sys.argv[1]).tasks]"  # fmt: skip
    subprocess.run([sys.executable, "-c", warm, str(config)], env=_env(tmp_path), check=True, timeout=120)
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_ON_RANK_1)
    started = time.perf_counter()
    result = subprocess.run([*_launcher("fsdp", 2), str(script), str(config), str(50_000)], env=_env(tmp_path),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode != 0, result.stderr[-4000:]
    staging = ckpt.staging_dir(tmp_path / "run", 1)
    line = (
        f"cgpo train: cannot write {staging / 'sharded'}: File too large (the disk is full or a file size "
        "limit was reached) (on process 1 of 2)"
    )
    assert result.stderr.splitlines().count(line) == 2, result.stderr[-4000:]
    assert time.perf_counter() - started < 120
    assert not staging.exists() and ckpt.complete_checkpoints(tmp_path / "run") == []
