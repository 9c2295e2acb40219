"""Peak memory of the quickstart run, with and without LoRA, and the number of model copies in memory.

Two fresh processes train ``configs/quickstart.yaml`` (all its tasks) for a few steps: ``full`` (the
config as it is: the reference is a frozen copy of the policy) and ``lora`` (the same with
``training.lora``: the reference is the policy with its adapters disabled). Each reports:

* peak RSS of the process (``ru_maxrss``) and RSS after setup;
* parameter memory by model (policy, reference, reward models) and in total, counting every tensor storage
  once, so weights shared between two models count once;
* the number of copies of the policy's weights: distinct storages holding its embedding matrix among all
  loaded causal LMs;
* for LoRA, that the reference really is the policy with adapters disabled: ``trainer.pi_ref`` wraps the
  policy object itself, no separate reference is loaded, and its log-probs equal those of a freshly loaded
  base model (max abs difference printed).

With the tiny model (1M parameters, 4 MB) the process's RSS is dominated by the libraries (about 0.5 GB), so
the parameter figures are the telling ones; ``--model PATH`` runs the same on a real model.

Usage::

    python bench/memory.py --out bench-memory.json
    python bench/memory.py --model PATH --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

QUICKSTART = common.REPO / "configs" / "quickstart.yaml"
LORA = "{r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear, save: adapter}"


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parameter_mb(modules: dict[str, Any]) -> dict[str, Any]:
    """MiB of parameters and buffers per module, and in total with every storage counted once."""
    seen: set[int] = set()
    per_module = {}
    total = 0
    for name, module in modules.items():
        own = 0
        for tensor in [*module.parameters(), *module.buffers()]:
            size = tensor.untyped_storage().nbytes()
            own += tensor.numel() * tensor.element_size()
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += size
        per_module[name] = own / 2**20
    return {"per_model_mb": per_module, "unique_total_mb": total / 2**20}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    import torch

    from cgpo.config_loader import load_run_config
    from cgpo.reference import AdaptersDisabled
    from cgpo.rollout import token_logprobs
    from cgpo.trainer import CGPOTrainer

    overrides = [
        f"output_dir={Path(args.scratch) / 'run'}",
        f"training.max_steps={args.steps}",
        "training.save_every=0",
        "training.eval_every=null",
        "logging.progress=none",
    ]
    if args.model:
        overrides.append(f"policy.path={args.model}")
    if args.reward_model:
        tasks = load_run_config(QUICKSTART, check_plugins=False).tasks
        overrides += [f"tasks.{i}.reward.model={args.reward_model}" for i, t in enumerate(tasks) if t.reward.model]
    if args.dtype == "bf16":
        overrides += ["policy.dtype=bfloat16", "training.precision=bf16"]
    if args.worker == "lora":
        overrides.append(f"training.lora={LORA}")
    config = load_run_config(QUICKSTART, overrides)
    rss_start = current_rss_mb()
    trainer = CGPOTrainer(config, fresh=True, log=lambda _: None)
    trainer.setup()
    rss_setup = current_rss_mb()
    policy = trainer.unwrapped
    modules: dict[str, Any] = {"policy": policy}
    if trainer.reference is not None:
        modules["reference"] = trainer.reference
    rewards = {id(t.scorer.reward_fn.model): t.scorer.reward_fn.model for t in trainer.tasks
               if getattr(t.scorer.reward_fn, "model", None) is not None}  # fmt: skip
    for i, model in enumerate(rewards.values()):
        modules[f"reward_model_{i}"] = model
    params = parameter_mb(modules)
    embeddings = {
        m.get_input_embeddings().weight.untyped_storage().data_ptr()
        for m in (policy, trainer.reference)
        if m is not None
    }
    reference = trainer.pi_ref  # the frozen copy, or an AdaptersDisabled view of the policy
    reference_is_policy = isinstance(reference, AdaptersDisabled) and reference.wrapped is policy
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.parameters())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    optimizer_mb = sum(
        t.numel() * t.element_size() for state in trainer.optimizer.state.values() for t in state.values()
        if torch.is_tensor(t)
    ) / 2**20  # fmt: skip
    peak = common.peak_rss_mb()  # before the check below loads a second model on purpose
    check: dict[str, Any] = {}
    if args.worker == "lora":
        # pi_ref = the base weights: compare with a fresh, adapter-free load of the same checkpoint.
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(trainer.policy_path, dtype=next(policy.parameters()).dtype)
        base.to(next(policy.parameters()).device)
        task = trainer.tasks[0]
        prompts = [task.prompt_ids[i] for i in range(4)]
        from cgpo.rollout import generate

        rollout = generate(policy, trainer.tokenizer, prompts, task.config.sampling)
        args_ = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        with torch.no_grad():
            ref = token_logprobs(trainer.pi_ref, *args_)[0]
            fresh = token_logprobs(base, *args_)[0]
            trained = token_logprobs(policy, *args_)[0]  # adapters enabled again
        check = {
            "reference_vs_base_max_abs_diff": float((ref - fresh).abs().max()),
            "policy_vs_base_max_abs_diff": float((trained - fresh).abs().max()),
        }
    trainer.close()
    return {
        "mode": args.worker,
        "rss_start_mb": rss_start,
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak,
        "parameters": params,
        "optimizer_state_mb": optimizer_mb,
        "policy_weight_copies": len(embeddings),
        "separate_reference_loaded": trainer.reference is not None,
        "reference_is_policy_object": reference_is_policy,
        "trainable_parameters": trainable,
        "policy_parameters": total,
        "train_seconds": seconds,
        **check,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--steps", type=int, default=3, help="training steps per process")
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="policy path (default: the quickstart's tiny policy)")
    parser.add_argument("--reward-model", help="reward model of every task (default: the quickstart's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return 0

    if not (args.model and args.reward_model):
        common.tiny_paths()  # build the tiny models once, outside the measured processes
    shared = ["--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    shared += ["--dtype", args.dtype]
    for flag, value in (("--model", args.model), ("--reward-model", args.reward_model)):
        if value:
            shared += [flag, value]
    results = {}
    for mode in args.modes:
        results[mode] = common.run_worker(Path(__file__), ["--worker", mode, *shared], threads=args.threads,
                                          device=args.device, timeout=args.timeout)  # fmt: skip
    print(f"{'':<36}" + "".join(f"{m:>20}" for m in args.modes))
    rows = [
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_mb']:.0f}"),
        ("RSS after setup (MiB)", lambda r: f"{r['rss_after_setup_mb']:.0f}"),
        ("policy parameters (MiB)", lambda r: f"{r['parameters']['per_model_mb']['policy']:.2f}"),
        ("reference copy (MiB)", lambda r: f"{r['parameters']['per_model_mb'].get('reference', 0.0):.2f}"),
        ("all model weights, unique (MiB)", lambda r: f"{r['parameters']['unique_total_mb']:.2f}"),
        ("optimizer state (MiB)", lambda r: f"{r['optimizer_state_mb']:.2f}"),
        ("copies of the policy weights", lambda r: str(r["policy_weight_copies"])),
        ("trainable / policy parameters", lambda r: f"{r['trainable_parameters']}/{r['policy_parameters']}"),
    ]
    for label, fmt in rows:
        print(f"{label:<36}" + "".join(f"{fmt(results[m]):>20}" for m in args.modes))
    if "lora" in results:
        lora = results["lora"]
        print(f"LoRA reference: separate model loaded: {lora['separate_reference_loaded']}; pi_ref wraps the "
              f"policy: {lora['reference_is_policy_object']}; log-probs vs a fresh base model: max |diff| "
              f"{lora['reference_vs_base_max_abs_diff']:.2e} (trained policy vs base: "
              f"{lora['policy_vs_base_max_abs_diff']:.2e})")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"modes": results, "settings": vars(args) | {"out": str(args.out)}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
