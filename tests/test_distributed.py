"""cgpo.distributed in one process: when a run is FSDP, what it refuses, and the DCP checkpoint round trip.

The 2-process runs (real sharding, LoRA, kill -9 resume, 2 -> 1 and 1 -> 2 processes) are in
tests/trainer/test_fsdp.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from cgpo import checkpoint as ckpt
from cgpo.distributed import checkpoint as sharded
from cgpo.distributed import fsdp
from cgpo.errors import UserError


def _accelerator(kind: str, plugin: object = None) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=SimpleNamespace(name=kind), state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(
    ("kind", "use_fsdp", "expected"),
    [("FSDP", None, True), ("MULTI_CPU", "true", True), ("MULTI_CPU", None, False), ("MULTI_GPU", "true", False),
     ("NO", "true", False)],
)  # fmt: skip
def test_a_run_is_fsdp_when_accelerate_says_so_or_a_cpu_launch_asked_for_it(kind, use_fsdp, expected, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    if use_fsdp:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", use_fsdp)
    assert fsdp.fsdp_requested(_accelerator(kind)) is expected


def test_fsdp1_is_refused_and_the_cpu_plugin_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="fsdp_version is 1; cgpo trains with FSDP2 only"):
        fsdp.fsdp_plugin(_accelerator("MULTI_CPU"))
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    plugin = fsdp.fsdp_plugin(_accelerator("MULTI_CPU"))
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]


def test_what_fsdp_has_not_run_is_refused_by_name():
    fsdp.check_run_config(SimpleNamespace(training=SimpleNamespace(lora=object(), save_optimizer_state=True)))
    with pytest.raises(UserError, match=r"training\.save_optimizer_state: false is not supported with FSDP"):
        fsdp.check_run_config(SimpleNamespace(training=SimpleNamespace(lora=None, save_optimizer_state=False)))
    fsdp.check_run_config(SimpleNamespace(training=SimpleNamespace(lora=None, save_optimizer_state=True)))


def test_layer_classes_that_match_no_module_are_a_user_error(tiny_models_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy")
    assert fsdp.layer_classes(model, SimpleNamespace(transformer_cls_names_to_wrap=None)) == ["LlamaDecoderLayer"]
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=["Qwen2DecoderLayer"], reshard_after_forward=True,
                             mixed_precision_policy=None, cpu_offload=None)  # fmt: skip
    with pytest.raises(UserError, match="Qwen2DecoderLayer matches no module of LlamaForCausalLM"):
        fsdp.shard_policy(model, plugin)
    assert not fsdp.is_sharded(model)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's call
def test_the_sharded_root_of_a_lora_policy_is_its_base_model_also_with_adapters_disabled(tiny_models_dir):
    """PeftModel.generate bypasses the PEFT wrapper's forward: the root's hooks must be on the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cgpo.reference import AdaptersDisabled

    model = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy")
    assert fsdp.sharded_root(model) is model
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert fsdp.sharded_root(peft) is model and fsdp.sharded_root(AdaptersDisabled(peft)) is model
    assert not fsdp.is_sharded(peft) and not fsdp.is_sharded(AdaptersDisabled(peft))


def _trained(tiny_models_dir, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    from transformers import AutoModelForCausalLM, get_scheduler

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_dcp_checkpoint_round_trip_in_one_process(tmp_path, tiny_models_dir):
    """Shards written into the staging folder, published with the manifest, loaded into a fresh model."""
    model, optimizer, scheduler = _trained(tiny_models_dir, steps=2)
    staging = ckpt.staging_dir(tmp_path, 2)
    staging.mkdir(parents=True)
    sharded.write_shards(staging, model, optimizer)
    sharded.write_main_files(staging, scheduler=scheduler, state={"step": 2, "world_size": 1})
    folder = ckpt.publish(staging, 2, keep=2)
    state = ckpt.read_state(folder)
    assert sharded.is_sharded_checkpoint(state) and state["step"] == 2
    listed = set(json.loads((folder / ckpt.MANIFEST_FILE).read_text())["files"])
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "scheduler.pt", ckpt.STATE_FILE} <= listed
    assert ckpt.verify_checkpoint(folder) is None

    fresh, fresh_optimizer, _ = _trained(tiny_models_dir, steps=0)
    sharded.load_shards(folder, fresh, fresh_optimizer)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved = {id(p): s for p, s in optimizer.state.items()}
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(saved[id(p)]["exp_avg"], fresh_optimizer.state[q]["exp_avg"])
        assert torch.equal(saved[id(p)]["exp_avg_sq"], fresh_optimizer.state[q]["exp_avg_sq"])
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]

    # A truncated shard is caught by the manifest before any resume reads it.
    shard = folder / "sharded" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "sharded/__0_0.distcp has" in (ckpt.verify_checkpoint(folder) or "")
