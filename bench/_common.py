"""Shared pieces of the trainer benchmarks: phase clocks, cgpo run configs, alternating worker processes.

Every trainer benchmark runs each measured program in a fresh process (``--worker NAME``), alternating
A, B, A, B, ..., so that load from other processes hits both alike; figures are medians over those runs.

Phases are measured the same way for every framework, by wrapping the objects both of them call:

* ``generate``: ``model.generate`` of the policy (everything inside, its own forward passes included), and
  cgpo's prompt prefill before it (``cgpo.rollout._prefill``: generation work that TRL does inside
  ``generate``);
* ``forward_policy``, ``forward_reference``, ``forward_reward``: ``forward`` of the policy, the reference
  and the reward model, outside ``generate``. TRL patches the policy's and the reference's ``forward`` with
  a fused LM head that also takes the log-softmax at the completion tokens;
* ``logprobs``: cgpo's log-softmax at the completion tokens (``cgpo.rollout.completion_logprobs``), which it
  computes after the forward from the logits: the same work TRL's fused forward does inside;
* ``backward``: ``accelerator.backward``;
* ``optimizer``: ``accelerator.clip_grad_norm_`` and ``optimizer.step``;
* ``rule_reward``: the rule judge (the math judge, in both programs through the same cgpo judge class).

Only the outermost timed call counts (a forward inside ``generate`` is generation time). ``overhead`` is
the step's wall time minus generation, forward passes, backward and optimizer, as issue 7 defines it, so
the rule reward is part of it (it is reported on its own too). A step's wall time is the interval between
the ends of consecutive steps, so whatever a framework does between steps (logging, metrics, data loading)
counts in the step that follows it.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
COUNTED = ("generate", "forward_policy", "forward_reference", "forward_reward", "logprobs", "backward", "optimizer")
PHASES = (*COUNTED, "rule_reward")
#: Small enough that the policy stays where it started during a benchmark: every program then samples from
#: the same distribution (the same completion lengths on average), whatever its loss. The work of a step
#: does not depend on the learning rate.
LEARNING_RATE = 1.0e-6


class PhaseClock:
    """Wall-clock and CPU seconds per phase, from wrapped methods; nested timed calls count to the outermost one.

    CPU seconds (``time.process_time``, this process, all its threads) move far less than wall-clock
    seconds when other programs load the machine; with one torch thread they are the load-robust view.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inside = False
        # On a GPU, calls return before the kernels finish: ``sync`` (torch.cuda.synchronize) at both ends of
        # a timed call attributes the time to the right phase (and costs a little).
        self.sync = sync

    def wrap(self, obj: Any, attr: str, phase: str) -> None:
        """Replace ``obj.attr`` (a bound method or callable attribute) by a timed version on this instance."""
        original = getattr(obj, attr)
        setattr(obj, attr, self.timed(original, phase))

    def timed(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        """``fn`` timed under ``phase`` (keeps its signature for ``inspect``, which transformers consults)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._inside:
                return fn(*args, **kwargs)
            self._inside = True
            if self.sync is not None:
                self.sync()
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.sync is not None:
                    self.sync()
                self.seconds[phase] += time.perf_counter() - start
                self.seconds[f"cpu_{phase}"] += time.process_time() - cpu
                self._inside = False

        return wrapper

    def wrap_generate(self, model: Any) -> None:
        """Time ``model.generate`` and count the completion tokens it returns (rows x new columns, padding included).

        The count shows whether two programs did the same amount of decoding: completion lengths are random,
        and every row of a batch runs until the longest one stops.
        """
        self.wrap(model, "generate", "generate")
        timed = model.generate

        @functools.wraps(timed)
        def generate(*args: Any, **kwargs: Any) -> Any:
            out = timed(*args, **kwargs)
            prompt = kwargs.get("input_ids", args[0] if args else None)
            if prompt is not None and hasattr(out, "shape"):
                self.seconds["generated_tokens"] += out.shape[0] * (out.shape[1] - prompt.shape[1])
            return out

        model.generate = generate

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


class StepRecorder:
    """Step boundaries: the time and the phase clock at the end of every step."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self.marks: list[tuple[float, float, dict[str, float]]] = []
        self.mark()

    def mark(self) -> None:
        if self.clock.sync is not None:
            self.clock.sync()
        self.marks.append((time.perf_counter(), time.process_time(), self.clock.snapshot()))

    def steps(self, warmup: int) -> list[dict[str, float]]:
        """Per-step ``{"step": s, phase: s, ..., "overhead": s}`` (and ``cpu_*`` twins) after ``warmup`` steps."""
        out = []
        for (t0, p0, c0), (t1, p1, c1) in zip(self.marks, self.marks[1:], strict=False):
            row = {"step": t1 - t0, "cpu_step": p1 - p0}
            for phase in PHASES:
                for key in (phase, f"cpu_{phase}"):
                    row[key] = c1.get(key, 0.0) - c0.get(key, 0.0)
            row["generated_tokens"] = c1.get("generated_tokens", 0.0) - c0.get("generated_tokens", 0.0)
            row["overhead"] = row["step"] - sum(row[p] for p in COUNTED)
            row["cpu_overhead"] = row["cpu_step"] - sum(row[f"cpu_{p}"] for p in COUNTED)
            out.append(row)
        return out[warmup:]


def make_clock(device: str) -> PhaseClock:
    """A phase clock that synchronizes CUDA around timed calls when the run is on a GPU."""
    import torch

    return PhaseClock(sync=torch.cuda.synchronize if device == "cuda" else None)


def set_threads(threads: int) -> None:
    """One torch thread count for every program (set before any model exists)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def worker_env(threads: int, device: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"  # accelerate (hence cgpo) stays on the CPU even where CUDA exists
    return env


def tiny_paths() -> tuple[str, str]:
    """(policy, reward) folders of the embedded tiny models (shipped with the package, or a local build)."""
    from cgpo.tiny.embedded import tiny_models

    root = Path(tiny_models())
    return str(root / "policy"), str(root / "reward")


def cgpo_config(
    out_dir: Path,
    *,
    tasks: Sequence[dict[str, Any]],
    policy: str,
    dtype: str,
    steps: int,
    learning_rate: float = LEARNING_RATE,
    extra_training: dict[str, Any] | None = None,
) -> Any:
    """A validated cgpo :class:`RunConfig` (written to ``out_dir/run.yaml`` first, as a user would)."""
    import yaml

    from cgpo.config_loader import load_run_config

    precision = "bf16" if dtype == "bf16" else "fp32"
    config = {
        "policy": {"path": policy, "dtype": "bfloat16" if dtype == "bf16" else "float32"},
        "tasks": list(tasks),
        "training": {
            "max_steps": steps,
            "learning_rate": learning_rate,
            "lr_scheduler": "constant",
            "max_grad_norm": 1.0,
            "precision": precision,
            "seed": 0,
            "save_every": 0,
            **(extra_training or {}),
        },
        "output_dir": str(out_dir / "run"),
        "logging": {"log_every": 1, "progress": "none"},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return load_run_config(path)


def instrument_cgpo(trainer: Any, clock: PhaseClock) -> StepRecorder:
    """Wrap a set-up :class:`cgpo.trainer.CGPOTrainer`'s models, backward, optimizer, judges and step."""
    import cgpo.rollout

    policy = trainer.unwrapped
    clock.wrap_generate(policy)
    for name, phase in (("_prefill", "generate"), ("completion_logprobs", "logprobs")):
        if hasattr(cgpo.rollout, name):  # absent in older versions of cgpo (benchmarked for before/after figures)
            clock.wrap(cgpo.rollout, name, phase)
    clock.wrap(policy, "forward", "forward_policy")
    if trainer.reference is not None:
        clock.wrap(trainer.reference, "forward", "forward_reference")
    wrapped_rms = set()
    for task in trainer.tasks:
        reward = task.scorer.reward_fn
        model = getattr(reward, "model", None)
        if model is not None and id(model) not in wrapped_rms:
            wrapped_rms.add(id(model))
            clock.wrap(model, "forward", "forward_reward")
        clock.wrap(task.scorer, "judge", "rule_reward")
    clock.wrap(trainer.accelerator, "backward", "backward")
    clock.wrap(trainer.accelerator, "clip_grad_norm_", "optimizer")
    clock.wrap(trainer.optimizer, "step", "optimizer")
    recorder = StepRecorder(clock)
    step = trainer.train_step

    def train_step() -> Any:
        out = step()
        recorder.mark()
        return out

    trainer.train_step = train_step
    return recorder


def run_cgpo_steps(
    config: Any, *, warmup: int, device: str = "cpu"
) -> tuple[list[dict[str, float]], list[dict[str, Any]], Any]:
    """Train a cgpo run config with instrumentation; returns (measured steps, cgpo's own time/* rows, trainer)."""
    from cgpo.trainer import CGPOTrainer

    trainer = CGPOTrainer(config, fresh=True, log=lambda _: None)
    trainer.setup()
    for task in trainer.tasks:
        warm_judges(task.scorer.mixture)
    clock = make_clock(device)
    recorder = instrument_cgpo(trainer, clock)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    own = [{k: v for k, v in row.items() if k.startswith("time/")} for row in rows][warmup:]
    return recorder.steps(warmup), own, trainer


KEYS = ("step", *PHASES, "overhead")


def summarize_run(steps: list[dict[str, float]]) -> dict[str, Any]:
    """One process's figures: median step, mean seconds per phase, overhead fraction over the measured steps."""
    total, cpu_total = sum(s["step"] for s in steps), sum(s["cpu_step"] for s in steps)
    return {
        "steps": len(steps),
        "step_median_s": statistics.median(s["step"] for s in steps),
        "cpu_step_median_s": statistics.median(s["cpu_step"] for s in steps),
        "phases_mean_s": {k: sum(s[k] for s in steps) / len(steps) for k in KEYS},
        "cpu_phases_mean_s": {k: sum(s[f"cpu_{k}"] for s in steps) / len(steps) for k in KEYS},
        "generated_tokens_mean": sum(s["generated_tokens"] for s in steps) / len(steps),
        "overhead_fraction": sum(s["overhead"] for s in steps) / total if total > 0 else 0.0,
        "cpu_overhead_fraction": sum(s["cpu_overhead"] for s in steps) / cpu_total if cpu_total > 0 else 0.0,
    }


def warm_judges(mixture: Any) -> None:
    """Start the judges' worker processes before timing (a one-time cost that lands in a random step).

    The math judge starts its math-verify workers the first time an answer is not a plain number; one such
    call here moves that start-up out of the measured steps, identically in every program.
    """
    for judge in mixture.judges.values():
        judge(["What is x + 1 - 1?"], [r"\boxed{x+1-1}"], [{"answer": "x"}])


def run_worker(script: Path, args: list[str], *, threads: int, device: str, timeout: float) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh process and return the JSON it writes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cgpo-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), *args, "--result", str(result), "--scratch", tmp]
        proc = subprocess.run(
            cmd, check=False, env=worker_env(threads, device), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"worker {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(result.read_text())


def load_average() -> str:
    """The machine's 1, 5 and 15-minute load averages and core count, for the record."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
