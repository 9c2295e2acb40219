"""Small helpers the example studies (``examples/*/run.py``) share to read what ``cgpo`` wrote."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cgpo.report import read_jsonl


def single_task(evaluation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Name and metrics of the one task of a ``cgpo eval`` result (a study of one task).

    Raises:
        ValueError: the result holds no task or several.
    """
    tasks = evaluation["tasks"]
    if len(tasks) != 1:
        raise ValueError(f"expected one evaluated task, got {sorted(tasks)}")
    return next(iter(tasks.items()))


def check_study_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, counts: Sequence[str]) -> None:
    """The argument checks shared by the studies' ``run.py``: ``parser.error`` (one line, exit 2) otherwise.

    ``args.seeds`` must be distinct non-negative integers, and every option named in ``counts`` that is set
    must be at least 1.
    """
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    for flag in counts:
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def jsonl_objects(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (``metrics.jsonl``, eval samples); a bad line is an error naming FILE:LINE."""
    return [obj for _, obj in read_jsonl(path)]


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Change of a ratio metric between two paired evaluations, with a percentile paired-bootstrap interval.

    Prompt i contributes ``before[i]`` and ``after[i]`` successes out of ``weights[i]`` (default 1: a
    prompt-level rate); the metric is ``sum(x) / sum(w)`` (instruction-level accuracy: followed instructions
    over instructions). Each resample draws n prompts with replacement, the same draw for both sides, so the
    pairing is kept::

        delta   = (sum_i after_i - sum_i before_i) / sum_i w_i
        delta*_b = (sum_{i in I_b} after_i - sum_{i in I_b} before_i) / sum_{i in I_b} w_i,  I_b ~ U{1..n}^n
        ci      = the (1-level)/2 and (1+level)/2 quantiles of delta*_1..B

    Returns:
        ``{"before", "after", "delta", "ci_low", "ci_high", "n"}``.

    Raises:
        ValueError: the sequences differ in length, are empty, or the weights are not positive.
    """
    import numpy as np

    x, y = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if not len(x) or x.shape != y.shape or x.shape != w.shape:
        raise ValueError(f"need equal, non-empty lengths, got {len(x)}, {len(y)} and {len(w)}")
    if (w <= 0).any():
        raise ValueError("every weight must be positive")
    draws = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    deltas = (y[draws].sum(axis=1) - x[draws].sum(axis=1)) / w[draws].sum(axis=1)
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return {
        "before": float(x.sum() / w.sum()),
        "after": float(y.sum() / w.sum()),
        "delta": float((y.sum() - x.sum()) / w.sum()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(x),
    }


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> dict[str, float]:
    """Exact (binomial) two-sided McNemar test for paired pass/fail results.

    With b prompts that passed only before and c only after, under H0 (no change) b ~ Binomial(b + c, 1/2)::

        p = min(1, 2 * P[X <= min(b, c)]),  X ~ Binomial(b + c, 1/2)     (p = 1 when b + c = 0)

    Returns:
        ``{"only_before": b, "only_after": c, "p_value": p}``.
    """
    if len(before) != len(after):
        raise ValueError(f"need equal lengths, got {len(before)} and {len(after)}")
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n if n else 1.0
    return {"only_before": b, "only_after": c, "p_value": min(1.0, 2 * tail)}
