"""Typed configuration: task YAMLs and run configs as frozen dataclasses.

A **task** (``tasks/*.yaml``) is one subset of prompts with its own reward, mixture of judges, optimizer
and sampling settings (CGPO paper §4.2). A **run config** (``configs/*.yaml``) names the policy, the
reference model, the tasks (paths to task YAMLs, ``{include: path, <overrides>}``, or inline tasks), the
training settings and the output directory.

Loading (:mod:`cgpo.config_loader`) is strict: unknown keys are rejected with a did-you-mean, types and
value ranges are checked here, in each dataclass's ``__post_init__``, and judge / optimizer /
reward-function names and params and data files are checked before any model loads. Every error names the
file, the key path inside it and the line.

Paths: data files and task YAMLs are relative to the YAML file that names them; ``output_dir`` and model
paths are relative to the working directory (as with ``from_pretrained``). ``tiny:policy`` and
``tiny:reward`` name the embedded tiny default, built on first use.
"""

from __future__ import annotations

import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cgpo.schema import Invalid

TINY_PREFIX = "tiny:"
TINY_MODELS = ("policy", "reward")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _positive(key: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise Invalid(key, f"must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise Invalid(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


# ----------------------------------------------------------------------------------------------------------------
# Task configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    """Where a task's prompts come from: a local file (``path``) or a ``datasets`` dataset (``dataset``).

    Args:
        path: A local ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file, relative to the YAML file.
        dataset: A ``datasets`` name or local dataset folder, loaded with ``datasets.load_dataset``
            (offline: it must already be in the local cache).
        config: The dataset configuration name, if it has several.
        split: Split to read; slicing such as ``train[:90%]`` is allowed.
        limit: Keep only the first N rows (after slicing).
    """

    path: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    limit: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.dataset is None):
            raise Invalid((), "give exactly one of 'path' (a local file) or 'dataset' (a datasets name)")
        if self.path is not None and Path(self.path).suffix.lower() not in _DATA_SUFFIXES:
            raise Invalid("path", f"unsupported file type; use one of {', '.join(sorted(_DATA_SUFFIXES))}")
        if self.config is not None and self.path is not None:
            raise Invalid("config", "only applies to 'dataset'")
        _positive("limit", self.limit)

    @property
    def builder(self) -> str:
        """The ``datasets`` builder that reads ``path`` (``json``, ``parquet`` or ``csv``)."""
        assert self.path is not None
        return _DATA_SUFFIXES[Path(self.path).suffix.lower()]


@dataclass(frozen=True)
class PromptsConfig:
    """A task's prompt set and how its columns map to prompts, gold responses and judge metadata.

    Args:
        train: Prompts drawn during training.
        eval: Held-out prompts for ``cgpo eval``; none means the task is not evaluated.
        prompt_field: Column holding the prompt text.
        reference_field: Column holding a gold or preferred response a_bar (calibration baseline,
            CRRAFT fallback), if any.
        metadata_fields: Judge metadata key -> column, e.g. ``{answer: answer}`` for the math judge. A list
            ``[answer, tests]`` means the same names on both sides.
        shuffle: Draw prompts in a seeded random order (otherwise in file order).
    """

    train: DataSource
    eval: DataSource | None = None
    prompt_field: str = "prompt"
    reference_field: str | None = None
    metadata_fields: dict[str, str] = field(default_factory=dict)
    shuffle: bool = True

    def __post_init__(self) -> None:
        for key in ("prompt", "reference"):
            if key in self.metadata_fields:
                raise Invalid(("metadata_fields", key), f"'{key}' is reserved; name the metadata key differently")

    def columns(self) -> list[str]:
        """Every column the task reads from its data."""
        cols = [self.prompt_field, *self.metadata_fields.values()]
        return cols + ([self.reference_field] if self.reference_field else [])


@dataclass(frozen=True)
class FormatConfig:
    """How a record becomes the policy's input.

    Args:
        template: ``str.format`` template over ``prompt`` and the metadata keys, giving the user message.
        chat: Wrap the message with the policy tokenizer's chat template (it must have one); otherwise
            the formatted template is the raw prompt text.
        system_prompt: Optional system message (chat only).
    """

    template: str = "{prompt}"
    chat: bool = True
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        try:
            fields_used = template_fields(self.template)
        except ValueError as exc:
            raise Invalid("template", f"not a valid format string: {exc}") from None
        if "prompt" not in fields_used and not fields_used:
            raise Invalid("template", "must use {prompt} or a metadata field")
        if self.system_prompt is not None and not self.chat:
            raise Invalid("system_prompt", "only applies when chat is true")


def template_fields(template: str) -> set[str]:
    """Top-level field names a ``str.format`` template uses (``{a.b}`` and ``{a[0]}`` count as ``a``)."""
    names = set()
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise ValueError("use named fields such as {prompt}, not positional ones")
        names.add(base)
    return names


@dataclass(frozen=True)
class RewardConfig:
    """A task's reward: a reward model, a named reward function, or none (the judges alone).

    Args:
        model: Path or hub id of a sequence-classification reward model (``num_labels=1``), or
            ``tiny:reward``. Tasks naming the same model share one loaded instance.
        function: A registered reward function (``cgpo list rewards``) or ``module:Class``.
        params: Parameters of the reward function.
        baseline: Source of the calibration baseline a_bar in sigmoid(r(s,a) - r(s,a_bar)) (eq. 5):
            ``reference`` (the dataset's gold response, ``prompts.reference_field``), ``generated``
            (generated once by the reference model and cached), or ``none`` (r(s,a_bar) = 0, so the
            calibrated reward is sigmoid(r): a reward in {0, 1} becomes 0.5 or 0.73).
        batch_size: Reward-model scoring batch size.
        max_length: Truncate scored sequences to this many tokens, keeping the end (>= 2; default: the
            model's limit).
        dtype: The reward model's weights: ``float32``, ``bfloat16``, ``float16``, ``auto`` (the
            checkpoint's own); none: float32 on CPU, bfloat16 on an accelerator.
        append_eos: Append the RM tokenizer's EOS to every scored sequence that does not end with it (RMs
            trained by TRL's RewardTrainer saw one).
        chat_template: ``auto`` formats with the RM tokenizer's chat template when it has one, ``always``
            requires one, ``never`` scores ``prompt + completion``.
    """

    model: str | None = None
    function: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    baseline: Literal["reference", "generated", "none"] = "generated"
    batch_size: int = 32
    max_length: int | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    append_eos: bool = False
    chat_template: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        if self.model is not None and self.function is not None:
            raise Invalid("function", "give either 'model' or 'function', not both")
        if self.params and self.function is None:
            raise Invalid("params", "only applies to 'function'")
        _positive("batch_size", self.batch_size)
        if self.max_length is not None and self.max_length < 2:
            raise Invalid("max_length", f"must be >= 2 or null (the end of the prompt and the completion), "
                                        f"got {self.max_length}")  # fmt: skip
        _check_named_source("model", self.model)
        if self.model is None:
            for key, default in (("dtype", None), ("append_eos", False), ("chat_template", "auto")):
                if getattr(self, key) != default:
                    raise Invalid(key, "only applies to 'model' (a reward model)")

    @property
    def kind(self) -> Literal["model", "function", "none"]:
        return "model" if self.model else "function" if self.function else "none"


@dataclass(frozen=True)
class JudgeSpec:
    """One judge of a task's mixture.

    Args:
        name: A registered judge (``cgpo list judges``) or ``module:Class``.
        params: The judge's parameters, checked against its ``Params``.
        label: Name used in metrics (``task/<t>/judge/<label>/...``); defaults to ``name``. Needed when a
            task uses the same judge twice.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if self.label is not None and not _NAME_PATTERN.match(self.label):
            raise Invalid("label", "use letters, digits, '_', '.' and '-'")

    @property
    def metric_label(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class OptimizerSpec:
    """A task's optimizer: ``crpg``, ``crraft``, ``codpo``, a baseline, or a plugin, with hyperparameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingConfig:
    """Generation settings for a task's training rollouts.

    Args:
        num_samples: K, responses per prompt.
        temperature: Sampling temperature (> 0). Log-probs for the KL term are always taken at
            temperature 1, so the KL estimate is unbiased whatever this is.
        top_p: Nucleus sampling mass, in (0, 1].
        top_k: Keep only the k most likely tokens (none: no limit).
        max_new_tokens: Longest response in tokens.
    """

    num_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        _positive("num_samples", self.num_samples)
        _positive("temperature", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise Invalid("top_p", f"must be in (0, 1], got {self.top_p}")
        _positive("top_k", self.top_k)
        _positive("max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class JudgeErrorAlarmConfig:
    """When a judge of the task fails (-1) too often, stop the run or warn (``judge_error_alarm``).

    Args:
        max_error_rate: The alarm counts a step when a judge's ``error_rate`` (its share of -1 verdicts on
            the step's samples) is above this, in [0, 1]; 1 disables the alarm (no rate exceeds 1).
        steps: N, how many consecutive counted steps raise the alarm.
        action: ``stop`` the run (a checkpoint is saved first; fix the judge and resume) or ``warn``
            (one loud line per episode of consecutive failing steps, training goes on).
    """

    max_error_rate: float = 0.5
    steps: int = 3
    action: Literal["stop", "warn"] = "stop"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_error_rate) and 0.0 <= self.max_error_rate <= 1.0):
            raise Invalid("max_error_rate", f"must be in [0, 1], got {self.max_error_rate}")
        _positive("steps", self.steps)


@dataclass(frozen=True)
class TaskConfig:
    """One CGPO task: prompts, reward, mixture of judges, optimizer and per-task hyperparameters.

    Args:
        name: Identifier used in metrics and checkpoints (letters, digits, ``_ . -``).
        description: Free text.
        prompts: The prompt set and its column mapping.
        format: How a record becomes the policy's input.
        reward: Reward model, reward function or none.
        judges: The mixture of judges (AND); empty means the unconstrained form of the optimizer.
        on_judge_failure: What a judge's -1 means for training: ``exclude`` the sample (default),
            count it as a ``violate``-ion, or ``stop`` the run.
        judge_error_alarm: Stop or warn when a judge's error rate stays above a threshold for N steps.
        optimizer: The task's optimizer and its hyperparameters.
        sampling: Generation settings (K, temperature, top_p, max_new_tokens).
        batch_size: B, prompts drawn from this task per step.
        kl_threshold: KL_max, the per-sample log-ratio bound of CRPG and CRRAFT (eqs. 11, 17).
        weight: rho, the weight of this task's gradient in the update (Algorithm 2).
        sampler: A model other than the policy that generates the task's K samples (distillation from a
            teacher; docs/distillation.md): loaded once, frozen. Samples cross as text, so its tokenizer and
            chat template may differ from the policy's; the policy re-encodes them with its own. Only
            optimizers that train on chosen samples without importance weights accept one (raft, crraft).
    """

    name: str
    prompts: PromptsConfig
    optimizer: OptimizerSpec
    description: str = ""
    format: FormatConfig = field(default_factory=FormatConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    judges: list[JudgeSpec] = field(default_factory=list)
    on_judge_failure: Literal["exclude", "violate", "stop"] = "exclude"
    judge_error_alarm: JudgeErrorAlarmConfig = field(default_factory=JudgeErrorAlarmConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 8
    kl_threshold: float | None = None
    weight: float = 1.0
    sampler: ModelConfig | None = None

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise Invalid("name", "use letters, digits, '_', '.' and '-' (it becomes a metric name)")
        _positive("batch_size", self.batch_size)
        _positive("kl_threshold", self.kl_threshold)
        _positive("weight", self.weight, allow_zero=True)
        labels = [spec.metric_label for spec in self.judges]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise Invalid(("judges", i, "label"), f"judge label '{label}' is used twice; set a distinct label")
        allowed = {"prompt", *self.prompts.metadata_fields}
        unknown = template_fields(self.format.template) - allowed
        if unknown:
            raise Invalid(
                ("format", "template"),
                f"uses {', '.join(sorted(unknown))}, which is neither 'prompt' nor a metadata field "
                f"({', '.join(sorted(allowed))}); add it to prompts.metadata_fields",
            )
        if self.reward.baseline == "reference" and self.reward.kind != "none" and not self.prompts.reference_field:
            raise Invalid(("reward", "baseline"), "'reference' needs prompts.reference_field (the gold response)")


# ----------------------------------------------------------------------------------------------------------------
# Run configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """A model to load with ``from_pretrained``.

    Args:
        path: Local directory or hub id (offline: it must be in the local cache), or ``tiny:policy``.
        dtype: ``auto`` keeps the checkpoint's dtype on GPU and float32 on CPU.
        revision: Hub revision, if any.
        trust_remote_code: Allow the checkpoint's own modelling code (off unless you trust it).
        attn_implementation: e.g. ``sdpa`` or ``flash_attention_2``; none lets transformers choose.
    """

    path: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if self.path.startswith(TINY_PREFIX) and self.path[len(TINY_PREFIX) :] not in TINY_MODELS:
            raise Invalid("path", f"the embedded tiny models are {', '.join(TINY_PREFIX + m for m in TINY_MODELS)}")
        _check_named_source("path", self.path)
        if _looks_local(self.path) and not Path(self.path).expanduser().is_dir():
            raise Invalid("path", f"model directory '{self.path}' not found")


def _check_named_source(key: str, path: str | None) -> None:
    """A ``family:variant`` name of :mod:`cgpo.model_sources` must be a known variant: refused here, before loading."""
    from cgpo.model_sources import unknown_variant

    reason = None if path is None else unknown_variant(path)
    if reason is not None:
        raise Invalid(key, reason)


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or (os.sep in path and Path(path).expanduser().exists())


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft). The reference is then the base model with adapters disabled: no second copy.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt, or ``all-linear``.
        save: ``merged`` writes the merged model to ``final/``; ``adapter`` writes the adapter and the
            base model's path.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    save: Literal["merged", "adapter"] = "merged"

    def __post_init__(self) -> None:
        _positive("r", self.r)
        _positive("alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise Invalid("dropout", f"must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise Invalid("target_modules", "must not be empty")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimization settings shared by all tasks.

    Args:
        max_steps: Number of updates (each is one optimizer step over all tasks).
        learning_rate: Peak AdamW learning rate.
        lr_scheduler: Schedule name (as in transformers' ``get_scheduler``).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        max_grad_norm: Clip the global gradient norm to this (none: no clipping).
        micro_batch_size: Sequences per forward/backward chunk (none: a task's whole rollout at once);
            lower it when memory runs out.
        precision: ``fp32``, or ``bf16`` / ``fp16`` mixed precision on GPU.
        gradient_checkpointing: Trade compute for activation memory.
        seed: Seed of every random choice (sampling, prompt order, initialization of adapters).
        save_every: Write a checkpoint every N steps (0: none on the way); the last step and a Ctrl-C always
            write one, so a finished or interrupted run can be resumed.
        keep_checkpoints: How many recent checkpoints to keep.
        save_optimizer_state: Write AdamW's state (``optimizer.pt``, about twice the weights in fp32) into each
            checkpoint. Off: checkpoints are about a third the size, and a resume restores weights, scheduler,
            RNG and sampler positions but starts AdamW's moments afresh (logged).
        eval_every: Evaluate on the eval splits every N steps, before the first and after the last (none or 0:
            never during training).
        lora: LoRA settings; none trains all weights.
        overlap_judging: Run the judges and reward models (phases 2-3) in a worker thread while the policy and
            reference log-prob passes run, joining before the loss; the results are the same either way. Off by
            default: on a 2-core CPU the worker competes with the passes for the cores and the step got slower
            (3.28 -> 3.57 s on the quickstart); turn it on where the passes run on a GPU or cores are spare.
    """

    max_steps: int
    learning_rate: float = 1e-6
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "polynomial", "inverse_sqrt"] = (
        "constant"
    )
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float | None = 1.0
    micro_batch_size: int | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0
    keep_checkpoints: int = 3
    save_optimizer_state: bool = True
    eval_every: int | None = None
    lora: LoraConfig | None = None
    overlap_judging: bool = False

    def __post_init__(self) -> None:
        _positive("max_steps", self.max_steps)
        _positive("learning_rate", self.learning_rate)
        _positive("warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise Invalid("adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas}")
        _positive("max_grad_norm", self.max_grad_norm)
        _positive("micro_batch_size", self.micro_batch_size)
        _positive("save_every", self.save_every, allow_zero=True)
        _positive("keep_checkpoints", self.keep_checkpoints)
        _positive("eval_every", self.eval_every, allow_zero=True)


@dataclass(frozen=True)
class LoggingConfig:
    """Where progress goes.

    Args:
        log_every: Write a metrics line every N steps.
        progress: ``auto`` shows a progress bar on a terminal and plain lines otherwise.
        trackers: Experiment trackers through accelerate (``tensorboard``, ``wandb``), if installed.
        project: Tracker project name.
    """

    log_every: int = 1
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    trackers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    project: str = "cgpo"

    def __post_init__(self) -> None:
        _positive("log_every", self.log_every)


@dataclass(frozen=True)
class GenerationConfig:
    """Rollout generation.

    Args:
        backend: ``transformers`` (``model.generate`` on the training process's device). A vLLM backend is
            not part of this version; the key exists so that configs name their backend explicitly.
        max_batch_size: Most sequences per generate call (none: all prompts of the step at once).
    """

    backend: Literal["transformers"] = "transformers"
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        _positive("max_batch_size", self.max_batch_size)


@dataclass(frozen=True)
class RunConfig:
    """A training run: policy, reference, tasks, training settings and output directory.

    Args:
        policy: The model being trained.
        reference: pi_ref of the KL terms; none means the initial policy (CGPO paper eq. 4).
        tasks: One or more tasks (paths to task YAMLs, ``{include: path, ...overrides}``, or inline).
        training: Optimization settings.
        output_dir: Where checkpoints, metrics and the final model go (relative to the working directory).
        logging: Progress and trackers.
        generation: Rollout backend.
    """

    policy: ModelConfig
    tasks: list[TaskConfig]
    training: TrainingConfig
    output_dir: str
    reference: ModelConfig | None = None
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise Invalid("tasks", "needs at least one task")
        names = [task.name for task in self.tasks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise Invalid(("tasks", i, "name"), f"task name '{name}' is used by task {names.index(name)} too")
        if all(task.weight == 0 for task in self.tasks):
            raise Invalid(("tasks", 0, "weight"), "every task has weight 0, so nothing would be trained")
        if not self.output_dir.strip():
            raise Invalid("output_dir", "must not be empty")

    def task(self, name: str) -> TaskConfig:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)
