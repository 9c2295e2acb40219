"""The calibrated reward (CGPO paper eq. 5; cgpo-algorithms.md §4) and the baseline-response cache.

::

    R_calib(s, a) = sigmoid( r(s, a) - r(s, a_bar) )  in (0, 1)       ~ Prob(a > a_bar | s) under Bradley-Terry

Raw reward-model scores are not comparable across prompts; R_calib is, and it combines with 0/1 judges.
Within one prompt it orders samples exactly as r does (the baseline is shared), and R_calib(s, a_bar) =
sigmoid(0) = 0.5.

The baseline response a_bar comes from one of two sources [paper]:

* ``reference``: the dataset's gold SFT response or the preferred response of a reward-model pair (the
  task's gold field), passed in per prompt;
* ``generated``: generated once per prompt by the reference model before (or lazily during) RLHF and kept
  fixed. :func:`generate_baselines` takes a ``generate_fn(prompts) -> completions`` callable, so the
  trainer plugs its generation in, and stores the result in a :class:`BaselineCache`.

r(s, a_bar) is computed once per (prompt, a_bar, reward identity) and cached [interpretation]; a_bar is
scored by the same scorer as the samples, so it is formatted identically (chat template, truncation,
EOS). The cache is plain JSON so checkpoints can carry it: generated baselines are keyed by the prompt's
hash and the generator's identity, baseline rewards by the hashes of prompt and a_bar, the reward
identity (:attr:`cgpo.reward_models.RewardModel.identity`, which changes with the weights' files and the
formatting settings) and :data:`FORMAT_VERSION`; a stale entry is therefore never hit, only ignored.

A task with no reward model (the judges alone) uses :func:`judge_only_rewards`: reward 1.0 if every
judge is satisfied, else 0.0, and the calibrated reward is that same value. There is no baseline: a
0/1 score is already comparable across prompts and already in [0, 1], so calibration has nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Prompt = str | Sequence[Mapping[str, str]]
BaselineSource = Literal["reference", "generated"]
#: ``score_fn(prompts, completions, metadata) -> rewards``: a RewardModel or a RewardFunction.
ScoreFn = Callable[[Sequence[Any], Sequence[str], Sequence[Mapping[str, Any]]], Sequence[float]]
GenerateFn = Callable[[list[Any]], Sequence[str]]

#: Version of the cache's key scheme and file layout; bump it when either changes.
FORMAT_VERSION = 1
_FILE_KIND = "cgpo-baseline-cache"


def calibrated_rewards(rewards: torch.Tensor, baseline_rewards: torch.Tensor) -> torch.Tensor:
    """Eq. 5: sigmoid(r(s,a) - r(s,a_bar)).

    Args:
        rewards: ``[B, K]`` raw rewards of K samples for each of B prompts (or ``[B]``, one each).
        baseline_rewards: ``[B]`` raw reward of each prompt's baseline response.

    Returns:
        Same shape as ``rewards``, values in (0, 1), detached, float32.
    """
    import torch

    rewards = rewards.detach().float()
    bar = baseline_rewards.detach().float().to(rewards.device)
    if bar.dim() != 1 or bar.shape[0] != rewards.shape[0]:
        raise ValueError(f"baseline_rewards must be [B] = ({rewards.shape[0]},), got {tuple(bar.shape)}")
    if rewards.dim() == 2:
        bar = bar[:, None]
    return torch.sigmoid(rewards - bar)


def judge_only_rewards(verdicts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of a task without a reward model: the judges alone.

    Args:
        verdicts: ``[B, K]`` (any shape) combined verdicts in {1, 0, -1}.

    Returns:
        ``(rewards, calibrated)``, both float32 of the verdicts' shape: 1.0 where every judge is satisfied,
        else 0.0 (an excluded -1 sample gets 0.0 too; the optimizers leave it out anyway).
    """
    reward = (verdicts == 1).float()
    return reward, reward.clone()


def _digest(*parts: Any) -> str:
    # JSON gives one canonical text for strings and message lists alike.
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class BaselineCache:
    """Generated baseline responses a_bar and baseline rewards r(s, a_bar), saved as JSON.

    Thread-safe. Keys are hashes (see the module docstring), so one file may hold several generators and
    reward models without mixing them up.
    """

    def __init__(self) -> None:
        self._completions: dict[str, str] = {}
        self._rewards: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- keys ---------------------------------------------------------------------------------------------
    @staticmethod
    def completion_key(prompt: Prompt, generator: str) -> str:
        """Key of a generated a_bar: the prompt and the generator's identity (model, sampling settings)."""
        return _digest("completion", FORMAT_VERSION, generator, _plain(prompt))

    @staticmethod
    def reward_key(prompt: Prompt, completion: str, reward_identity: str) -> str:
        """Key of r(s, a_bar): the prompt, a_bar, the reward identity and the format version."""
        return _digest("reward", FORMAT_VERSION, reward_identity, _plain(prompt), completion)

    # -- access -------------------------------------------------------------------------------------------
    def get_completion(self, prompt: Prompt, generator: str) -> str | None:
        """The cached generated a_bar of ``prompt`` by ``generator``, or ``None``."""
        return self._completions.get(self.completion_key(prompt, generator))

    def put_completion(self, prompt: Prompt, generator: str, completion: str) -> None:
        """Store a generated a_bar."""
        with self._lock:
            self._completions[self.completion_key(prompt, generator)] = completion

    def get_reward(self, prompt: Prompt, completion: str, reward_identity: str) -> float | None:
        """The cached r(s, a_bar) under ``reward_identity``, or ``None``."""
        return self._rewards.get(self.reward_key(prompt, completion, reward_identity))

    def put_reward(self, prompt: Prompt, completion: str, reward_identity: str, reward: float) -> None:
        """Store r(s, a_bar)."""
        with self._lock:
            self._rewards[self.reward_key(prompt, completion, reward_identity)] = float(reward)

    def __len__(self) -> int:
        return len(self._completions) + len(self._rewards)

    # -- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for a checkpoint)."""
        with self._lock:
            return {
                "kind": _FILE_KIND,
                "format_version": FORMAT_VERSION,
                "completions": dict(self._completions),
                "rewards": dict(self._rewards),
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineCache:
        """Inverse of :meth:`to_dict`. Data of another format version loads as an empty cache.

        Raises:
            ValueError: ``data`` is not a baseline cache.
        """
        if data.get("kind") != _FILE_KIND:
            raise ValueError(f"not a cgpo baseline cache (kind={data.get('kind')!r})")
        cache = cls()
        if data.get("format_version") != FORMAT_VERSION:
            return cache  # keys from another scheme would never match; recompute instead
        cache._completions = {str(k): str(v) for k, v in data.get("completions", {}).items()}
        cache._rewards = {str(k): float(v) for k, v in data.get("rewards", {}).items()}
        return cache

    def save(self, path: str | Path) -> None:
        """Write the cache as JSON, atomically (a crash mid-write leaves the old file intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> BaselineCache:
        """Read a cache written by :meth:`save`; a missing file gives an empty cache."""
        path = Path(path)
        if not path.exists():
            return cls()
        with path.open(encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


def _plain(prompt: Prompt) -> Any:
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]


def _unique(items: Sequence[Any]) -> list[int]:
    """Indices of the first occurrence of each distinct item (items compared by canonical JSON)."""
    seen: set[str] = set()
    first = []
    for i, item in enumerate(items):
        key = json.dumps(item, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            first.append(i)
    return first


def generate_baselines(
    prompts: Sequence[Prompt], generate_fn: GenerateFn, cache: BaselineCache, *, generator: str
) -> list[str]:
    """a_bar ~ pi_ref(.|s) for each prompt, generated once and kept fixed (the ``generated`` source).

    Args:
        prompts: B prompts (duplicates are generated once).
        generate_fn: ``generate_fn(prompts) -> completions`` with the reference model; called once, on the
            distinct prompts the cache lacks, and not at all when every prompt is cached.
        cache: Where generated baselines live between calls and across restarts.
        generator: Identity of the generator (reference model and sampling settings); part of the key.

    Returns:
        B completions, in prompt order.
    """
    missing = [i for i in _unique([_plain(p) for p in prompts]) if cache.get_completion(prompts[i], generator) is None]
    if missing:
        todo = [prompts[i] for i in missing]
        produced = list(generate_fn(todo))
        if len(produced) != len(todo):
            raise ValueError(f"generate_fn returned {len(produced)} completions for {len(todo)} prompts")
        for prompt, completion in zip(todo, produced, strict=True):
            if not isinstance(completion, str):
                raise TypeError(f"generate_fn must return strings, got {type(completion).__name__}")
            cache.put_completion(prompt, generator, completion)
    return [str(cache.get_completion(p, generator)) for p in prompts]


def baseline_rewards(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    score_fn: ScoreFn,
    cache: BaselineCache,
    *,
    reward_identity: str,
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> torch.Tensor:
    """r(s, a_bar) for each prompt, scored once per distinct (prompt, a_bar) and cached.

    Args:
        prompts: B prompts.
        completions: B baseline responses a_bar (gold responses, or :func:`generate_baselines`' output).
        score_fn: The task's scorer, ``score_fn(prompts, completions, metadata) -> rewards``: the same one
            that scores the samples, so a_bar is formatted identically.
        cache: Holds computed baseline rewards.
        reward_identity: Identity of the scorer (e.g. ``RewardModel.identity``); part of the key.
        metadata: B per-prompt metadata records for reward functions that read them.

    Returns:
        ``[B]`` float32 tensor.
    """
    import torch

    if len(completions) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(completions)} baseline responses; they must match")
    meta = list(metadata) if metadata is not None else [{}] * len(prompts)
    pairs = [[_plain(p), c] for p, c in zip(prompts, completions, strict=True)]
    missing = [i for i in _unique(pairs) if cache.get_reward(prompts[i], completions[i], reward_identity) is None]
    if missing:
        scores = list(
            score_fn([prompts[i] for i in missing], [completions[i] for i in missing], [meta[i] for i in missing])
        )
        if len(scores) != len(missing):
            raise ValueError(f"the scorer returned {len(scores)} rewards for {len(missing)} baseline responses")
        for i, score in zip(missing, scores, strict=True):
            cache.put_reward(prompts[i], completions[i], reward_identity, float(score))
    values = [cache.get_reward(p, c, reward_identity) for p, c in zip(prompts, completions, strict=True)]
    return torch.tensor(values, dtype=torch.float32)


def reference_baselines(prompts: Sequence[Prompt], gold: Sequence[str | None]) -> list[str]:
    """a_bar from the dataset (the ``reference`` source): each prompt's gold or preferred response.

    Raises:
        ValueError: naming the first prompt whose gold response is missing or empty; with the
            ``reference`` source every prompt needs one (use ``generated`` otherwise).
    """
    if len(gold) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(gold)} gold responses; they must match")
    for i, answer in enumerate(gold):
        if not isinstance(answer, str) or not answer:
            raise ValueError(f"prompt {i} has no gold response for the 'reference' calibration baseline")
    return [str(a) for a in gold]


def resolve_baselines(
    prompts: Sequence[Prompt],
    *,
    source: BaselineSource,
    score_fn: ScoreFn,
    cache: BaselineCache,
    reward_identity: str,
    gold: Sequence[str | None] | None = None,
    generate_fn: GenerateFn | None = None,
    generator: str = "",
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[str], torch.Tensor]:
    """a_bar and r(s, a_bar) for a batch of prompts, from either source; the trainer's one call per batch.

    Returns:
        ``(baseline responses [B], baseline rewards [B] float32)``.
    """
    if source == "reference":
        if gold is None:
            raise ValueError("the 'reference' calibration baseline needs the dataset's gold responses")
        completions = reference_baselines(prompts, gold)
    elif source == "generated":
        if generate_fn is None:
            raise ValueError("the 'generated' calibration baseline needs a generate_fn")
        completions = generate_baselines(prompts, generate_fn, cache, generator=generator)
    else:
        raise ValueError(f"unknown baseline source {source!r}; use 'reference' or 'generated'")
    rewards = baseline_rewards(
        prompts, completions, score_fn, cache, reward_identity=reward_identity, metadata=metadata
    )
    return completions, rewards
