"""Every optimizer against an independent re-implementation of cgpo-algorithms.md on random inputs.

The references below are written from the specification with plain Python loops over prompts and
samples (strict ``>`` / ``<`` comparisons in index order, so ties go to the lowest index), using torch only
for scalar arithmetic so that autograd gives reference gradients too. They share no code with
``cgpo.optimizers``. Random batches mix signed rewards, many ties (rewards drawn from a small grid),
all three verdicts, log-ratios on both sides of KL_max, K = 1 and missing baseline tensors.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from cgpo.optimizers.base import PolicyBatch
from cgpo.optimizers.codpo import CODPO
from cgpo.optimizers.crpg import CRPG
from cgpo.optimizers.crraft import CRRAFT
from cgpo.optimizers.online_dpo import OnlineDPO
from cgpo.optimizers.raft import RAFT
from cgpo.optimizers.reinforce import Reinforce

SEEDS = range(50)


def random_batch(rng: random.Random) -> PolicyBatch:
    B, K = rng.randint(1, 4), rng.choice([1, 2, 3, 5])
    grid = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0]  # few values: ties are common

    def matrix(draw):
        return [[draw() for _ in range(K)] for _ in range(B)]

    rewards = matrix(lambda: rng.choice(grid) if rng.random() < 0.5 else rng.gauss(0, 2))
    r_bar = [rng.gauss(0, 1) for _ in range(B)]
    calibrated = [[1 / (1 + math.exp(-(r - r_bar[b]))) for r in row] for b, row in enumerate(rewards)]
    verdict_mix = rng.choice([(1, 0, -1), (1, 1, 0), (0, 0, -1), (1, 1, 1), (1, -1, -1)])
    verdicts = matrix(lambda: rng.choice(verdict_mix))
    logps = matrix(lambda: -rng.uniform(0.1, 30.0))
    ell = matrix(lambda: rng.gauss(0.5, 2.0))
    lengths = matrix(lambda: rng.randint(1, 40))
    has_baseline = rng.random() < 0.7
    lp = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    old = lp.detach().clone()
    return PolicyBatch(
        logps=lp,
        old_logps=old,
        ref_logps=old - torch.tensor(ell, dtype=torch.float64),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        calibrated_rewards=torch.tensor(calibrated, dtype=torch.float64),
        verdicts=torch.tensor(verdicts, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        kl_threshold=rng.choice([None, 0.5, 1.0, 3.0]),
        baseline_logps=torch.tensor([-rng.uniform(1, 20) for _ in range(B)], dtype=torch.float64, requires_grad=True)
        if has_baseline
        else None,
        baseline_ref_logps=torch.tensor([-rng.uniform(1, 20) for _ in range(B)], dtype=torch.float64)
        if has_baseline
        else None,
        baseline_verdicts=torch.tensor([rng.choice([1, 0, -1]) for _ in range(B)], dtype=torch.int64)
        if has_baseline
        else None,
    )


def clone(batch: PolicyBatch) -> PolicyBatch:
    """The same values with fresh leaf tensors, so the reference and the implementation get separate grads."""
    fields = dict(batch.__dict__)
    fields["logps"] = batch.logps.detach().clone().requires_grad_(True)
    if batch.baseline_logps is not None:
        fields["baseline_logps"] = batch.baseline_logps.detach().clone().requires_grad_(True)
    return PolicyBatch(**fields)


def cell(t, b, k):
    return float(t[b][k])


# --- references ---------------------------------------------------------------------------------------------


def ref_crpg(batch, kl_factor_max, normalize):
    B, K = batch.logps.shape
    ks = [(b, k) for b in range(B) for k in range(K) if int(batch.verdicts[b][k]) != -1]
    if not ks:
        return batch.logps.sum() * 0
    r_tilde = {}
    for b, k in ks:
        ell = cell(batch.old_logps, b, k) - cell(batch.ref_logps, b, k)
        factor = 1.0 if batch.kl_threshold is None else max(1.0 - ell / batch.kl_threshold, 0.0)
        if kl_factor_max is not None:
            factor = min(factor, kl_factor_max)
        r_cr = cell(batch.calibrated_rewards, b, k) if int(batch.verdicts[b][k]) == 1 else 0.0
        r_tilde[b, k] = factor * r_cr
    mean = sum(r_tilde.values()) / len(ks)
    total = sum((r_tilde[b, k] - mean) * batch.logps[b, k] for b, k in ks)
    denom = len(ks) if normalize == "sample" else sum(int(batch.lengths[b][k]) for b, k in ks)
    return -total / denom


def best_index(batch, b, allowed, key, larger=True):
    best = None
    for k in range(batch.logps.shape[1]):
        if not allowed(k):
            continue
        if best is None or (key(k) > key(best) if larger else key(k) < key(best)):
            best = k
    return best


def ref_crraft(batch, fallback_requires_kl, fallback_weight):
    B, _ = batch.logps.shape
    terms = []
    for b in range(B):

        def eligible(k, b=b):
            ell = cell(batch.old_logps, b, k) - cell(batch.ref_logps, b, k)
            within = batch.kl_threshold is None or ell <= batch.kl_threshold
            return int(batch.verdicts[b][k]) == 1 and within

        k = best_index(batch, b, eligible, lambda k, b=b: cell(batch.rewards, b, k))
        if k is not None:
            terms.append(cell(batch.calibrated_rewards, b, k) * batch.logps[b, k])
            continue
        if batch.baseline_logps is None or int(batch.baseline_verdicts[b]) != 1:
            continue
        bar_ell = batch.baseline_logps[b].item() - batch.baseline_ref_logps[b].item()
        if fallback_requires_kl and batch.kl_threshold is not None and bar_ell > batch.kl_threshold:
            continue
        terms.append(fallback_weight * batch.baseline_logps[b])
    if not terms:
        return batch.logps.sum() * 0
    return -sum(terms) / len(terms)


def dpo_term(batch, b, pos, neg, beta):
    logit = beta * (
        (batch.logps[b, pos] - cell(batch.ref_logps, b, pos)) - (batch.logps[b, neg] - cell(batch.ref_logps, b, neg))
    )
    return F.logsigmoid(logit)


def ref_codpo(batch, beta, lam):
    B, _ = batch.logps.shape
    terms = []
    for b in range(B):
        v = [int(x) for x in batch.verdicts[b]]
        reward = lambda k, b=b: cell(batch.rewards, b, k)  # noqa: E731
        pos = best_index(batch, b, lambda k, v=v: v[k] == 1, reward)
        if pos is None:
            continue
        neg = best_index(batch, b, lambda k, v=v: v[k] == 0, reward, larger=False)
        if neg is None:
            neg = best_index(batch, b, lambda k, v=v: v[k] != -1, reward, larger=False)
        if neg == pos:
            continue
        terms.append(dpo_term(batch, b, pos, neg, beta) + lam * batch.logps[b, pos] / int(batch.lengths[b][pos]))
    if not terms:
        return batch.logps.sum() * 0
    return -sum(terms) / len(terms)


def ref_raft(batch, kl_beta, normalize):
    B, _ = batch.logps.shape
    chosen = []
    for b in range(B):

        def score(k, b=b):
            return cell(batch.rewards, b, k) - kl_beta * (cell(batch.old_logps, b, k) - cell(batch.ref_logps, b, k))

        k = best_index(batch, b, lambda k, b=b: int(batch.verdicts[b][k]) != -1, score)
        if k is not None:
            chosen.append((b, k))
    if not chosen:
        return batch.logps.sum() * 0
    denom = len(chosen) if normalize == "sample" else sum(int(batch.lengths[b][k]) for b, k in chosen)
    return -sum(batch.logps[b, k] for b, k in chosen) / denom


def ref_online_dpo(batch, beta):
    B, _ = batch.logps.shape
    terms = []
    for b in range(B):
        valid = lambda k, b=b: int(batch.verdicts[b][k]) != -1  # noqa: E731
        reward = lambda k, b=b: cell(batch.rewards, b, k)  # noqa: E731
        pos = best_index(batch, b, valid, reward)
        neg = best_index(batch, b, valid, reward, larger=False)
        if pos is not None and pos != neg:
            terms.append(dpo_term(batch, b, pos, neg, beta))
    if not terms:
        return batch.logps.sum() * 0
    return -sum(terms) / len(terms)


def ref_reinforce(batch, beta, reward, baseline, normalize):
    B, K = batch.logps.shape
    source = batch.rewards if reward == "raw" else batch.calibrated_rewards
    R = {}
    for b in range(B):
        for k in range(K):
            if int(batch.verdicts[b][k]) != -1:
                R[b, k] = cell(source, b, k) - beta * (cell(batch.old_logps, b, k) - cell(batch.ref_logps, b, k))
    if not R:
        return batch.logps.sum() * 0
    total = 0.0
    for (b, k), value in R.items():
        if baseline == "mean":
            base = sum(R.values()) / len(R)
        else:
            others = [R[b, j] for j in range(K) if j != k and (b, j) in R]
            base = sum(others) / len(others) if others else value
        total = total + (value - base) * batch.logps[b, k]
    denom = len(R) if normalize == "sample" else sum(int(batch.lengths[b][k]) for b, k in R)
    return -total / denom


# --- the comparison -----------------------------------------------------------------------------------------


def random_case(rng: random.Random):
    """(implementation, reference) pairs with randomly drawn hyperparameters."""
    kl_factor_max, normalize = rng.choice([None, 1.0]), rng.choice(["sample", "token"])
    requires_kl, weight = rng.random() < 0.5, rng.choice([0.5, 1.0])
    beta, lam = rng.choice([0.05, 0.1, 1.0]), rng.choice([0.0, 5.0])
    kl_beta, rl_beta = rng.choice([0.0, 0.3]), rng.choice([0.0, 0.05])
    reward, baseline = rng.choice(["raw", "calibrated"]), rng.choice(["rloo", "mean"])
    return [
        (CRPG(kl_factor_max=kl_factor_max, normalize=normalize), lambda b: ref_crpg(b, kl_factor_max, normalize)),
        (
            CRRAFT(fallback_requires_kl=requires_kl, fallback_weight=weight),
            lambda b: ref_crraft(b, requires_kl, weight),
        ),
        (CODPO(beta=beta, lam=lam), lambda b: ref_codpo(b, beta, lam)),
        (RAFT(kl_beta=kl_beta, normalize=normalize), lambda b: ref_raft(b, kl_beta, normalize)),
        (OnlineDPO(beta=beta), lambda b: ref_online_dpo(b, beta)),
        (
            Reinforce(beta=rl_beta, reward=reward, baseline=baseline, normalize=normalize),
            lambda b: ref_reinforce(b, rl_beta, reward, baseline, normalize),
        ),
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_optimizers_agree_with_the_loop_reference(seed):
    rng = random.Random(seed)
    batch = random_batch(rng)
    for optimizer, reference in random_case(rng):
        mine, theirs = clone(batch), clone(batch)
        out = optimizer.loss(mine)
        expected = reference(theirs)
        name = type(optimizer).__name__
        assert torch.isfinite(out.loss), name
        torch.testing.assert_close(out.loss, expected, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
        out.loss.backward()
        expected.backward()
        assert mine.logps.grad is not None, f"{name}: the loss must reach logps (DDP)"
        torch.testing.assert_close(mine.logps.grad, grad_or_zero(theirs.logps), rtol=1e-9, atol=1e-12)
        if batch.baseline_logps is not None:
            torch.testing.assert_close(grad_or_zero(mine.baseline_logps), grad_or_zero(theirs.baseline_logps))


def grad_or_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(t) if t.grad is None else t.grad


def test_random_batches_cover_the_interesting_cases():
    """The 50 seeds exercise ties, K = 1, fallbacks and empty prompts, or the agreement test proves little."""
    seen = {"k1": 0, "tie": 0, "fallback": 0, "codpo_skip": 0, "codpo_kept": 0, "all_skipped": 0}
    for seed in SEEDS:
        rng = random.Random(seed)
        batch = random_batch(rng)
        cases = random_case(rng)
        seen["k1"] += batch.num_samples == 1
        seen["tie"] += any(len(set(row.tolist())) < len(row) for row in batch.rewards)
        crraft = cases[1][0].loss(clone(batch)).stats
        codpo = cases[2][0].loss(clone(batch)).stats
        seen["fallback"] += crraft["fallback_prompts"] > 0
        seen["codpo_skip"] += codpo["skipped_prompts"] > 0
        seen["codpo_kept"] += codpo["kept_prompts"] > 0
        seen["all_skipped"] += crraft["kept_prompts"] == 0
    assert all(count >= 3 for count in seen.values()), seen
