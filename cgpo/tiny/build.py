"""Build the embedded tiny default: tokenizer, SFT-warm-started policy and Bradley-Terry reward model.

CGPO starts RLHF from a warm-up model (CGPO paper §6.1), so the tiny policy is first fine-tuned on the
synthetic task families of :mod:`cgpo.tiny.data` for a short while: it learns the formats and gets part of
the answers right, which leaves RL something to improve. The reward model is trained on pairs (gold
completion, corrupted completion) with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)), so its
score means "looks like a correct answer" without being a perfect judge.

Both loops are written out here (about 40 lines each) rather than configured through TRL's SFT and reward
trainers: the build must be bit-for-bit reproducible for a seed and finish in well under 3 minutes on two
cores, and a plain loop with pre-tokenized tensors gives us both without TRL's start-up cost.

The result is cached under ``$CGPO_HOME/tiny/<recipe id>/`` (default ``~/.cache/cgpo``), written to a
temporary folder and renamed when complete, under a file lock so concurrent processes (DDP ranks) build
it once. Everything loads with ``AutoTokenizer`` / ``AutoModelForCausalLM`` /
``AutoModelForSequenceClassification.from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgpo.tiny import data

RECIPE_VERSION = 1
COMPLETE_MARKER = "build.json"


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny models; its hash names the cache folder.

    Args:
        seed: Seed of data generation, initialization and batch order.
        policy_layers: Decoder layers of the policy.
        reward_layers: Decoder layers of the reward model.
        sft_records_per_family: Warm-start SFT examples per task family.
        sft_steps: SFT optimizer steps.
        sft_batch_size: SFT batch size.
        sft_learning_rate: Peak SFT learning rate (cosine decay, 5% warm-up).
        rm_steps: Reward-model steps.
        rm_batch_size: Pairs per reward-model step.
        rm_learning_rate: Reward-model learning rate.
        eval_prompts_per_family: Held-out prompts per family for the build report.
    """

    seed: int = 0
    policy_layers: int = 4
    reward_layers: int = 2
    sft_records_per_family: int = 2000
    sft_steps: int = 420
    sft_batch_size: int = 32
    sft_learning_rate: float = 3e-3
    rm_steps: int = 80
    rm_batch_size: int = 32
    rm_learning_rate: float = 1e-3
    eval_prompts_per_family: int = 32

    def identity(self) -> str:
        """Names the cache folder: the recipe's fields and the source of the code that builds from them.

        Hashing the builder's own source means a changed data generator or training loop can never reuse a
        stale cached model.
        """
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True) + _builder_source()
        digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
        return f"v{RECIPE_VERSION}-seed{self.seed}-{digest}"


DEFAULT_RECIPE = TinyRecipe()


@functools.cache
def _builder_source() -> str:
    """The source of the modules that determine the tiny models (this one, the data, tokenizer, configs)."""
    from cgpo.tiny import models, tokenizer

    files = [Path(module.__file__ or "") for module in (data, models, tokenizer)] + [Path(__file__)]
    return "".join(path.read_text(encoding="utf-8") for path in files)


def cache_root() -> Path:
    """``$CGPO_HOME`` or ``~/.cache/cgpo``."""
    return Path(os.environ.get("CGPO_HOME") or Path.home() / ".cache" / "cgpo").expanduser()


def tiny_models_dir(recipe: TinyRecipe = DEFAULT_RECIPE) -> Path:
    """Where the tiny models of ``recipe`` live once built (``policy/`` and ``reward/`` inside)."""
    return cache_root() / "tiny" / recipe.identity()


def is_built(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def ensure_tiny_models(
    recipe: TinyRecipe = DEFAULT_RECIPE, *, log: Callable[[str], None] = print, rebuild: bool = False
) -> Path:
    """Return the folder of the built tiny models, building them first when needed (or when ``rebuild``)."""
    from filelock import FileLock

    folder = tiny_models_dir(recipe)
    if is_built(folder) and not rebuild:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_built(folder) and not rebuild:  # another process built it while we waited
            return folder
        staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            build_tiny_models(staging, recipe, log=log)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)  # atomic on one file system: a reader never sees a half-built folder
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_tiny_models(
    out: Path, recipe: TinyRecipe = DEFAULT_RECIPE, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build tokenizer, policy and reward model into ``out``; returns the build report (also ``build.json``)."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from cgpo.tiny.models import tiny_llama_config
    from cgpo.tiny.tokenizer import build_char_tokenizer

    started = time.perf_counter()
    tokenizer = build_char_tokenizer()
    records = list(data.sft_records(recipe.seed, recipe.sft_records_per_family))

    torch.manual_seed(recipe.seed)
    policy = LlamaForCausalLM(tiny_llama_config(tokenizer, num_layers=recipe.policy_layers))
    log(
        f"tiny: SFT warm-start of a {sum(p.numel() for p in policy.parameters()):,}-parameter policy "
        f"on {len(records):,} examples ({recipe.sft_steps} steps)"
    )
    sft_loss = _sft(policy, tokenizer, records, recipe, log)
    accuracy = _greedy_accuracy(policy, tokenizer, recipe)
    log("tiny: held-out exact match after SFT: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))

    torch.manual_seed(recipe.seed + 1)
    reward = LlamaForSequenceClassification(
        tiny_llama_config(tokenizer, num_layers=recipe.reward_layers, num_labels=1)
    )
    log(
        f"tiny: Bradley-Terry reward model ({sum(p.numel() for p in reward.parameters()):,} parameters, "
        f"{recipe.rm_steps} steps)"
    )
    rm_accuracy = _train_reward_model(reward, tokenizer, records, recipe)
    log(f"tiny: reward model pair accuracy on held-out pairs: {rm_accuracy:.2f}")

    out.mkdir(parents=True, exist_ok=True)
    for name, model in (("policy", policy), ("reward", reward)):
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    report = {
        "recipe": dataclasses.asdict(recipe),
        "recipe_id": recipe.identity(),
        "sft_final_loss": sft_loss,
        "sft_heldout_exact_match": accuracy,
        "reward_heldout_pair_accuracy": rm_accuracy,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / COMPLETE_MARKER).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"tiny: built in {report['seconds']} s -> {out}")
    return report


def _prompt_text(tokenizer: Any, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def _sft(
    policy: Any, tokenizer: Any, records: list[data.Record], recipe: TinyRecipe, log: Callable[[str], None]
) -> float:
    """Completion-only cross-entropy; returns the mean loss of the last 20 steps."""
    import torch

    prompt_ids = [tokenizer(_prompt_text(tokenizer, r["prompt"]))["input_ids"] for r in records]
    completion_ids = [tokenizer(r["completion"] + tokenizer.eos_token)["input_ids"] for r in records]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=recipe.sft_learning_rate, weight_decay=0.0)
    warmup = max(1, recipe.sft_steps // 20)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.sft_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    # Plain shuffled batches: bucketing by length would group one task family per batch (lengths differ by
    # family), which slows learning more than the padding it saves.
    order = random.Random(recipe.seed)
    batches: list[list[int]] = []
    pool: list[int] = []
    while len(batches) < recipe.sft_steps:
        if len(pool) < recipe.sft_batch_size:
            fresh = list(range(len(records)))
            order.shuffle(fresh)
            pool += fresh
        batches.append(pool[: recipe.sft_batch_size])
        pool = pool[recipe.sft_batch_size :]
    losses: list[float] = []
    policy.train()
    for step, batch in enumerate(batches):
        input_ids, labels, attention = _pack(
            [prompt_ids[i] for i in batch], [completion_ids[i] for i in batch], tokenizer.pad_token_id
        )
        loss = policy(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(f"tiny: SFT step {step + 1}/{recipe.sft_steps} loss {sum(losses[-50:]) / 50:.3f}")
    policy.eval()
    tail = losses[-20:]
    return round(sum(tail) / len(tail), 4)


def _pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ``[b, L]`` input ids, labels (-100 on prompt and padding) and attention mask."""
    import torch

    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), -100, dtype=torch.long)
    attention = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids = p + c
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(p) : len(ids)] = torch.tensor(c)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def _greedy_accuracy(policy: Any, tokenizer: Any, recipe: TinyRecipe) -> dict[str, float]:
    """Exact match of greedy completions on each family's held-out eval prompts (a build sanity check)."""
    import torch

    scores = {}
    for family in data.FAMILIES:
        held_out = data.bundled_splits(family)["eval"][: recipe.eval_prompts_per_family]
        batch = tokenizer([_prompt_text(tokenizer, r["prompt"]) for r in held_out], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = policy.generate(
                **batch, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        scores[family] = round(
            sum(t == r["completion"] for t, r in zip(texts, held_out, strict=True)) / len(held_out), 3
        )
    return scores


def corrupt(record: data.Record, rng: random.Random) -> str:
    """A plausible but wrong completion for ``record`` (the rejected side of a reward-model pair)."""
    completion = record["completion"]
    if "answer" in record:  # arithmetic: a wrong number, or the right number without the box
        wrong = int(record["answer"]) + rng.choice((-10, -2, -1, 1, 2, 10))
        return f"\\boxed{{{wrong}}}" if rng.random() < 0.7 else record["answer"]
    if "key" in record:  # a wrong value, or broken JSON (before instructions: JSON records carry both)
        return (
            json.dumps({record["key"]: record["value"] + rng.randint(1, 9)}) if rng.random() < 0.6 else completion[:-1]
        )
    if "instruction_id_list" in record:  # break the instruction
        return completion.strip('"[]').replace("<<", "").replace(">>", "").replace(" bye", "")
    # code: a wrong constant
    return completion.replace("return x", "return x+1" if rng.random() < 0.5 else "return 2*x", 1)


def _train_reward_model(reward: Any, tokenizer: Any, records: list[data.Record], recipe: TinyRecipe) -> float:
    """Bradley-Terry training on (gold, corrupted) pairs; returns pair accuracy on held-out eval pairs."""
    import torch
    import torch.nn.functional as F

    rng = random.Random(recipe.seed + 2)

    def encode(pairs: list[tuple[str, str]]) -> dict[str, Any]:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in pairs
        ]
        return tokenizer(texts, return_tensors="pt", padding=True)

    optimizer = torch.optim.AdamW(reward.parameters(), lr=recipe.rm_learning_rate)
    reward.train()
    for _ in range(recipe.rm_steps):
        batch = rng.sample(records, recipe.rm_batch_size)
        chosen = encode([(r["prompt"], r["completion"]) for r in batch])
        rejected = encode([(r["prompt"], corrupt(r, rng)) for r in batch])
        margin = reward(**chosen).logits[:, 0] - reward(**rejected).logits[:, 0]
        loss = -F.logsigmoid(margin).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    reward.eval()
    held_out = [r for f in data.FAMILIES for r in data.bundled_splits(f)["eval"][: recipe.eval_prompts_per_family]]
    with torch.no_grad():
        chosen_scores = reward(**encode([(r["prompt"], r["completion"]) for r in held_out])).logits[:, 0]
        rejected_scores = reward(**encode([(r["prompt"], corrupt(r, rng)) for r in held_out])).logits[:, 0]
    return round((chosen_scores > rejected_scores).float().mean().item(), 3)
