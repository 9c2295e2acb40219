"""The multi-task CGPO trainer (CGPO paper Algorithm 2; cgpo-algorithms.md §9): setup, the loop, checkpoints.

One step (:meth:`CGPOTrainer.train_step`) runs the six phases of :mod:`cgpo.phases`, each a plain
function in a module named for it::

    draw B_l prompts per task l (seeded, resumable samplers; every process keeps its slice)
    1. rollout   K_l samples per prompt, one generate call per group of equal sampling settings; a_bar
    2. judge     each task's mixture of judges (Kleene AND; -1 follows on_judge_failure)
    3. reward    raw and calibrated rewards sigmoid(r(s,a) - r(s,a_bar)); shared reward models score once
    4. loss      log-probs under the policy and the reference; each task objective's loss L_l
    5. backward  one backward of sum_l rho_l L_l, normalized across processes (or micro-batched pushes)
    6. update    one clip, one AdamW step, one scheduler step for all tasks together

The trainer keeps what lives across steps: the accelerator, models, AdamW, scheduler, the tasks' samplers
and scorers, metrics, signals and checkpoints. The reference is a frozen copy of the initial policy, or,
with LoRA, the same model with its adapters disabled (:mod:`cgpo.reference`: no second copy in memory).
Checkpoints (:mod:`cgpo.checkpoint`) carry everything needed for an exact resume: weights, optimizer,
scheduler, RNG states, sampler positions and baseline caches. Under FSDP the policy is sharded by
:mod:`cgpo.distributed.fsdp` and its weights and optimizer state are checkpointed in shards by
:mod:`cgpo.distributed.checkpoint`.
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cgpo import checkpoint as ckpt
from cgpo.config import LoraConfig as LoraSettings
from cgpo.config import RunConfig, TaskConfig
from cgpo.data import TaskSampler, encode_prompt, load_records
from cgpo.distributed import checkpoint as sharded
from cgpo.distributed import fsdp
from cgpo.distributed.shutdown import leave_process_group
from cgpo.errors import UserError
from cgpo.judge_alarm import JudgeErrorAlarm, JudgeErrorAlarmStop
from cgpo.metrics import MetricsWriter, PhaseTimer, Progress, RewardHackingMonitor
from cgpo.models import quiet_library_progress_bars, resolve_model_path
from cgpo.optimizers import OPTIMIZERS
from cgpo.phases.backward import weighted_backward
from cgpo.phases.batches import DrawnPrompts, RolloutGroup, Scored, StepModels, TaskRollout, TaskState, TaskUpdate
from cgpo.phases.judge import judge_rollouts
from cgpo.phases.loss import sample_logprobs, task_losses
from cgpo.phases.metrics import reduce_floats, task_metrics
from cgpo.phases.overlap import Pending
from cgpo.phases.reward import score_rollouts
from cgpo.phases.rollout import fitting_prompts, generate_rollouts
from cgpo.phases.update import optimizer_step
from cgpo.reference import reference_policy
from cgpo.run_lock import RunLock
from cgpo.samplers import load_samplers
from cgpo.scoring import TaskScorer

Log = Callable[[str], None]

#: The training keys a resume may change (with ``logging``): how long to train, and what later checkpoints hold
#: (turning the optimizer state off is the way out of a filling disk without losing the run).
_CHANGEABLE_ON_RESUME = ("max_steps", "save_optimizer_state")

#: Signals that end a run with a checkpoint (SIGUSR1 does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))

__all__ = ["CGPOTrainer", "RolloutGroup", "TaskState", "TrainingInterrupted", "train"]


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT), SIGTERM or SIGUSR1 arrived; the loop saves a checkpoint and stops (exit status 130)."""


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
            # accelerate's DeepSpeed engine steps on every synchronized backward (one AdamW update per task,
            # not one on the weighted sum), and ZeRO-3 partitions the frozen reference and reward models,
            # which never enter an engine. No DeepSpeed path has ever run, so none is shipped.
            raise UserError(
                "DeepSpeed is refused: its engine takes an optimizer step on every backward (one per task, not one "
                "per CGPO step) and no DeepSpeed path of cgpo has been run; for ZeRO-3-style sharding launch "
                "with FSDP2 (configs/accelerate/fsdp.yaml), else DDP (configs/accelerate/ddp.yaml); see "
                "configs/accelerate/README.md"
            )
        # FSDP: cgpo shards the policy itself (cgpo.distributed.fsdp), on GPUs and on CPU alike.
        self.fsdp = fsdp.fsdp_requested(self.accelerator)
        if self.fsdp:
            fsdp.check_run_config(self.config)
        # One run per output_dir: a second one is refused at once, naming the first's pid and host; the lock
        # is a flock, so a killed run never leaves it behind.
        self._lock = RunLock.acquire(self.output_dir) if self.is_main else None
        set_seed(cfg.seed)  # identical on every process: LoRA initialization must match across ranks
        self._load_models()
        if self.fsdp:  # layer by layer onto the device, sharded as it goes: never the whole policy on one GPU
            plugin = fsdp.fsdp_plugin(self.accelerator)
            self.policy = fsdp.shard_policy(self.policy, plugin, mixed_precision=self.accelerator.mixed_precision)
        self.tasks = [self._build_task(task) for task in self.config.tasks]
        for task in self.tasks:  # judges start their workers now, not inside the first steps
            task.scorer.mixture.warm_up()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # The fused AdamW kernel (one kernel for all parameters) where it is known to apply: plain or DDP
        # replicas of floating-point parameters; sharded (FSDP) parameters keep the default implementation.
        fused = (
            not self.fsdp
            and self.accelerator.distributed_type.name in ("NO", "MULTI_CPU", "MULTI_GPU")
            and all(p.is_floating_point() for p in params)
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
        if self.fsdp and self.accelerator.distributed_type.name != "FSDP":
            self.optimizer = self.accelerator.prepare(self.optimizer)  # MULTI_CPU would wrap the policy in DDP
        else:  # accelerate's FSDP keeps the already-sharded policy as it is
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
        self._policy_kwargs = kwargs
        policy = AutoModelForCausalLM.from_pretrained(self.policy_path, **kwargs)
        if training.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.reference: Any = None
        if training.lora is not None:
            policy = self._with_lora(policy, training.lora)
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
        # The tasks' teachers (``sampler:``): frozen, loaded once each, never wrapped or saved; the main process
        # first, as above (a ``tiny:`` sampler is built on first use).
        with self.accelerator.main_process_first():
            self.samplers = load_samplers([t.sampler for t in cfg.tasks], device=self.accelerator.device,
                                          dtype=self._torch_dtype, log=self.log)  # fmt: skip
        self.max_positions = int(getattr(policy.config, "max_position_embeddings", 0) or 0)

    @staticmethod
    def _with_lora(model: Any, lora: LoraSettings) -> Any:
        """``model`` wrapped by peft with the adapters of ``training.lora`` (initialized from the current seed)."""
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            # peft (0.21) reads model.is_gradient_checkpointing inside get_peft_model, which transformers
            # 5.25 deprecated in favour of is_activation_checkpointing: peft's call, not ours, and it would
            # print on every LoRA run. Only that one message is silenced.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)  # fmt: skip
            return get_peft_model(
                model,
                LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=lora.target_modules, task_type="CAUSAL_LM"),
            )  # fmt: skip

    def _unsharded_lora_policy(self, weights: Mapping[str, torch.Tensor], lora: LoraSettings) -> Any:
        """A plain (CPU) copy of the sharded LoRA policy holding ``weights``, its gathered state dict.

        peft saves adapters and merges them from ordinary tensors; FSDP's parameters are DTensor shards, so
        the main process rebuilds the same PEFT model unsharded and loads every weight (base and adapters).
        """
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.policy_path, **self._policy_kwargs)
        model = self._with_lora(base, lora)
        model.load_state_dict(dict(weights), strict=True)
        return model

    def _build_task(self, task: TaskConfig) -> TaskState:
        records = load_records(task, "train")
        prompt_ids = [encode_prompt(self.tokenizer, task.format, r.message) for r in records]
        keep = fitting_prompts(prompt_ids, task.sampling.max_new_tokens, self.max_positions)
        if len(keep) < len(records):
            self.log(
                f"task {task.name}: {len(records) - len(keep)} of {len(records)} prompts are too long for "
                f"{self.max_positions} positions with max_new_tokens {task.sampling.max_new_tokens}; left out"
            )
        if not keep:
            raise UserError(f"task {task.name}: every prompt is too long; lower sampling.max_new_tokens")
        records, prompt_ids = [records[i] for i in keep], [prompt_ids[i] for i in keep]
        objective_cls = OPTIMIZERS.get(task.optimizer.name)
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
            objective=objective_cls(objective_cls.parse_params(task.optimizer.params)),
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

    @property
    def pi_ref(self) -> Any:
        """pi_ref: the frozen copy, or the LoRA policy with its adapters disabled."""
        return reference_policy(self.reference, self.unwrapped)

    @property
    def models(self) -> StepModels:
        """What the phases of a step use: the policy (wrapped and not), pi_ref, the tokenizer, the device."""
        return StepModels(
            self.policy, self.unwrapped, self.pi_ref, self.tokenizer, self.accelerator.device, self.samplers
        )

    @property
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters AdamW updates, listed once per wrapper (FSDP replaces parameters)."""
        cached = getattr(self, "_trainable", None)
        if cached is None or cached[0] is not self.policy:
            cached = self._trainable = (self.policy, [p for p in self.policy.parameters() if p.requires_grad])
        return cached[1]

    def draw(self, task: TaskState) -> list[int]:
        """This process's B prompt indices: every process draws the same global batch and keeps its slice."""
        batch = task.config.batch_size
        indices = task.sampler.next_batch(batch * self.world)
        return indices[self.rank * batch : (self.rank + 1) * batch]

    def train_step(self) -> dict[str, Any]:
        """One CGPO update over all tasks: the six phases of :mod:`cgpo.phases`, each timed under its name.

        Returns the step's metrics (``metrics.jsonl``), averaged over processes.
        """
        started, timer = time.perf_counter(), PhaseTimer()
        models, step, training = self.models, self.step + 1, self.config.training
        drawn = [DrawnPrompts(task, self.draw(task)) for task in self.tasks]
        with timer("generate"):  # 1. K samples per prompt, and a_bar from pi_ref
            rollouts = generate_rollouts(
                drawn, models, max_batch_size=self.config.generation.max_batch_size, policy_name=self.policy_path
            )
        overlap = training.overlap_judging

        def judge_and_score() -> list[Scored]:  # in a worker thread while 4a runs: only the loss reads them
            with timer("judge", background=overlap):  # 2. each task's mixture of judges, on samples and a_bar
                judged = judge_rollouts(rollouts)
            with timer("reward", background=overlap):  # 3. raw and calibrated rewards
                return score_rollouts(judged)

        pending = Pending(judge_and_score, timer, background=overlap)
        with_grad = training.micro_batch_size is None
        with timer("forward_backward"):  # 4a. the samples' log-probs under the policy and pi_ref
            logprobs = sample_logprobs(rollouts, models, with_grad=with_grad)
        scored = pending.result()
        with timer("forward_backward"):  # 4b. each task's loss L_l; 5. one backward of sum_l rho_l L_l
            losses = task_losses(scored, logprobs, models, with_grad=with_grad)
            updates = weighted_backward(
                losses, models, self.accelerator, micro_batch_size=training.micro_batch_size, step=step, log=self.log
            )
        with timer("optimizer"):  # 6. one clip, one AdamW step, one scheduler step
            grad_norm = optimizer_step(
                self.trainable_parameters, self.optimizer, self.scheduler, self.accelerator,
                nonfinite_tasks=sum(u.nonfinite for u in updates), max_grad_norm=training.max_grad_norm,
                step=step, log=self.log,
            )  # fmt: skip
        return self._step_metrics(updates, rollouts, grad_norm, timer, time.perf_counter() - started)

    def _step_metrics(
        self,
        updates: Sequence[TaskUpdate],
        rollouts: Sequence[TaskRollout],
        grad_norm: float,
        timer: PhaseTimer,
        seconds: float,
    ) -> dict[str, Any]:
        """The step's row of ``metrics.jsonl``: totals, phase times, throughput, every task's keys."""
        per_task: dict[str, float] = {}
        for update in updates:
            per_task.update(task_metrics(update))
        total_loss = sum(u.loss.task.config.weight * u.loss.value for u in updates)
        tokens = sum(int(r.rollout.completion_mask.sum()) for r in rollouts)
        tokens_all = reduce_floats(self.accelerator, {"tokens": float(tokens)}, op="sum")["tokens"]
        return {
            "step": self.step + 1,
            "loss": reduce_floats(self.accelerator, {"loss": total_loss})["loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            **timer.metrics(seconds),
            "tokens_per_s": tokens_all / seconds if seconds > 0 else 0.0,
            **reduce_floats(self.accelerator, per_task),
        }

    # ------------------------------------------------------------------------------------------------------------
    # Held-out evaluation during training (training.eval_every)
    # ------------------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        """Greedy evaluation of the current policy on the tasks' eval splits (as ``cgpo eval``), main process only.

        Appends ``{"step", "tasks": ...}`` to ``OUTPUT_DIR/eval.jsonl`` and logs the table. Generated baselines
        come from pi_ref, as in ``cgpo eval``, so every evaluation of the run shares them. Under FSDP every
        process evaluates (each forward of the sharded policy is collective; greedy decoding gives every
        process the same completions), and only the main process writes and logs.
        """
        from cgpo.evaluation import LoadedModel, evaluate_loaded, plan_tasks, print_table

        result: dict[str, Any] | None = None
        if self.is_main or self.fsdp:
            if self._eval_tasks is None:
                self._eval_tasks = plan_tasks(self.config)[0]
            policy = LoadedModel(self.unwrapped, self.tokenizer, f"policy at step {self.step}")
            reference = LoadedModel(self.pi_ref, self.tokenizer, "reference")
            with torch.no_grad():
                result = evaluate_loaded(self.config, self._eval_tasks, policy, lambda: reference,
                                         device=self.accelerator.device, log=lambda _: None)  # fmt: skip
            result = {"step": self.step, **result}
        if self.is_main and result is not None:
            self.evals.write(result)
            stream = io.StringIO()
            print_table({**result, "model": f"held-out evaluation at step {self.step}"}, file=stream)
            self.log(stream.getvalue().rstrip())
        self.accelerator.wait_for_everyone()
        return result if self.is_main else None  # the others wait, as without FSDP

    # ------------------------------------------------------------------------------------------------------------
    # The loop, checkpoints, the final model
    # ------------------------------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train until ``training.max_steps``; a stop signal saves a checkpoint and stops cleanly.

        The stop signals: SIGINT (Ctrl-C), SIGTERM (what schedulers and ``kill`` send) and SIGUSR1 (what SLURM
        sends ahead of a job's time limit with ``--signal=USR1@SECONDS``). The step under way finishes first.
        """
        cfg = self.config.training
        names = [t.name for t in self.tasks]
        progress = Progress(self.config.logging.progress, cfg.max_steps, self.step, self.log) if self.is_main else None
        # Fed each step's metrics, which are averaged over processes: every process stops at the same step.
        judge_alarm = JudgeErrorAlarm({t.name: t.judge_error_alarm for t in self.config.tasks},
                                      self.log if self.is_main else lambda line: None)  # fmt: skip
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            if cfg.eval_every and self.step == 0:
                self.monitor.update_eval(self.evaluate())  # the "before" of the run: the monitor's reference
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
                judge_alarm.update(self.step, metrics)  # after the metrics are written: "stop" raises here
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                    for warning in self.monitor.update_eval(self.evaluate()):
                        self.log(f"warning: {warning}")
        except TrainingInterrupted:
            self.log(f"interrupted at step {self.step}: saving a checkpoint")
            self.save_checkpoint()
            raise
        except JudgeErrorAlarmStop:
            self.log(f"judge error alarm at step {self.step}: saving a checkpoint")
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
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """AdamW itself, inside accelerate's wrapper (what DCP's state-dict functions take)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

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
        """Write ``checkpoints/step-N`` atomically; keep the newest ``keep_checkpoints``.

        Raises ``CheckpointWriteError`` on every process when any process's write failed (the staging folder
        removed, the previous checkpoints untouched).
        """
        staging = ckpt.staging_dir(self.output_dir, self.step)
        # A failed write (a full disk) is reported, not raised, so that every process reaches the next
        # agreement and all stop at once with the same error instead of waiting at a barrier for the timeout.
        failure = ckpt.write_failure(lambda: ckpt.make_staging(staging)) if self.is_main else None
        ckpt.agree_on_write_failures(self.accelerator, failure, staging)
        # Per process: RNG states and the scorers' baseline caches (each process generates its own a_bar).
        scorers = {t.name: t.scorer.state_dict() for t in self.tasks}
        failure = ckpt.write_failure(
            lambda: ckpt.write_process_state(staging, self.rank, scorers, remove_staging=False)
        )
        weights: Any = None
        if self.fsdp:  # every process writes its own shards of the weights and AdamW state (DCP, collective)
            ckpt.agree_on_write_failures(self.accelerator, failure, staging)
            failure = ckpt.write_failure(lambda: sharded.write_shards(staging, self.unwrapped, self._torch_optimizer))
        else:  # DDP replicas: the full weights, gathered on every process, written by the main one
            weights = self.accelerator.get_state_dict(self.policy)
        ckpt.agree_on_write_failures(self.accelerator, failure, staging)
        failure = ckpt.write_failure(lambda: self._publish_checkpoint(staging, weights)) if self.is_main else None
        ckpt.agree_on_write_failures(self.accelerator, failure, staging)

    def _publish_checkpoint(self, staging: Path, weights: Any) -> None:
        """The main process's files, then the manifest and the rename to ``step-N`` (main process only)."""
        if self.fsdp:
            sharded.write_main_files(staging, scheduler=self.scheduler, state=self._trainer_state())
        else:
            ckpt.write_main_files(staging, model=self.unwrapped, weights=weights, tokenizer=self.tokenizer,
                                  optimizer=self.optimizer if self.config.training.save_optimizer_state else None,
                                  scheduler=self.scheduler, state=self._trainer_state())  # fmt: skip
        final = ckpt.publish(staging, self.step, self.config.training.keep_checkpoints)
        self.log(f"checkpoint: {final}")

    def _resume_or_start(self) -> None:
        if self.is_main:
            ckpt.remove_stale_staging(self.output_dir)
        # The newest checkpoint whose files match their manifest; each skipped one is logged with the reason.
        quiet = self.log if self.is_main else (lambda line: None)
        folder = None if self.fresh else ckpt.agreed_resume_checkpoint(self.accelerator, self.output_dir, quiet)
        self._check_saved_config(resuming=folder is not None)
        if folder is None:
            if self.is_main:
                self.metrics.truncate_after(0)
                self.evals.truncate_after(-1)
            return
        state = ckpt.read_state(folder)
        self._check_world(folder, state)
        if sharded.is_sharded_checkpoint(state):  # DCP reshards: any number of processes, sharded or not
            sharded.load_shards(folder, self.unwrapped, self._torch_optimizer)
        elif self.fsdp:
            raise UserError(
                f"{folder} was written by a run without FSDP (gathered weights); resume it without FSDP "
                "or start afresh with --fresh"
            )
        else:
            self._load_weights(folder / "policy")
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        if not sharded.is_sharded_checkpoint(state):  # sharded checkpoints hold AdamW's shards (loaded above)
            self._load_optimizer(folder)
        # A process the checkpoint has no files for (a run on more processes) keeps its seeded RNG streams
        # and starts with empty baseline caches.
        scorers = ckpt.load_process_state(folder, self.rank) if self.rank < state["world_size"] else {}
        for task in self.tasks:
            task.sampler.load_state_dict(state["samplers"][task.name])
            if task.name in scorers:
                task.scorer.load_state_dict(scorers[task.name])
        self.monitor.load_state_dict(state["monitor"], log=self.log)
        self.step = int(state["step"])
        if self.is_main:
            self.metrics.truncate_after(self.step)
            self.evals.truncate_after(self.step)
        self.log(f"resumed from {folder} (step {self.step})")

    def _check_world(self, folder: Path, state: dict[str, Any]) -> None:
        """Allow a resume on another number of processes, saying what is restored exactly and what is not."""
        saved = int(state["world_size"])
        if saved == self.world:
            return
        if not self.is_main:
            return
        # DDP checkpoints hold the full (replicated) weights and AdamW state, FSDP ones DCP shards, which DCP
        # reshards on load; sampler positions count draws from one global permutation shared by all processes.
        self.log(
            f"warning: {folder} was written by {saved} processes, this run has {self.world}: weights, AdamW "
            "state, schedule, step and sampler positions are restored exactly; the global batch is now "
            f"batch_size x {self.world}, and the sampling streams and baseline caches of each process differ, "
            "so the run continues but does not reproduce an uninterrupted one"
        )

    def _load_optimizer(self, folder: Path) -> None:
        """AdamW's saved state, or, in a checkpoint written without it, a logged fresh start of its moments."""
        path = folder / ckpt.OPTIMIZER_FILE
        if path.is_file():
            self.optimizer.load_state_dict(torch.load(path, weights_only=False))
            return
        # The fresh AdamW holds the schedule's step-0 rate; the next update must use the resumed step's.
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        if self.is_main:
            self.log(f"{folder} has no {ckpt.OPTIMIZER_FILE} (training.save_optimizer_state was false): "
                     "AdamW restarts with fresh moments; weights, scheduler, RNG and prompt order are resumed")  # fmt: skip

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
        """Write the resolved config; when resuming, refuse a config that changed beyond ``_CHANGEABLE_ON_RESUME``."""
        import yaml

        from cgpo.schema import to_dict

        current = to_dict(self.config)
        path = self.output_dir / "config.yaml"
        if resuming and path.is_file():
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
            comparable = {k: v for k, v in current.items() if k != "logging"}
            previous = {k: v for k, v in (saved or {}).items() if k != "logging"}
            free = _CHANGEABLE_ON_RESUME
            comparable["training"] = {k: v for k, v in comparable["training"].items() if k not in free}
            previous["training"] = {k: v for k, v in previous.get("training", {}).items() if k not in free}
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
        # checkpoints do; a LoRA policy is saved from its own modules (adapters, or merged into the base),
        # under FSDP from an unsharded copy holding the gathered weights.
        weights = fsdp.full_state_dict(self.accelerator, self.policy) if lora is None or self.fsdp else None
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        model = self.unwrapped
        if lora is not None:
            if self.fsdp:
                model, weights = self._unsharded_lora_policy(weights or {}, lora), None  # strict load: never empty
            if lora.save == "merged":
                model = model.merge_and_unload()
        final = ckpt.save_final_atomically(self.output_dir, model=model, tokenizer=self.tokenizer, weights=weights)
        self.log(f"final model: {final}")

    def close(self) -> None:
        """Release what the run holds: the judges' workers, the trackers, the output_dir lock."""
        for task in getattr(self, "tasks", []):
            task.scorer.close()
        if getattr(self, "accelerator", None) is not None and self.accelerator.trackers:
            self.accelerator.end_training()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None


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
        # accelerate's end_training leaves the group only with trackers; the entry point then ends the process
        # without interpreter finalization (cgpo.distributed.shutdown says why)
        leave_process_group()
    return 0
