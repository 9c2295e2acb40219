"""FSDP2 of the policy: one code path for GPUs (accelerate's FSDP) and CPUs (gloo, for tests and debugging).

The trainer shards the policy itself, with ``torch.distributed.fsdp.fully_shard``, before it builds AdamW:
every decoder layer (``LlamaDecoderLayer``, ...) is one shard unit, and the root (embeddings, final norm,
LM head, tied or not) is the last. Each parameter becomes a ``DTensor`` sharded on dim 0 over the
processes, so a process holds about 1/world of the policy, its gradients and its AdamW state; a forward
gathers one layer at a time, and the backward reduce-scatters (averages) each layer's gradient.

Why cgpo shards instead of leaving it to ``accelerator.prepare``:

- on CPU, accelerate 1.16 never shards: ``ACCELERATE_USE_CPU=true`` turns an FSDP config into MULTI_CPU
  (DDP) without a word, so a CPU test would silently test DDP;
- on GPUs, ``accelerator.prepare`` receives the already-sharded module and keeps it (it shards only modules
  that are not ``FSDPModule`` yet), so both devices run the same sharding, the same hooks and the same
  checkpoint code (:mod:`cgpo.distributed.checkpoint`).

The options come from accelerate's ``FullyShardedDataParallelPlugin`` either way: the Accelerator's own
plugin on GPUs, or one built from the launcher's ``FSDP_*`` environment (what ``accelerate launch`` exports
from ``fsdp_config``) on CPU.

A run is FSDP when accelerate says so (``distributed_type: FSDP``), or when the launcher asked for FSDP
(``ACCELERATE_USE_FSDP=true``) and accelerate fell back to MULTI_CPU. Frozen models (the reference copy
and the reward models) stay whole on every process: they have no optimizer state or gradients.

LoRA: peft wraps the policy before sharding; the LoRA layers sit inside the decoder layers, so each unit
holds frozen base weights and trainable adapters together (FSDP2 allows both in one unit), and the root is
the PEFT model's base model (:func:`sharded_root`). The reference is then this sharded policy with its
adapters disabled, gathered through the same hooks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from cgpo.errors import UserError


def fsdp_requested(accelerator: Any) -> bool:
    """Whether this run shards the policy: accelerate's FSDP, or FSDP asked for on a CPU (MULTI_CPU) launch."""
    kind = accelerator.distributed_type.name
    if kind == "FSDP":
        return True
    return kind == "MULTI_CPU" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(accelerator: Any) -> Any:
    """Accelerate's FSDP options: the Accelerator's plugin (GPUs), or one read from the ``FSDP_*`` environment.

    On CPU the launcher's ``FSDP_VERSION`` may be missing (a bare ``torchrun``); cgpo only runs FSDP2 there.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(fsdp_version=int(os.environ.get("FSDP_VERSION", "2")))
    if plugin.fsdp_version != 2:
        raise UserError(
            f"fsdp_config.fsdp_version is {plugin.fsdp_version}; cgpo trains with FSDP2 only "
            "(fsdp_version: 2, as in configs/accelerate/fsdp.yaml)"
        )
    return plugin


def check_run_config(config: Any) -> None:
    """Refuse what cgpo has not run under FSDP (a one-line ``UserError`` naming the key)."""
    if not config.training.save_optimizer_state:
        raise UserError(
            "training.save_optimizer_state: false is not supported with FSDP yet: sharded checkpoints always "
            "hold AdamW's shards (each process writes only its own 1/N)"
        )


def layer_classes(model: torch.nn.Module, plugin: Any) -> list[str]:
    """The decoder-layer class names to shard one by one: the config's, else the model's ``_no_split_modules``."""
    names = list(plugin.transformer_cls_names_to_wrap or getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise UserError(
            f"{type(model).__name__} names no decoder-layer class: set fsdp_config.fsdp_transformer_layer_cls_to_wrap"
        )
    return names


def shard_policy(model: torch.nn.Module, plugin: Any, *, mixed_precision: str = "no") -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root, in place; returns the (same) model.

    Args:
        model: The policy, in the dtype it was loaded in.
        plugin: :func:`fsdp_plugin` (reshard after forward, CPU offload, mixed precision, layer classes).
        mixed_precision: accelerate's ``mixed_precision``; other than ``no``, trainable parameters are kept
            in float32 (the master weights AdamW updates) and cast for compute by the plugin's
            ``MixedPrecisionPolicy``, as accelerate's own FSDP2 preparation does.

    Raises ``UserError`` when the configured layer classes match no module of the model.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = layer_classes(model, plugin)
    options: dict[str, Any] = {
        "reshard_after_forward": bool(plugin.reshard_after_forward),
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
    }
    if plugin.cpu_offload is not None:
        options["offload_policy"] = plugin.cpu_offload
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise UserError(
            f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: {', '.join(names)} matches no module of "
            f"{type(model).__name__}; name its decoder-layer class (its _no_split_modules)"
        )
    if mixed_precision != "no":
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(sharded_root(model), **options)
    return model


def sharded_root(model: Any) -> Any:
    """The module that ``fully_shard`` makes the root: the model, or a PEFT model's base (transformers) model.

    A PEFT model is not the root itself: ``PeftModel.generate`` calls the base model's ``generate``, whose
    forwards never pass through the PEFT wrapper's own forward, so the root's hooks (gathering the embeddings
    and the LM head) must sit on the base model, which every forward and generate call goes through. The
    LoRA layers live inside the decoder layers, frozen and trainable parameters in the same shard unit.
    A reference seen with its adapters disabled (:class:`cgpo.reference.AdaptersDisabled`) resolves too.
    """
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def is_sharded(model: Any) -> bool:
    """Whether ``model`` (or a PEFT model's base) is an FSDP2 module (its forwards are collective calls)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(sharded_root(model), FSDPModule)


@contextlib.contextmanager
def no_sync(accelerator: Any, model: Any) -> Iterator[None]:
    """Accumulate gradients without synchronizing them (FSDP2: unsharded until the next synced backward)."""
    if not is_sharded(model):
        with accelerator.no_sync(model):
            yield
        return
    root = sharded_root(model)
    root.set_requires_gradient_sync(False)  # recurses into every shard unit below the root
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def full_state_dict(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """The full (gathered) weights, on CPU, on the main process; a collective call on every process.

    Non-main processes get an empty dict under FSDP (the gathered copy is kept on process 0 only).
    """
    if not is_sharded(model):
        return dict(accelerator.get_state_dict(model))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
