"""Held-out evaluation of a policy on the eval splits of a run config's tasks (``cgpo eval``).

For every task with ``prompts.eval``, one completion per eval prompt is generated (greedy by default, or
sampled with the task's temperature, top_p and top_k), judged by the task's mixture of judges and scored by
its reward through the same :class:`cgpo.scoring.TaskScorer` the trainer uses. Per task, over its ``n``
evaluated prompts::

    pass_rate          = mean_i [ J(s_i, a_i) == 1 ]          every judge satisfied (a judge error is not a pass)
    reward             = mean_i r(s_i, a_i)                     raw reward-model / reward-function score
    calibrated_reward  = mean_i sigmoid(r(s_i, a_i) - r(s_i, a_bar_i))              CGPO eq. 5
    judges[j]          = {violation_rate: mean_i [v_j == 0], error_rate: mean_i [v_j == -1]}

A task without a reward model or function scores 1.0 for a pass and 0.0 otherwise (reward = calibrated =
pass rate), as in training.

Baselines a_bar: ``reference`` uses the dataset's gold responses; ``generated`` uses the *reference* model's
greedy response (``reference.path``, or ``policy.path`` when the config has no reference), never the model
under evaluation. The baseline is thus a fixed function of the config and the prompt, so the numbers before
and after a run (``cgpo eval CONFIG`` and ``cgpo eval CONFIG --model OUTPUT_DIR/final``) are measured
against the same a_bar; for the untrained policy, which *is* the reference, the greedy completion equals
a_bar and the calibrated reward is sigmoid(0) = 0.5. (Training samples a_bar at the task's temperature;
evaluation takes it greedily so that it does not depend on a seed or on batch composition.)

Determinism: greedy decoding, float32 on CPU, a fixed batch composition (prompts sorted by length) and a
seeded RNG (for ``sample=True``) give identical results on repeated runs on the same hardware.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cgpo.config import RunConfig, SamplingConfig, TaskConfig
from cgpo.data import PromptRecord, encode_prompt, load_records
from cgpo.errors import UserError
from cgpo.judging import MixtureResult
from cgpo.phases.judge import judge_rates
from cgpo.phases.rollout import fitting_prompts, grouped, row_slices

Log = Callable[[str], None]

#: Files that mark a directory as something ``AutoModelForCausalLM.from_pretrained`` can load.
_MODEL_MARKERS = ("config.json", "adapter_config.json")


@dataclass
class EvalTask:
    """A task to evaluate: its config and its eval records (after ``max_prompts``)."""

    config: TaskConfig
    records: list[PromptRecord]

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    source: str

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)


def plan_tasks(
    config: RunConfig, *, tasks: Sequence[str] | None = None, max_prompts: int | None = None
) -> tuple[list[EvalTask], dict[str, str]]:
    """Load the eval splits (no model is touched): the tasks to evaluate and the skipped ones with a reason.

    Args:
        config: The run config.
        tasks: Evaluate only these task names (default: all).
        max_prompts: Keep the first N eval prompts of each task (file order).

    Raises:
        UserError: an unknown task name, an unreadable eval split, or no task with an eval split at all.
    """
    names = [t.name for t in config.tasks]
    wanted = list(tasks) if tasks else names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UserError(f"unknown task {', '.join(unknown)}; the config's tasks are {', '.join(names)}")
    if max_prompts is not None and max_prompts < 1:
        raise UserError(f"--max-prompts must be at least 1, got {max_prompts}")
    selected: list[EvalTask] = []
    skipped: dict[str, str] = {}
    for task in config.tasks:
        if task.name not in wanted:
            continue
        if task.prompts.eval is None:
            skipped[task.name] = "no prompts.eval split"
            continue
        records = load_records(task, "eval")
        if max_prompts is not None:
            records = records[:max_prompts]
        selected.append(EvalTask(task, records))
    if not selected:
        raise UserError(
            "no task to evaluate: none of " + ", ".join(wanted) + " has a prompts.eval split; add "
            "'prompts: {eval: {path: FILE.jsonl}}' to a task"
        )
    return selected, skipped


def resolve_model_dir(path: str | Path, *, log: Log = print) -> Path:
    """The directory to load for ``--model``: DIR itself, or ``DIR/final`` (a run) or ``DIR/policy`` (a checkpoint).

    Raises:
        UserError: DIR does not exist or holds no model (no ``config.json`` or ``adapter_config.json``).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"--model {path}: no such directory")
    if not folder.is_dir():
        raise UserError(f"--model {path}: not a directory (pass a model folder such as OUTPUT_DIR/final)")
    for candidate in (folder, folder / "final", folder / "policy"):
        if any((candidate / marker).is_file() for marker in _MODEL_MARKERS):
            if candidate != folder:
                log(f"--model {path}: loading {candidate}")
            return candidate.resolve()
    raise UserError(
        f"--model {path}: no model in this directory (no config.json); pass a folder written by save_pretrained, "
        "such as OUTPUT_DIR/final or OUTPUT_DIR/checkpoints/step-N/policy"
    )


def pick_device() -> Any:
    """The accelerator's device (CUDA, MPS or CPU, as accelerate chooses); evaluation runs in one process."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        raise UserError("cgpo eval runs in a single process; start it with `cgpo eval`, not `accelerate launch`")
    return state.device


def model_dtype(requested: str, device: Any) -> Any:
    """The torch dtype of an evaluated model.

    float32 on CPU whatever the config says (bf16 matmuls are slow and lossy there); on an accelerator the
    config's dtype, with ``auto`` meaning bfloat16.
    """
    import torch

    if getattr(device, "type", str(device)) == "cpu":
        return torch.float32
    return torch.bfloat16 if requested == "auto" else getattr(torch, requested)


def load_model(
    path: str,
    *,
    device: Any,
    dtype: Any,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    tokenizer_fallback: str | None = None,
    log: Log = print,
) -> LoadedModel:
    """Load a causal LM for generation (eval mode, no gradients) and its tokenizer.

    Args:
        path: A local folder or cached hub id.
        device: Where to put the model.
        dtype: Its torch dtype.
        revision: Hub revision.
        trust_remote_code: Allow the checkpoint's own code.
        attn_implementation: e.g. ``sdpa``; none lets transformers choose.
        tokenizer_fallback: Where to take the tokenizer from when ``path`` has none.
        log: Progress messages.

    Raises:
        UserError: the model or tokenizer cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        if tokenizer_fallback is None:
            raise UserError(f"cannot load a tokenizer from {path}: {exc}") from exc
        log(f"{path} has no tokenizer; using the one of {tokenizer_fallback}")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_fallback, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    kwargs = dict(common, dtype=dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a causal language model from {path}: {exc}") from exc
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return LoadedModel(model, tokenizer, path)


def _decoding(sampling: SamplingConfig, sample: bool) -> SamplingConfig:
    """The settings one eval generation uses: K = 1; greedy decoding only reads ``max_new_tokens``."""
    if sample:
        return dataclasses.replace(sampling, num_samples=1)
    return SamplingConfig(num_samples=1, max_new_tokens=sampling.max_new_tokens)


def _generate_texts(
    loaded: LoadedModel,
    prompts: list[list[int]],
    decoding: SamplingConfig,
    *,
    sample: bool,
    max_batch_size: int | None,
) -> list[str]:
    """One completion per prompt, generated in batches of similar lengths (less padding), in input order."""
    from cgpo import rollout

    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out = rollout.generate(
        loaded.model,
        loaded.tokenizer,
        [prompts[i] for i in order],
        decoding,
        num_samples=1,
        greedy=not sample,
        max_batch_size=max_batch_size,
    )
    texts = [""] * len(prompts)
    for position, index in enumerate(order):
        texts[index] = out.texts[position]
    return texts


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def evaluate_loaded(
    config: RunConfig,
    tasks: Sequence[EvalTask],
    policy: LoadedModel,
    reference: Callable[[], LoadedModel],
    *,
    device: Any,
    sample: bool = False,
    with_samples: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate an already loaded policy on ``tasks`` (see the module docstring for the metrics).

    The prompt-length filter, the grouping of generate calls and the judge rates are the training step's
    own (:mod:`cgpo.phases`); scoring goes through the same :class:`cgpo.scoring.TaskScorer`.

    Args:
        config: The run config (generation batch size, reward models, judges).
        tasks: From :func:`plan_tasks`.
        policy: The model under evaluation.
        reference: Returns the reference model for ``generated`` baselines; called at most once, and only
            when a task needs it.
        device: Device for the reward models.
        sample: Sample with the task's settings instead of greedy decoding.
        with_samples: Also return every prompt's completion, verdicts and rewards under ``samples``.
        log: Progress messages.

    Returns:
        ``{"tasks": {name: metrics}}``, plus ``{"samples": {name: [row, ...]}}`` with ``with_samples``.
    """
    kept = {task.name: _fitting_eval_prompts(task, policy, log) for task in tasks}
    texts = _generate_eval_texts(tasks, kept, policy, sample=sample, max_batch=config.generation.max_batch_size,
                                 log=log)  # fmt: skip
    ref_cache: list[LoadedModel] = []

    def reference_once() -> LoadedModel:
        if not ref_cache:
            ref_cache.append(reference())
        return ref_cache[0]

    results: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        started = time.perf_counter()
        records = [task.records[i] for i, _ in kept[task.name]]
        scored = _score_eval_task(task.config, records, texts[task.name], reference_once,
                                  device=device, max_batch=config.generation.max_batch_size, log=log)  # fmt: skip
        results[task.name] = _task_result(scored, policy.tokenizer, skipped=len(task.records) - len(records))
        log(f"task {task.name}: {len(records)} prompts, pass rate {results[task.name]['pass_rate']:.3f} "
            f"({time.perf_counter() - started:.1f}s judging and scoring)")  # fmt: skip
        if with_samples:
            samples[task.name] = _sample_rows(scored)
    out: dict[str, Any] = {"tasks": results}
    if with_samples:
        out["samples"] = samples
    return out


@dataclass
class _ScoredEval:
    """One task's evaluated completions: n records, n texts, the mixture and ``[n]`` verdicts and rewards."""

    records: list[PromptRecord]
    completions: list[str]
    mixture: MixtureResult
    verdicts: Any
    rewards: Any
    calibrated: Any
    baselines: list[str]


def _fitting_eval_prompts(task: EvalTask, policy: LoadedModel, log: Log) -> list[tuple[int, list[int]]]:
    """``(index, prompt ids)`` of the eval prompts that fit the model's positions with max_new_tokens."""
    ids = [encode_prompt(policy.tokenizer, task.config.format, r.message) for r in task.records]
    budget = task.config.sampling.max_new_tokens
    keep = fitting_prompts(ids, budget, policy.max_positions)
    if len(keep) < len(ids):
        log(f"task {task.name}: {len(ids) - len(keep)} of {len(ids)} eval prompts are too long for "
            f"{policy.max_positions} positions with max_new_tokens {budget}; left out")  # fmt: skip
    if not keep:
        raise UserError(f"task {task.name}: every eval prompt is too long; lower sampling.max_new_tokens")
    return [(i, ids[i]) for i in keep]


def _generate_eval_texts(
    tasks: Sequence[EvalTask],
    kept: dict[str, list[tuple[int, list[int]]]],
    policy: LoadedModel,
    *,
    sample: bool,
    max_batch: int | None,
    log: Log,
) -> dict[str, list[str]]:
    """One completion per kept prompt: one generate call per group of tasks with the same decoding settings."""
    texts: dict[str, list[str]] = {}
    for decoding, members in grouped(tasks, key=lambda t: _decoding(t.config.sampling, sample)):
        started = time.perf_counter()
        prompts = [ids for t in members for _, ids in kept[t.name]]
        generated = _generate_texts(policy, prompts, decoding, sample=sample, max_batch_size=max_batch)
        for task, rows in zip(members, row_slices([len(kept[t.name]) for t in members]), strict=True):
            texts[task.name] = generated[rows]
        log(f"generated {len(prompts)} completions for {', '.join(t.name for t in members)} "
            f"in {time.perf_counter() - started:.1f}s")  # fmt: skip
    return texts


def _score_eval_task(
    cfg: TaskConfig,
    records: list[PromptRecord],
    completions: list[str],
    reference: Callable[[], LoadedModel],
    *,
    device: Any,
    max_batch: int | None,
    log: Log,
) -> _ScoredEval:
    """Judge and score one task's completions (K = 1) with a fresh :class:`TaskScorer`."""
    import torch

    from cgpo.models import resolve_model_path
    from cgpo.scoring import TaskScorer

    cpu = getattr(device, "type", str(device)) == "cpu"
    scorer = TaskScorer(cfg, resolve_model=lambda p: resolve_model_path(p, log=log), device=str(device),
                        dtype="float32" if cpu else "bfloat16")  # fmt: skip
    try:
        # The mixture itself, not scorer.judge: evaluation reports judge errors (error_rate) instead of
        # applying the training-time failure policy, which could stop the evaluation.
        mixture = scorer.mixture([r.prompt for r in records], completions, [r.metadata for r in records])
        verdicts = torch.tensor(mixture.verdicts, dtype=torch.long)

        def reference_greedy(messages: list[str]) -> list[str]:
            ref = reference()
            prompts = [encode_prompt(ref.tokenizer, cfg.format, m) for m in messages]
            return _generate_texts(ref, prompts, _decoding(cfg.sampling, False), sample=False,
                                   max_batch_size=max_batch)  # fmt: skip

        # Raw and calibrated rewards, K = 1; a_bar from the gold data or the reference's greedy answer.
        baselines = scorer.baseline_texts(records, reference_greedy, f"eval-greedy|{cfg.sampling.max_new_tokens}")
        rewards, calibrated, baselines = scorer.rewards(records, completions, verdicts, baselines=baselines)
    finally:
        scorer.close()
    return _ScoredEval(records, completions, mixture, verdicts, rewards, calibrated, baselines)


def _task_result(scored: _ScoredEval, tokenizer: Any, *, skipped: int) -> dict[str, Any]:
    """The metrics of one task (module docstring)."""
    n = len(scored.records)
    lengths = [_token_count(tokenizer, t) for t in scored.completions]
    return {
        "n": n,
        "pass_rate": float((scored.verdicts == 1).float().mean()),
        "reward": float(scored.rewards.mean()),
        "calibrated_reward": float(scored.calibrated.mean()),
        "judges": judge_rates(scored.mixture),
        "response_length": sum(lengths) / n,
        "skipped_prompts": skipped,
    }


def _sample_rows(scored: _ScoredEval) -> list[dict[str, Any]]:
    """Every prompt's completion, verdicts and rewards (``--samples``)."""
    return [
        {
            "prompt": record.prompt,
            "completion": scored.completions[i],
            "verdict": int(scored.verdicts[i]),
            "judges": {label: column[i].value for label, column in scored.mixture.per_judge.items()},
            "reward": float(scored.rewards[i]),
            "calibrated_reward": float(scored.calibrated[i]),
            "baseline": scored.baselines[i],
        }
        for i, record in enumerate(scored.records)
    ]


def evaluate(
    config: RunConfig,
    model_path: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    max_prompts: int | None = None,
    sample: bool = False,
    seed: int | None = None,
    with_samples: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate the config's policy, or the model in ``model_path``, on the tasks' eval splits.

    Everything that can fail on user input (task names, eval data, the ``--model`` folder) is checked
    before any model loads.

    Args:
        config: The validated run config.
        model_path: A folder written by ``save_pretrained`` (e.g. ``OUTPUT_DIR/final``); none evaluates
            ``config.policy`` as it is.
        tasks: Only these task names.
        max_prompts: At most N eval prompts per task (the first N).
        sample: Sample with each task's temperature / top_p / top_k instead of greedy decoding.
        seed: RNG seed (default ``training.seed``); only sampling depends on it.
        with_samples: Include each prompt's completion, verdicts and rewards under ``samples``.
        log: Progress messages.

    Returns:
        ``{"model", "reference", "decoding", "seed", "tasks": {name: {"n", "pass_rate", "reward",
        "calibrated_reward", "judges": {label: {"violation_rate", "error_rate"}}, "response_length",
        "skipped_prompts"}}, "skipped": {name: reason}}``.
    """
    import torch
    from transformers import set_seed

    from cgpo.models import quiet_library_progress_bars, resolve_model_path

    quiet_library_progress_bars()
    selected, skipped = plan_tasks(config, tasks=tasks, max_prompts=max_prompts)
    explicit = resolve_model_dir(model_path, log=log) if model_path is not None else None
    seed = config.training.seed if seed is None else seed
    device = pick_device()
    set_seed(seed)
    policy_cfg, ref_cfg = config.policy, config.reference or config.policy
    policy = _load_policy(config, explicit, device, log)

    def reference() -> LoadedModel:
        # Without --model and without a separate reference, the policy as it is *is* the reference.
        if explicit is None and config.reference is None:
            return policy
        log(f"loading the reference {ref_cfg.path} for generated baselines")
        return _load_configured(resolve_model_path(ref_cfg.path, log=log), ref_cfg, device, log)

    with torch.no_grad():
        result = evaluate_loaded(
            config, selected, policy, reference, device=device, sample=sample, with_samples=with_samples, log=log
        )
    return {
        "model": str(explicit) if explicit is not None else policy_cfg.path,
        "reference": ref_cfg.path,
        "decoding": "sample" if sample else "greedy",
        "seed": seed,
        **result,
        "skipped": skipped,
    }


def _load_configured(path: str, model_cfg: Any, device: Any, log: Log) -> LoadedModel:
    """A model of the config (policy or reference) with its dtype, revision and attention settings."""
    return load_model(
        path, device=device, dtype=model_dtype(model_cfg.dtype, device), revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code, attn_implementation=model_cfg.attn_implementation, log=log,
    )  # fmt: skip


def _load_policy(config: RunConfig, explicit: Path | None, device: Any, log: Log) -> LoadedModel:
    """The model under evaluation: the ``--model`` folder, or the config's policy as it is."""
    from cgpo.models import resolve_model_path

    policy_cfg = config.policy
    if explicit is None:
        log(f"loading {policy_cfg.path}")
        return _load_configured(resolve_model_path(policy_cfg.path, log=log), policy_cfg, device, log)
    log(f"loading {explicit}")
    # A folder without its own tokenizer (a bare save_pretrained of the weights) uses the policy's.
    has_tokenizer = (explicit / "tokenizer_config.json").is_file()
    return load_model(
        str(explicit), device=device, dtype=model_dtype(policy_cfg.dtype, device),
        trust_remote_code=policy_cfg.trust_remote_code, attn_implementation=policy_cfg.attn_implementation,
        tokenizer_fallback=None if has_tokenizer else resolve_model_path(policy_cfg.path, log=log), log=log,
    )  # fmt: skip


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_samples(path: str | Path, samples: dict[str, list[dict[str, Any]]]) -> None:
    """Every evaluated completion as JSON lines (``task`` first), written atomically like :func:`write_json`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for task, rows in samples.items():
                for row in rows:
                    handle.write(json.dumps({"task": task, **row}, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """One row per task: name, n, pass rate, reward, calibrated reward, judges (violation / error rates)."""
    rows = []
    for name, m in result["tasks"].items():
        judges = "; ".join(
            f"{label} {j['violation_rate']:.2f}/{j['error_rate']:.2f}" for label, j in m["judges"].items()
        )
        rows.append(
            (name, str(m["n"]), f"{m['pass_rate']:.3f}", f"{m['reward']:.3f}", f"{m['calibrated_reward']:.3f}",
             judges or "-")
        )  # fmt: skip
    for name, reason in result.get("skipped", {}).items():
        rows.append((name, "-", "skipped", "-", "-", reason))
    return rows


TABLE_HEADER = ("task", "n", "pass rate", "reward", "calibrated", "judges violation/error")


def print_table(result: dict[str, Any], file: TextIO | None = None) -> None:
    """The per-task table: with rich when it is installed, as aligned plain text otherwise."""
    import sys

    stream = file if file is not None else sys.stdout
    rows = table_rows(result)
    title = f"cgpo eval: {result.get('model', '')} ({result.get('decoding', 'greedy')})"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        stream.write(plain_table(rows, title))
        return
    table = Table(title=title)
    for i, header in enumerate(TABLE_HEADER):
        table.add_column(header, justify="right" if 0 < i < 5 else "left", no_wrap=i < 5)
    for row in rows:
        table.add_row(*row)
    Console(file=stream, width=max(100, _terminal_width(stream))).print(table)


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def plain_table(rows: Sequence[Sequence[str]], title: str = "") -> str:
    """Aligned text columns (the fallback without rich)."""
    widths = [max(len(str(r[i])) for r in (TABLE_HEADER, *rows)) for i in range(len(TABLE_HEADER))]
    lines = [title] if title else []
    for row in (TABLE_HEADER, *rows):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
