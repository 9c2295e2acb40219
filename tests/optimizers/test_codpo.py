"""CODPO (eqs. 13-15): pair selection with signed rewards, hand-computed values, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from cgpo.optimizers.codpo import CODPO
from cgpo.optimizers.online_dpo import OnlineDPO
from cgpo.schema import SchemaError


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def codpo_value(lp_pos, ref_pos, lp_neg, ref_neg, len_pos, beta=0.1, lam=5.0):
    return logsigmoid(beta * ((lp_pos - ref_pos) - (lp_neg - ref_neg))) + lam * lp_pos / len_pos


def grad_rows(batch):
    return {(b, k) for b, k in (batch.logps.grad != 0).nonzero().tolist()}


def test_all_negative_rewards_pick_the_right_pair(make_batch):
    # Satisfying samples all have negative rewards. Multiplying by the 0/1 verdict (TRL #2190) would make
    # argmax(j * r) pick sample 2 (a violator, masked to 0) as "chosen"; masking with -inf picks sample 1.
    batch = make_batch(
        logps=[[-3.0, -2.0, -4.0, -6.0]],
        ell=[[0.1, 0.2, 0.3, 0.4]],
        rewards=[[-3.0, -1.0, -2.0, -5.0]],
        verdicts=[[1, 1, 0, 0]],
        lengths=[[3, 4, 5, 6]],
    )
    out = CODPO().loss(batch)
    out.loss.backward()
    assert grad_rows(batch) == {(0, 1), (0, 3)}  # chosen 1 (best satisfying), rejected 3 (worst violating)
    expected = -codpo_value(-2.0, -2.2, -6.0, -6.4, 4)
    assert out.loss.item() == pytest.approx(expected)
    assert out.stats["reward_margin_mean"] == pytest.approx(4.0)


def test_all_positive_rewards_pick_the_right_rejected(make_batch):
    # argmin((1 - j) * r) (TRL #2190) would reject sample 0, a satisfying one; +inf masking rejects sample 2.
    batch = make_batch(logps=[[-1.0, -2.0, -3.0, -4.0]], rewards=[[1.0, 2.0, 3.0, 4.0]], verdicts=[[1, 1, 0, 0]])
    CODPO().loss(batch).loss.backward()
    assert grad_rows(batch) == {(0, 1), (0, 2)}


def test_loss_and_gradient_match_hand_computation(make_batch):
    batch = make_batch(
        logps=[[-2.0, -1.0, -3.0], [-4.0, -5.0, -6.0]],
        ell=[[0.5, -0.5, 1.0], [0.0, 2.0, -1.0]],
        rewards=[[0.2, 0.1, 0.9], [1.0, -1.0, 0.0]],
        verdicts=[[1, 0, 0], [1, 1, 1]],
        lengths=[[4, 2, 2], [2, 5, 8]],
    )
    out = CODPO(beta=0.5, lam=2.0).loss(batch)
    # Prompt 0: chosen 0, rejected 1 (r 0.1 < 0.9 among violators). Prompt 1: no violator -> rejected is
    # the lowest reward, sample 1; chosen 0.
    v0 = codpo_value(-2.0, -2.5, -1.0, -0.5, 4, beta=0.5, lam=2.0)
    v1 = codpo_value(-4.0, -4.0, -5.0, -7.0, 2, beta=0.5, lam=2.0)
    assert out.loss.item() == pytest.approx(-(v0 + v1) / 2)
    out.loss.backward()
    # d/d lp+ of -(logsigmoid(z) + lam lp+/|a+|) / n = -(beta sigmoid(-z) + lam/|a+|) / n; d/d lp- = beta sigmoid(-z) / n.
    z0, z1 = 0.5 * (0.5 - (-0.5)), 0.5 * (0.0 - 2.0)
    s0, s1 = 1 / (1 + math.exp(z0)), 1 / (1 + math.exp(z1))
    expected = torch.tensor(
        [[-(0.5 * s0 + 2.0 / 4) / 2, 0.5 * s0 / 2, 0.0], [-(0.5 * s1 + 2.0 / 2) / 2, 0.5 * s1 / 2, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(batch.logps.grad, expected)
    assert out.stats["no_negative_prompts"] == 1
    assert out.stats["kept_prompts"] == 2


def test_sign_increases_the_chosen_likelihood(make_batch):
    batch = make_batch(logps=[[-2.0, -2.0]], rewards=[[1.0, 0.0]], verdicts=[[1, 0]], lengths=[[3, 3]])
    CODPO().loss(batch).loss.backward()
    assert batch.logps.grad[0, 0] < 0 < batch.logps.grad[0, 1]  # descent raises a+ and lowers a-


def test_excluded_samples_are_never_chosen_or_rejected(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0, -4.0]],
        rewards=[[0.5, 9.0, 0.1, -9.0]],
        verdicts=[[1, -1, 1, -1]],
        lengths=[[1, 1, 1, 1]],
    )
    CODPO().loss(batch).loss.backward()
    assert grad_rows(batch) == {(0, 0), (0, 2)}


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("K=1", {"logps": [[-3.0]], "rewards": [[1.0]], "verdicts": [[1]]}),
        ("every sample violates", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[0, 0]]}),
        ("all excluded", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[-1, -1]]}),
        ("ties: all satisfy, equal rewards", {"logps": [[-1.0, -2.0, -3.0]], "rewards": [[0.4, 0.4, 0.4]], "verdicts": [[1, 1, 1]]}),
        ("one satisfying sample, the rest excluded", {"logps": [[-1.0, -2.0]], "rewards": [[0.4, 0.1]], "verdicts": [[1, -1]]}),
    ],
)  # fmt: skip
def test_edge_cases_give_a_finite_zero_loss(make_batch, finite_zero, case, kwargs):
    batch = make_batch(**kwargs)
    out = CODPO().loss(batch)
    assert out.stats["kept_prompts"] == 0
    assert out.stats["skipped_prompts"] == 1
    finite_zero(out, batch)


def test_every_sample_satisfies_uses_best_and_worst(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0]], rewards=[[0.5, 0.1, 0.9]], verdicts=[[1, 1, 1]], lengths=[[2, 2, 2]]
    )
    out = CODPO().loss(batch)
    out.loss.backward()
    assert grad_rows(batch) == {(0, 2), (0, 1)}
    assert out.loss.item() == pytest.approx(-codpo_value(-3.0, -3.0, -2.0, -2.0, 2))


def test_no_judges_and_lam_zero_is_online_dpo(make_batch):
    kwargs = {"logps": [[-1.0, -2.0, -3.0], [-2.0, -0.5, -1.0]], "ell": [[0.3, -0.2, 0.1], [0.0, 1.0, 2.0]], "rewards": [[-0.5, -0.1, -0.9], [2.0, 1.0, 3.0]], "verdicts": [[1, 1, 1], [1, 1, 1]]}  # fmt: skip
    codpo = CODPO(beta=0.2, lam=0.0).loss(make_batch(**kwargs)).loss
    dpo = OnlineDPO(beta=0.2).loss(make_batch(**kwargs)).loss
    torch.testing.assert_close(codpo, dpo)


def test_excluded_sample_with_zero_length_and_nan_reward_does_not_poison_the_gradient(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0], [-1.0, -2.0]],
        rewards=[[float("nan"), float("nan")], [1.0, 0.0]],
        calibrated=[[float("nan"), float("nan")], [0.7, 0.5]],
        verdicts=[[-1, -1], [1, 0]],
        lengths=[[0, 0], [2, 2]],
    )
    out = CODPO().loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(batch.logps.grad).all()
    assert batch.logps.grad[0].tolist() == [0.0, 0.0]


def test_params_are_validated():
    assert CODPO.parse_params({}) == CODPO.Params(beta=0.1, lam=5.0)
    with pytest.raises(SchemaError, match="beta"):
        CODPO.parse_params({"beta": 0})
    with pytest.raises(SchemaError, match="lam"):
        CODPO.parse_params({"lam": -1})
    assert CODPO.min_samples == 2
