"""The multi-task CGPO trainer (CGPO paper Algorithm 2; cgpo-algorithms.md §9).

Each step::

    for each task l:  draw B_l prompts (seeded, resumable sampler)
    1. generate K_l samples per prompt (tasks with equal sampling settings share one generate call)
    for each task l:
    2. judge them with the task's mixture of judges (Kleene AND; -1 follows on_judge_failure)
    3. score them with the task's reward and calibrate: sigmoid(r(s,a) - r(s,a_bar))
       (tasks sharing a reward model are scored in one batch)
    4. log-probs at temperature 1 under the policy (with gradients) and the reference (without), one forward
       of each per generate call, the K completions of a prompt sharing one copy of it
    5. the task optimizer's loss L_l, scaled by rho_l and normalized across processes
    6. one backward of sum_l rho_l L_l; one clip, one optimizer step, one scheduler step for all tasks together

Gradient normalization: each optimizer's loss is a mean over its own units (samples or kept prompts). Under
DDP every process computes it on its own prompts, and DDP averages gradients over processes; we rescale
each process's loss by ``units_local * world / units_global`` so that the update is exactly rho_l times the
gradient of the mean over *all* units of all processes, even when processes keep different numbers of
prompts (CODPO and CRRAFT skip some). The single backward of the weighted sum gives the sum of the per-task
gradients and synchronizes once.

Micro-batching (``training.micro_batch_size``): tasks are updated one by one. The loss of a task needs the
whole batch (CRPG's baseline mean, CODPO's pairs), so it is computed on log-probs from a no-grad forward;
its gradient with respect to those log-probs, c = dL/d(log pi), is then pushed through the model chunk by
chunk as backward(sum c * log pi(chunk)). By the chain rule this is exactly the full-batch gradient, at the
cost of one extra no-grad forward. Tasks after the first accumulate without synchronizing (``no_sync``);
the last backward of the step synchronizes the accumulated gradients once.

The reference is a frozen copy of the initial policy, or, with LoRA, the same model with its adapters
disabled (no second copy in memory). Checkpoints (:mod:`cgpo.checkpoint`) carry everything needed for an
exact resume: weights, optimizer, scheduler, RNG states, sampler positions and baseline caches.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgpo import checkpoint as ckpt
from cgpo.config import RunConfig, SamplingConfig, TaskConfig
from cgpo.data import PromptRecord, TaskSampler, encode_prompt, load_records
from cgpo.errors import UserError
from cgpo.judging import MixtureResult
from cgpo.metrics import MetricsWriter, PhaseTimer, Progress, RewardHackingMonitor
from cgpo.models import quiet_library_progress_bars, resolve_model_path
from cgpo.optimizers import OPTIMIZERS, Optimizer, PolicyBatch
from cgpo.rollout import Rollout, generate, left_pad, right_pad, token_logprobs
from cgpo.scoring import TaskScorer, score_together

Log = Callable[[str], None]


@dataclass
class TaskState:
    """What the trainer keeps per task: config, data, sampler, scorer and optimizer."""

    config: TaskConfig
    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    sampler: TaskSampler
    scorer: TaskScorer
    optimizer: Optimizer

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class RolloutGroup:
    """One generate call: the tasks with these sampling settings, and each task's rows in the rollout."""

    sampling: SamplingConfig
    rollout: Rollout
    tasks: list[TaskState]
    rows: dict[str, slice]


@dataclass
class Scored:
    """A task's samples after steps 1-3: its rollout rows, the mixture's verdicts and the rewards."""

    task: TaskState
    drawn: list[int]
    records: list[PromptRecord]
    group: RolloutGroup
    rows: slice
    rollout: Rollout
    verdicts: torch.Tensor
    mixture: MixtureResult
    rewards: torch.Tensor
    calibrated: torch.Tensor
    baselines: list[str]


#: What steps 4-5 give per task: (batch, tempered log-probs, loss value, optimizer stats, nonfinite flag).
TaskUpdate = tuple[PolicyBatch, "torch.Tensor | None", float, dict[str, float], float]


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived; the loop saves a checkpoint and stops."""


class CGPOTrainer:
    """Trains the policy of a :class:`RunConfig` on all its tasks.

    Args:
        config: The validated run config.
        log: Where progress and warnings go (stderr in the CLI).
        fresh: Ignore existing checkpoints in ``output_dir`` and start from step 0.
    """

    def __init__(self, config: RunConfig, *, log: Log = print, fresh: bool = False) -> None:
        self.config = config
        self.log = log
        self.fresh = fresh
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Accelerator, models, tokenizer, optimizer, scheduler, tasks; then resume from a checkpoint if any."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        quiet_library_progress_bars()
        cfg = self.config.training
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
        trackers = self._trackers()
        self.accelerator = Accelerator(
            mixed_precision=mixed, log_with=trackers or None, project_dir=str(self.output_dir)
        )
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.accelerator.distributed_type.name == "DEEPSPEED":
            # accelerate's DeepSpeed engine steps on every synchronized backward, and ZeRO-3 partitions the
            # frozen reference and reward models too; neither fits one update over several tasks yet.
            raise UserError(
                "DeepSpeed is not supported by this version of the trainer; launch with DDP "
                "(configs/accelerate/ddp.yaml) or FSDP (configs/accelerate/fsdp.yaml), see configs/accelerate/README.md"
            )
        set_seed(cfg.seed)  # identical on every process: LoRA initialization must match across ranks
        self._load_models()
        self.tasks = [self._build_task(task) for task in self.config.tasks]
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # The fused AdamW kernel (one kernel for all parameters) where it is known to apply: plain or DDP
        # replicas of floating-point parameters; sharded (FSDP) parameters keep the default implementation.
        fused = self.accelerator.distributed_type.name in ("NO", "MULTI_CPU", "MULTI_GPU") and all(
            p.is_floating_point() for p in params
        )
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
            fused=True if fused else None,
        )  # fmt: skip
        from transformers import get_scheduler

        # Not passed to accelerator.prepare: its wrapper steps the scheduler once per process.
        self.scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
        )
        self.policy, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        # Sampling differs across processes (each draws its own completions), identically on every run.
        set_seed(cfg.seed, device_specific=True)
        self.monitor = RewardHackingMonitor()
        self.metrics = MetricsWriter(self.output_dir / "metrics.jsonl")
        self.evals = MetricsWriter(self.output_dir / "eval.jsonl")
        self._eval_tasks: list[Any] | None = None
        if trackers:
            from cgpo.schema import to_dict

            self.accelerator.init_trackers(self.config.logging.project, config=_flat(to_dict(self.config)))
        self._resume_or_start()

    def _trackers(self) -> list[str]:
        import importlib.util

        wanted = list(self.config.logging.trackers)
        for name in wanted:
            if importlib.util.find_spec(name) is None:
                raise UserError(f"logging.trackers lists {name}, which is not installed: pip install 'cgpo[{name}]'")
        return wanted

    def _torch_dtype(self, name: str) -> Any:
        if name == "auto":
            return torch.float32 if not torch.cuda.is_available() else "auto"
        return getattr(torch, name)

    def _load_models(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg, training = self.config, self.config.training
        with self.accelerator.main_process_first():  # one process builds the tiny models; the others wait
            self.policy_path = resolve_model_path(cfg.policy.path, log=self.log)
            reference_path = resolve_model_path(cfg.reference.path, log=self.log) if cfg.reference else None
        common = {"revision": cfg.policy.revision, "trust_remote_code": cfg.policy.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(self.policy_path, **common)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        kwargs = dict(common, dtype=self._torch_dtype(cfg.policy.dtype))
        if cfg.policy.attn_implementation:
            kwargs["attn_implementation"] = cfg.policy.attn_implementation
        policy = AutoModelForCausalLM.from_pretrained(self.policy_path, **kwargs)
        if training.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.reference: Any = None
        if training.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = training.lora
            policy = get_peft_model(
                policy,
                LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=lora.target_modules, task_type="CAUSAL_LM"),
            )  # fmt: skip
            if cfg.reference is not None:
                self.log("training.lora is set: the reference is the base model with adapters disabled")
        else:
            ref_cfg = cfg.reference or cfg.policy
            ref_kwargs = dict(kwargs, dtype=self._torch_dtype(ref_cfg.dtype))
            self.reference = AutoModelForCausalLM.from_pretrained(reference_path or self.policy_path, **ref_kwargs)
            self.reference.requires_grad_(False)
            self.reference.eval()
            self.reference.to(self.accelerator.device)
        policy.train()
        self.policy = policy
        self.max_positions = int(getattr(policy.config, "max_position_embeddings", 0) or 0)

    def _build_task(self, task: TaskConfig) -> TaskState:
        records = load_records(task, "train")
        prompt_ids = [encode_prompt(self.tokenizer, task.format, r.message) for r in records]
        if self.max_positions:
            keep = [
                i for i, ids in enumerate(prompt_ids) if len(ids) + task.sampling.max_new_tokens <= self.max_positions
            ]
            if len(keep) < len(records):
                self.log(
                    f"task {task.name}: {len(records) - len(keep)} of {len(records)} prompts are too long for "
                    f"{self.max_positions} positions with max_new_tokens {task.sampling.max_new_tokens}; left out"
                )
            if not keep:
                raise UserError(f"task {task.name}: every prompt is too long; lower sampling.max_new_tokens")
            records, prompt_ids = [records[i] for i in keep], [prompt_ids[i] for i in keep]
        optimizer_cls = OPTIMIZERS.get(task.optimizer.name)
        device = str(self.accelerator.device)
        return TaskState(
            config=task,
            records=records,
            prompt_ids=prompt_ids,
            sampler=TaskSampler(
                len(records), seed=self.config.training.seed, name=task.name, shuffle=task.prompts.shuffle
            ),
            scorer=TaskScorer(
                task,
                resolve_model=lambda p: resolve_model_path(p, log=self.log),
                device=device,
                dtype="float32" if device == "cpu" else "bfloat16",
            ),
            optimizer=optimizer_cls(optimizer_cls.parse_params(task.optimizer.params)),
        )

    # ------------------------------------------------------------------------------------------------------------
    # The step
    # ------------------------------------------------------------------------------------------------------------
    @property
    def unwrapped(self) -> Any:
        """The policy without its DDP/FSDP wrapper (unwrapped once per wrapper: unwrapping walks the modules)."""
        cached = getattr(self, "_unwrapped", None)
        if cached is None or cached[0] is not self.policy:
            cached = self._unwrapped = (self.policy, self.accelerator.unwrap_model(self.policy))
        return cached[1]

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[Any]:
        """pi_ref: the frozen copy, or the LoRA policy with its adapters disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.unwrapped.disable_adapter():
                yield self.unwrapped

    # ------------------------------------------------------------------------------------------------------------
    # Held-out evaluation during training (training.eval_every)
    # ------------------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        """Greedy evaluation of the current policy on the tasks' eval splits (as ``cgpo eval``), main process only.

        Appends ``{"step", "tasks": ...}`` to ``OUTPUT_DIR/eval.jsonl`` and logs the table. Generated baselines
        come from pi_ref, as in ``cgpo eval``, so every evaluation of the run shares them.
        """
        from cgpo.evaluation import LoadedModel, evaluate_loaded, plan_tasks, print_table

        result: dict[str, Any] | None = None
        if self.is_main:
            if self._eval_tasks is None:
                self._eval_tasks = plan_tasks(self.config)[0]
            policy = LoadedModel(self.unwrapped, self.tokenizer, f"policy at step {self.step}")
            reference = LoadedModel(
                self.reference if self.reference is not None else _AdaptersDisabled(self.unwrapped),
                self.tokenizer,
                "reference",
            )
            with torch.no_grad():
                result = evaluate_loaded(self.config, self._eval_tasks, policy, lambda: reference,
                                         device=self.accelerator.device, log=lambda _: None)  # fmt: skip
            result = {"step": self.step, **result}
            self.evals.write(result)
            stream = io.StringIO()
            print_table({**result, "model": f"held-out evaluation at step {self.step}"}, file=stream)
            self.log(stream.getvalue().rstrip())
        self.accelerator.wait_for_everyone()
        return result

    def draw(self, task: TaskState) -> list[int]:
        """This process's B prompt indices: every process draws the same global batch and keeps its slice."""
        batch = task.config.batch_size
        indices = task.sampler.next_batch(batch * self.world)
        return indices[self.rank * batch : (self.rank + 1) * batch]

    def rollouts(self, drawn: dict[str, list[int]], timer: PhaseTimer) -> list[RolloutGroup]:
        """1. Generate, one call per group of tasks with equal sampling settings."""
        by_sampling: dict[SamplingConfig, list[TaskState]] = {}
        for task in self.tasks:
            by_sampling.setdefault(task.config.sampling, []).append(task)
        groups = []
        with timer("generate"):
            for sampling, tasks in by_sampling.items():
                prompts = [task.prompt_ids[i] for task in tasks for i in drawn[task.name]]
                rollout = generate(self.unwrapped, self.tokenizer, prompts, sampling,
                                   max_batch_size=self.config.generation.max_batch_size)  # fmt: skip
                rows, start = {}, 0
                for task in tasks:
                    count = len(drawn[task.name]) * sampling.num_samples
                    rows[task.name] = slice(start, start + count)
                    start += count
                groups.append(RolloutGroup(sampling, rollout, tasks, rows))
        return groups

    def score(self, drawn: dict[str, list[int]], groups: list[RolloutGroup], timer: PhaseTimer) -> list[Scored]:
        """2-3 for every task: judge its samples, then raw and calibrated rewards.

        Tasks that share a reward model are scored in one call (with the gold baselines their caches lack).
        """
        located = {task.name: (group, group.rows[task.name]) for group in groups for task in group.tasks}
        judged = []
        for task in self.tasks:
            group, rows = located[task.name]
            rollout = group.rollout.select(rows)
            records = [task.records[i] for i in drawn[task.name]]
            samples = [r for r in records for _ in range(task.config.sampling.num_samples)]
            with timer("judge"):
                verdicts, mixture = task.scorer.judge(samples, rollout.texts)
            judged.append((task, records, group, rows, rollout, verdicts, mixture))
        scored = []
        with timer("reward"):
            raw = score_together(
                [(task.scorer, records, rollout.texts) for task, records, _, _, rollout, _, _ in judged]
            )
            for (task, records, group, rows, rollout, verdicts, mixture), values in zip(judged, raw, strict=True):
                cfg = task.config
                rewards, calibrated, baselines = task.scorer.rewards(
                    records, rollout.texts, verdicts, generate_fn=self._baseline_generator(cfg),
                    generator=f"{self.policy_path}|{cfg.sampling}", raw=values,
                )  # fmt: skip
                scored.append(Scored(task, drawn[task.name], records, group, rows, rollout, verdicts, mixture,
                                     rewards, calibrated, baselines))  # fmt: skip
        return scored

    def train_step(self) -> dict[str, Any]:
        """One CGPO update over all tasks; returns the step's metrics (averaged over processes)."""
        started = time.perf_counter()
        timer = PhaseTimer()
        drawn = {task.name: self.draw(task) for task in self.tasks}
        groups = self.rollouts(drawn, timer)
        scored = self.score(drawn, groups, timer)
        with timer("forward_backward"):
            if self.config.training.micro_batch_size is None:
                updates = self._update_together(scored, groups)
            else:
                updates = self._update_each(scored)
        metrics: dict[str, float] = {}
        nonfinite = torch.zeros((), device=self.accelerator.device)
        total_loss = 0.0
        for s, (batch, tempered, loss, stats, bad) in zip(scored, updates, strict=True):
            total_loss += s.task.config.weight * loss
            nonfinite += bad
            metrics.update(
                self._task_metrics(s.task.name, s.mixture, s.rewards, s.calibrated, batch, tempered, loss, stats)
            )
        with timer("optimizer"):
            grad_norm = self._optimizer_step(nonfinite)
        tokens = sum(int(g.rollout.completion_mask.sum()) for g in groups)
        metrics = self._reduce(metrics)
        tokens_all = self._reduce({"tokens": float(tokens)}, op="sum")["tokens"]
        seconds = time.perf_counter() - started
        return {
            "step": self.step + 1,
            "loss": self._reduce({"loss": total_loss})["loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            **timer.metrics(seconds),
            "tokens_per_s": tokens_all / seconds if seconds > 0 else 0.0,
            **metrics,
        }

    def _update_together(self, scored: list[Scored], groups: list[RolloutGroup]) -> list[TaskUpdate]:
        """4-5 for all tasks at once: one reference and one policy forward per generation group, one backward.

        The backward of sum_l scale_l * L_l gives exactly the sum of the per-task weighted gradients, and its
        single synchronization replaces one per task.
        """
        logprobs = {id(g): self._logprobs(g.rollout, g.sampling, grad=True) for g in groups}
        losses, updates = [], []
        for s in scored:
            pol_all, hot_all, ref_all = logprobs[id(s.group)]
            hot = hot_all[s.rows] if hot_all is not None else None
            batch, tempered, _ = self._policy_batch(s, pol_all[s.rows], hot, ref_all[s.rows], grad=True)
            losses.append(self._task_loss(s.task, batch))
            updates.append((batch, tempered))
        scaled, out = self._scale_losses(scored, [b for b, _ in updates], losses)
        self.accelerator.backward(torch.stack(scaled).sum())
        return [(b, t, *o) for (b, t), o in zip(updates, out, strict=True)]

    def _update_each(self, scored: list[Scored]) -> list[TaskUpdate]:
        """4-5 task by task, with micro-batches (``training.micro_batch_size``).

        A task's loss needs its whole batch (CRPG's baseline mean, CODPO's pairs), so it is computed on
        log-probs from a no-grad forward; its gradient with respect to those log-probs, c = dL/d(log pi), is
        then pushed through the model chunk by chunk as backward(sum c * log pi(chunk)). By the chain rule this
        is exactly the full-batch gradient. A task whose rows fit one micro-batch backpropagates directly.
        Tasks before the last accumulate without synchronizing; the step's last backward synchronizes.
        """
        updates: list[TaskUpdate] = []
        for position, s in enumerate(scored):
            last = position == len(scored) - 1
            micro = self._micro_batches(s.rollout.completion_ids.shape[0])
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.policy):
                pol_tok, hot, ref_tok = self._logprobs(s.rollout, s.task.config.sampling, grad=not micro)
                batch, tempered, baseline_args = self._policy_batch(s, pol_tok, hot, ref_tok, grad=not micro)
                if micro:  # the loss on detached log-probs; its gradient is pushed through the model below
                    batch.logps = batch.logps.detach().requires_grad_(True)
                    if batch.baseline_logps is not None:
                        batch.baseline_logps = batch.baseline_logps.detach().requires_grad_(True)
                loss = self._task_loss(s.task, batch)
                (scaled,), (out,) = self._scale_losses([s], [batch], [loss])
                if micro:
                    self._push_gradients(s, batch, scaled, baseline_args, last)
                else:
                    self.accelerator.backward(scaled)
            updates.append((batch, tempered, *out))
        return updates

    def _logprobs(
        self, rollout: Rollout, sampling: SamplingConfig, *, grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """4. ``[N, C]`` token log-probs: policy (with gradients if ``grad``), its tempered ones, reference.

        Log-probs are at temperature 1 for the policy and the reference, and also at the sampling temperature
        for the policy (the KL metric's importance weights). The K completions of a prompt share one copy of it in these forwards (:func:`cgpo.rollout.token_logprobs`).
        """
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        k = sampling.num_samples
        with torch.no_grad(), self.reference_model() as reference:
            ref_tok, _ = token_logprobs(reference, *args, group_size=k)
        with contextlib.nullcontext() if grad else torch.no_grad():
            model = self.policy if grad else self.unwrapped
            pol_tok, hot = token_logprobs(model, *args, with_tempered=sampling.temperature, group_size=k)
        return pol_tok, hot, ref_tok

    def _baseline_generator(self, cfg: TaskConfig) -> Callable[[list[str]], list[str]] | None:
        """a_bar ~ pi_ref(.|s), generated once per prompt with the task's sampling settings."""
        if cfg.reward.baseline != "generated":
            return None

        def generate_baselines(messages: list[str]) -> list[str]:
            prompts = [encode_prompt(self.tokenizer, cfg.format, m) for m in messages]
            with self.reference_model() as model:
                return generate(model, self.tokenizer, prompts, cfg.sampling, num_samples=1).texts

        return generate_baselines

    def _policy_batch(
        self,
        s: Scored,
        pol_tok: torch.Tensor,
        hot: torch.Tensor | None,
        ref_tok: torch.Tensor,
        *,
        grad: bool,
    ) -> tuple[PolicyBatch, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """The optimizer's [B, K] inputs, plus what the KL metric and micro-batching need.

        Sequence log-probs under the policy and the reference, rewards and verdicts; the temperature-T
        log-probs (for the KL metric) and the a_bar forward inputs (CRRAFT).
        """
        cfg = s.task.config
        b, k = len(s.drawn), cfg.sampling.num_samples
        device = self.accelerator.device
        logps = pol_tok.sum(dim=1).view(b, k)
        batch = PolicyBatch(
            logps=logps,
            old_logps=logps.detach(),  # strictly on-policy: the sampling policy is the current one
            ref_logps=ref_tok.sum(dim=1).view(b, k),
            rewards=s.rewards.to(device).view(b, k),
            calibrated_rewards=s.calibrated.to(device).view(b, k),
            verdicts=s.verdicts.to(device).view(b, k),
            lengths=s.rollout.lengths.view(b, k),
            kl_threshold=cfg.kl_threshold,
        )
        tempered = hot.sum(dim=1).view(b, k) if hot is not None else None
        baseline_args = self._add_baseline(s, batch, grad=grad) if s.task.optimizer.uses_baseline_response else None
        return batch, tempered, baseline_args

    def _add_baseline(self, s: Scored, batch: PolicyBatch, *, grad: bool) -> tuple[torch.Tensor, ...]:
        """Log-probs of a_bar under the policy and the reference, and the mixture's verdict on it (CRRAFT fallback).

        A prompt without a_bar gets verdict -1, so it can never fall back. Returns the forward inputs.
        """
        task, drawn, baselines = s.task, s.drawn, s.baselines
        present = [bool(text) for text in baselines]
        eos = self.tokenizer.eos_token or ""
        completions = [self.tokenizer(t + eos, add_special_tokens=False)["input_ids"] if t else [] for t in baselines]
        device = self.accelerator.device
        prompt_ids, prompt_mask = left_pad([task.prompt_ids[i] for i in drawn], self.tokenizer.pad_token_id, device)
        completion_ids, completion_mask = right_pad(completions, self.tokenizer.pad_token_id, device)
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        with torch.no_grad(), self.reference_model() as reference:
            ref_tok, _ = token_logprobs(reference, *args)
        if grad:
            pol_tok, _ = token_logprobs(self.policy, *args)
        else:
            with torch.no_grad():
                pol_tok, _ = token_logprobs(self.unwrapped, *args)
        verdicts = task.scorer.baseline_verdicts(s.records, [t or " " for t in baselines]).to(device)
        absent = ~torch.tensor(present, device=device)
        batch.baseline_logps = pol_tok.sum(dim=1)
        batch.baseline_ref_logps = ref_tok.sum(dim=1)
        batch.baseline_verdicts = torch.where(absent, torch.full_like(verdicts, -1), verdicts)
        batch.baseline_lengths = completion_mask.sum(dim=1).clamp(min=1)
        return args

    def _micro_batches(self, rows: int) -> bool:
        size = self.config.training.micro_batch_size
        return size is not None and size < rows

    def _task_loss(self, task: TaskState, batch: PolicyBatch) -> tuple[Any, float, float]:
        """5. The task optimizer's loss output, its value, and its number of units (samples or kept prompts)."""
        out = task.optimizer.loss(batch)
        units = float(out.stats.get("kept_samples", out.stats.get("kept_prompts", 1.0)))
        return out, float(out.loss.detach()), units

    def _scale_losses(
        self, scored: list[Scored], batches: list[PolicyBatch], losses: list[tuple[Any, float, float]]
    ) -> tuple[list[torch.Tensor], list[tuple[float, dict[str, float], float]]]:
        """rho_l * L_l normalized across processes (one reduction for all tasks), or a zero if L_l is not finite.

        Returns the scaled losses to backpropagate and, per task, (loss value, optimizer stats, nonfinite flag).
        """
        units = self._reduce({s.task.name: u for s, (_, _, u) in zip(scored, losses, strict=True)}, op="sum")
        scaled, out = [], []
        for s, batch, (loss_out, value, local_units) in zip(scored, batches, losses, strict=True):
            global_units = units[s.task.name]
            scale = s.task.config.weight * local_units * self.world / global_units if global_units > 0 else 0.0
            loss = loss_out.loss * scale
            bad = 0.0
            if not math.isfinite(value):
                # Every process must still run the same backward calls: back-propagate a zero instead.
                self.log(f"warning: task {s.task.name}: non-finite loss at step {self.step + 1}; the step is skipped")
                loss, bad = batch.logps.sum() * 0.0, 1.0
            scaled.append(loss)
            out.append((value, loss_out.stats, bad))
        return scaled, out

    def _push_gradients(
        self,
        s: Scored,
        batch: PolicyBatch,
        scaled: torch.Tensor,
        baseline_args: tuple[torch.Tensor, ...] | None,
        last: bool,
    ) -> None:
        """backward(sum_i c_i * log pi(a_i|s_i)) with c = d(scaled loss)/d(log pi), chunk by chunk."""
        leaves = [batch.logps] + ([batch.baseline_logps] if batch.baseline_logps is not None else [])
        grads = torch.autograd.grad(scaled, leaves, allow_unused=True)
        coef = grads[0] if grads[0] is not None else torch.zeros_like(batch.logps)
        rollout = s.rollout
        rollout_args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        pushes: list[tuple[tuple[torch.Tensor, ...], torch.Tensor, int]] = [
            (rollout_args, coef.flatten(), s.task.config.sampling.num_samples)
        ]
        if baseline_args is not None and batch.baseline_logps is not None:
            # Every process must make the same DDP forward/backward calls: push a zero coefficient when this
            # process's loss did not use a_bar (e.g. a non-finite loss replaced by a zero).
            base = grads[1] if len(grads) > 1 and grads[1] is not None else torch.zeros_like(batch.baseline_logps)
            pushes.append((baseline_args, base, 1))
        for i, (args, c, k) in enumerate(pushes):
            self._push_gradient(args, c, k, final=last and i == len(pushes) - 1)

    def _push_gradient(self, args: tuple[torch.Tensor, ...], coef: torch.Tensor, k: int, *, final: bool) -> None:
        """backward(sum_i coef_i * log pi(a_i|s_i)) over micro-batches of rows: the chain rule, chunk by chunk.

        ``k``: rows come in groups of k sharing a prompt; chunks that keep whole groups share its forward.
        Only the step's very last backward (``final``) synchronizes gradients across processes.
        """
        size = self.config.training.micro_batch_size or len(coef)
        group = k if size % k == 0 else 1
        starts = list(range(0, len(coef), size))
        for start in starts:
            rows = slice(start, start + size)
            sync = final and start == starts[-1]
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.policy):
                tok, _ = token_logprobs(self.policy, *(t[rows] for t in args), group_size=group)
                self.accelerator.backward((coef[rows].detach() * tok.sum(dim=1)).sum())

    def _optimizer_step(self, nonfinite: torch.Tensor) -> float:
        """6. Clip once and step once; skip the step on every process if any saw a non-finite loss or norm."""
        max_norm = self.config.training.max_grad_norm
        cached = getattr(self, "_trainable", None)
        if cached is None or cached[0] is not self.policy:  # listed once per wrapper (FSDP replaces parameters)
            cached = self._trainable = (self.policy, [p for p in self.policy.parameters() if p.requires_grad])
        params = cached[1]
        if max_norm is not None:
            norm = self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        norm_value = float(norm)
        flag = float(self._reduce({"bad": float(nonfinite)}, op="sum")["bad"])
        if flag > 0 or not math.isfinite(norm_value):
            if math.isfinite(norm_value):
                self.log(f"warning: step {self.step + 1} skipped: a non-finite loss on {int(flag)} task(s)")
            else:
                self.log(f"warning: step {self.step + 1} skipped: the gradient norm is {norm_value}")
        else:
            self.optimizer.step()
        with warnings.catch_warnings():
            # A skipped step still advances the schedule (it counts steps); torch warns about that order.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm_value

    def _task_metrics(
        self,
        name: str,
        mixture: MixtureResult,
        rewards: torch.Tensor,
        calibrated: torch.Tensor,
        batch: PolicyBatch,
        tempered: torch.Tensor | None,
        loss: float,
        stats: dict[str, float],
    ) -> dict[str, float]:
        """The per-task keys of ``metrics.jsonl`` (see :mod:`cgpo.metrics`)."""
        prefix = f"task/{name}"
        ell = (batch.old_logps - batch.ref_logps).detach()
        if tempered is not None:
            # Samples come from the temperature-T policy; self-normalized importance weights
            # pi_1(a)/pi_T(a) make the KL(pi || pi_ref) estimate consistent.
            weights = torch.softmax((batch.old_logps - tempered).flatten(), dim=0)
            kl = float((weights * ell.flatten()).sum())
        else:
            kl = float(ell.mean())
        combined = torch.tensor(mixture.verdicts)
        out = {
            f"{prefix}/reward": float(rewards.mean()),
            f"{prefix}/calibrated_reward": float(calibrated.mean()),
            f"{prefix}/pass_rate": float((combined == 1).float().mean()),
            f"{prefix}/kl": kl,
            f"{prefix}/loss": loss,
            f"{prefix}/skipped_prompts": float(stats.get("skipped_prompts", 0.0)),
            f"{prefix}/response_length": float(batch.lengths.float().mean()),
        }
        for label, column in mixture.per_judge.items():
            values = torch.tensor([v.value for v in column])
            out[f"{prefix}/judge/{label}/violation_rate"] = float((values == 0).float().mean())
            out[f"{prefix}/judge/{label}/error_rate"] = float((values == -1).float().mean())
        for key, value in stats.items():
            if key != "skipped_prompts":
                out[f"{prefix}/opt/{key}"] = float(value)
        return out

    def _reduce(self, values: dict[str, float], op: str = "mean") -> dict[str, float]:
        """Average (or sum) a flat dict of floats over processes; keys are identical on every process."""
        if self.world == 1:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], device=self.accelerator.device, dtype=torch.float64)
        reduced = self.accelerator.reduce(tensor, reduction=op)
        return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}

    # ------------------------------------------------------------------------------------------------------------
    # The loop, checkpoints, the final model
    # ------------------------------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train until ``training.max_steps``; Ctrl-C or SIGTERM saves a checkpoint and stops cleanly."""
        cfg = self.config.training
        names = [t.name for t in self.tasks]
        progress = Progress(self.config.logging.progress, cfg.max_steps, self.step, self.log) if self.is_main else None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if cfg.eval_every and self.step == 0:
                self.evaluate()  # the "before" of the run
            while self.step < cfg.max_steps:
                if self._stop_signal is not None:
                    raise TrainingInterrupted
                with self._explain_oom():
                    metrics = self.train_step()
                self.step += 1
                for warning in self.monitor.update(self.step, metrics):
                    self.log(f"warning: {warning}")
                if self.is_main and self.step % self.config.logging.log_every == 0:
                    self.metrics.write(metrics)
                    if progress is not None:
                        progress.update(self.step, metrics, names)
                if self.accelerator.trackers:
                    self.accelerator.log(metrics, step=self.step)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                    self.evaluate()
        except TrainingInterrupted:
            self.log(f"interrupted at step {self.step}: saving a checkpoint")
            self.save_checkpoint()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if progress is not None:
                progress.close()
            self.metrics.close()
            self.evals.close()
        latest = ckpt.latest_checkpoint(self.output_dir)
        if latest is None or latest.name != f"step-{self.step}":
            self.save_checkpoint()
        self.save_final()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.log("stopping after this step (press Ctrl-C again to abort without a checkpoint)")

    @contextlib.contextmanager
    def _explain_oom(self) -> Iterator[None]:
        try:
            yield
        except torch.cuda.OutOfMemoryError as exc:
            raise UserError(
                "out of memory: lower training.micro_batch_size, generation.max_batch_size, a task's batch_size, "
                "sampling.num_samples or sampling.max_new_tokens, or enable training.gradient_checkpointing "
                f"or training.lora ({exc})"
            ) from exc

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "world_size": self.world,
            "samplers": {t.name: t.sampler.state_dict() for t in self.tasks},
            "monitor": self.monitor.state_dict(),
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoints/step-N`` atomically; keep the newest ``keep_checkpoints``."""
        staging = ckpt.staging_dir(self.output_dir, self.step)
        if self.is_main:
            staging.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        # Per process: RNG states and the scorers' baseline caches (each process generates its own a_bar).
        ckpt.write_process_state(staging, self.rank, {t.name: t.scorer.state_dict() for t in self.tasks})
        # Gathered on every process (FSDP shards the weights), written by the main one.
        weights = self.accelerator.get_state_dict(self.policy)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            ckpt.write_main_files(staging, model=self.unwrapped, weights=weights, tokenizer=self.tokenizer,
                                  optimizer=self.optimizer, scheduler=self.scheduler, state=self._trainer_state())  # fmt: skip
            final = ckpt.publish(staging, self.step, self.config.training.keep_checkpoints)
            self.log(f"checkpoint: {final}")
        self.accelerator.wait_for_everyone()

    def _resume_or_start(self) -> None:
        if self.is_main:
            ckpt.remove_stale_staging(self.output_dir)
        folder = None if self.fresh else ckpt.latest_checkpoint(self.output_dir)
        self._check_saved_config(resuming=folder is not None)
        if folder is None:
            if self.is_main:
                self.metrics.truncate_after(0)
                self.evals.truncate_after(-1)
            return
        state = ckpt.read_state(folder)
        if state["world_size"] != self.world:
            raise UserError(
                f"{folder} was written by {state['world_size']} processes, this run has {self.world}; "
                "resume with the same number of processes or start afresh with --fresh"
            )
        self._load_weights(folder / "policy")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        scorers = ckpt.load_process_state(folder, self.rank)
        for task in self.tasks:
            task.sampler.load_state_dict(state["samplers"][task.name])
            task.scorer.load_state_dict(scorers[task.name])
        self.monitor.load_state_dict(state["monitor"])
        self.step = int(state["step"])
        if self.is_main:
            self.metrics.truncate_after(self.step)
            self.evals.truncate_after(self.step)
        self.log(f"resumed from {folder} (step {self.step})")

    def _load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        model = self.unwrapped
        if self.config.training.lora is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
            return
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(folder.glob("*.safetensors")):
            state.update(load_file(shard))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise UserError(
                f"checkpoint {folder} does not match the model: missing {missing}, unexpected {unexpected}"
            )

    def _check_saved_config(self, *, resuming: bool) -> None:
        """Write the resolved config; when resuming, refuse a config that changed beyond max_steps and logging."""
        import yaml

        from cgpo.schema import to_dict

        current = to_dict(self.config)
        path = self.output_dir / "config.yaml"
        if resuming and path.is_file():
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
            comparable = {k: v for k, v in current.items() if k != "logging"}
            previous = {k: v for k, v in (saved or {}).items() if k != "logging"}
            comparable["training"] = {k: v for k, v in comparable["training"].items() if k != "max_steps"}
            previous["training"] = {k: v for k, v in previous.get("training", {}).items() if k != "max_steps"}
            if comparable != previous:
                raise UserError(
                    f"{self.output_dir} holds a run with a different config ({path}); resuming would mix two runs. "
                    "Use another output_dir, or --fresh to start this one from step 0"
                )
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".yaml.tmp")
            tmp.write_text(yaml.safe_dump(current, sort_keys=False), encoding="utf-8")
            tmp.replace(path)

    def save_final(self) -> None:
        """``OUTPUT_DIR/final/``: the trained model for ``from_pretrained`` (merged, or adapter + base path)."""
        lora = self.config.training.lora
        # Full weights are gathered on every process first (FSDP shards them; a collective call), exactly as
        # checkpoints do; a LoRA policy is saved from its own modules (adapters, or merged into the base).
        weights = self.accelerator.get_state_dict(self.policy) if lora is None else None
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        import shutil

        final, staging = self.output_dir / "final", self.output_dir / ".final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model = self.unwrapped
        if lora is not None and lora.save == "merged":
            model = model.merge_and_unload()
        model.save_pretrained(staging, state_dict=weights, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        self.log(f"final model: {final}")

    def close(self) -> None:
        for task in getattr(self, "tasks", []):
            task.scorer.close()
        if getattr(self, "accelerator", None) is not None and self.accelerator.trackers:
            self.accelerator.end_training()


class _AdaptersDisabled:
    """A LoRA policy seen as pi_ref: every forward and generate call runs with the adapters disabled."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._model.disable_adapter():
            return self._model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._model.disable_adapter():
            return self._model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``a.b.c`` keys with scalar values (what trackers accept)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        return {prefix[:-1]: str(tree)}
    return {prefix[:-1]: tree}


def train(config: RunConfig, *, log: Log = print, fresh: bool = False) -> int:
    """Run a training job; returns the CLI exit status (0 done, 130 interrupted with a checkpoint)."""
    trainer = CGPOTrainer(config, log=log, fresh=fresh)
    try:
        trainer.setup()
        trainer.train()
    except TrainingInterrupted:
        return 130
    finally:
        trainer.close()
    return 0
