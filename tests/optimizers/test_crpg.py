"""CRPG (eqs. 10-12): hand-computed values, gradient directions, edge cases."""

from __future__ import annotations

import pytest
import torch

from cgpo.optimizers.crpg import CRPG
from cgpo.optimizers.reinforce import Reinforce
from cgpo.schema import SchemaError

# Two prompts, three samples. KL_max = 2, so the KL factors max{1 - ell/2, 0} are
# [[0.75, 0.5, 0.0], [1.5, 1.0, 1.0]] (1.5 for a negative log-ratio: not clipped by default).
HAND = {
    "logps": [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]],
    "ell": [[0.5, 1.0, 3.0], [-1.0, 0.0, 0.0]],
    "calibrated": [[0.8, 0.6, 0.9], [0.4, 0.7, 0.2]],
    "verdicts": [[1, 0, 1], [1, -1, 1]],
    "lengths": [[2, 4, 1], [3, 5, 5]],
    "kl_threshold": 2.0,
}
# R~ over the 5 non-excluded samples: 0.8*0.75=0.6, 0 (violates), 0.9*0 = 0 (beyond KL_max), 0.4*1.5=0.6, 0.2*1
# -> mean 1.4/5 = 0.28; advantages 0.32, -0.28, -0.28, 0.32, -0.08;
# sum adv*logp = -0.32 + 0.56 + 0.84 - 1.28 + 0.48 = 0.28.
HAND_ADVANTAGE = [[0.32, -0.28, -0.28], [0.32, 0.0, -0.08]]


def test_loss_matches_hand_computation(make_batch):
    batch = make_batch(**HAND)
    out = CRPG().loss(batch)
    assert out.loss.item() == pytest.approx(-0.28 / 5)
    out.loss.backward()
    expected_grad = -torch.tensor(HAND_ADVANTAGE, dtype=torch.float64) / 5
    torch.testing.assert_close(batch.logps.grad, expected_grad)
    assert out.stats["kept_samples"] == 5
    assert out.stats["excluded_samples"] == 1
    assert out.stats["kl_factor_mean"] == pytest.approx((0.75 + 0.5 + 0 + 1.5 + 1) / 5)
    assert out.stats["kl_factor_zero_frac"] == pytest.approx(1 / 5)
    assert out.stats["reward_mean"] == pytest.approx(0.28)
    assert out.stats["mean_advantage"] == pytest.approx(0.0, abs=1e-12)


def test_token_normalization_divides_by_completion_tokens(make_batch):
    out = CRPG(normalize="token").loss(make_batch(**HAND))
    # Non-excluded lengths: 2 + 4 + 1 + 3 + 5 = 15.
    assert out.loss.item() == pytest.approx(-0.28 / 15)


def test_kl_factor_max_clips_factors_above_one(make_batch):
    out = CRPG(kl_factor_max=1.0).loss(make_batch(**HAND))
    # Factor 1.5 -> 1: R~ = 0.6, 0, 0, 0.4, 0.2, mean 0.24; advantages 0.36, -0.24, -0.24, 0.16, -0.04;
    # sum adv*logp = -0.36 + 0.48 + 0.72 - 0.64 + 0.24 = 0.44.
    assert out.loss.item() == pytest.approx(-0.44 / 5)
    assert out.stats["kl_factor_mean"] == pytest.approx((0.75 + 0.5 + 0 + 1 + 1) / 5)


def test_violating_sample_is_pushed_down_when_batch_mean_is_positive(make_batch):
    batch = make_batch(
        logps=[[-2.0, -2.0, -2.0]], calibrated=[[0.9, 0.7, 0.99]], verdicts=[[1, 1, 0]], kl_threshold=10.0
    )
    out = CRPG().loss(batch)
    out.loss.backward()
    # The violator's advantage is -mean(R~) < 0: gradient descent lowers its log-likelihood...
    assert batch.logps.grad[0, 2] > 0
    # ...even though its calibrated reward is the highest of the three.
    assert batch.logps.grad[0, 0] < 0
    # One SGD step on the log-probs themselves moves them the expected way.
    stepped = batch.logps.detach() - 0.1 * batch.logps.grad
    assert stepped[0, 2] < -2.0 < stepped[0, 0]


def test_kl_factor_uses_old_logps_under_stop_gradient(make_batch):
    batch = make_batch(logps=[[-1.0, -3.0]], calibrated=[[1.0, 0.5]], verdicts=[[1, 1]], kl_threshold=2.0)
    batch.old_logps = batch.old_logps + 1.0  # ell = old - ref = 1 for both samples, whatever logps are
    out = CRPG().loss(batch)
    assert out.stats["kl_factor_mean"] == pytest.approx(0.5)
    out.loss.backward()
    # R~ = 0.5 and 0.25, mean 0.375, advantages +-0.125; the factor carries no gradient, so d loss / d logp
    # is exactly -advantage / n.
    torch.testing.assert_close(batch.logps.grad, torch.tensor([[-0.0625, 0.0625]], dtype=torch.float64))


def test_no_kl_threshold_means_factor_one(make_batch):
    out = CRPG().loss(
        make_batch(logps=[[-1.0, -2.0]], ell=[[50.0, -50.0]], calibrated=[[0.5, 0.5]], verdicts=[[1, 1]])
    )
    assert out.stats["kl_factor_mean"] == 1.0


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("K=1, one prompt", {"logps": [[-3.0]], "calibrated": [[0.9]], "verdicts": [[1]], "kl_threshold": 1.0}),
        ("every sample violates", {"logps": [[-1.0, -2.0], [-3.0, -4.0]], "calibrated": [[0.9, 0.1], [0.5, 0.7]], "verdicts": [[0, 0], [0, 0]], "kl_threshold": 1.0}),
        ("all excluded", {"logps": [[-1.0, -2.0]], "calibrated": [[0.9, 0.1]], "verdicts": [[-1, -1]], "kl_threshold": 1.0}),
        ("ties: all satisfy, equal rewards", {"logps": [[-1.0, -2.0, -7.0]], "calibrated": [[0.6, 0.6, 0.6]], "verdicts": [[1, 1, 1]], "kl_threshold": 1.0}),
        ("nothing left after the KL filter", {"logps": [[-1.0, -2.0]], "ell": [[5.0, 9.0]], "calibrated": [[0.9, 0.3]], "verdicts": [[1, 1]], "kl_threshold": 1.0}),
    ],
)  # fmt: skip
def test_edge_cases_give_a_finite_zero_loss(make_batch, finite_zero, case, kwargs):
    batch = make_batch(**kwargs)
    finite_zero(CRPG().loss(batch), batch)


def test_every_sample_satisfies_is_plain_reinforce_on_calibrated_reward(make_batch):
    # No judges (all verdicts 1) and no KL threshold: CRPG == REINFORCE(calibrated, batch mean, no KL penalty).
    kwargs = {
        "logps": [[-1.0, -2.5], [-0.5, -4.0]],
        "calibrated": [[0.9, 0.2], [0.4, 0.6]],
        "verdicts": [[1, 1], [1, 1]],
    }
    crpg = CRPG().loss(make_batch(**kwargs)).loss
    reinforce = Reinforce(reward="calibrated", baseline="mean", beta=0.0).loss(make_batch(**kwargs)).loss
    assert torch.isfinite(crpg)
    torch.testing.assert_close(crpg, reinforce)
    # Mean 0.525; advantages 0.375, -0.325, -0.125, 0.075.
    assert crpg.item() == pytest.approx(-(0.375 * -1 + -0.325 * -2.5 + -0.125 * -0.5 + 0.075 * -4) / 4)


def test_excluded_samples_may_carry_nan_rewards(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0]], rewards=[[0.0, float("nan")]], calibrated=[[0.7, float("nan")]], verdicts=[[1, -1]]
    )
    out = CRPG().loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(batch.logps.grad).all()


def test_nan_reward_on_a_used_sample_is_an_error(make_batch):
    with pytest.raises(ValueError, match="non-finite"):
        CRPG().loss(make_batch(logps=[[-1.0]], rewards=[[float("nan")]], calibrated=[[0.5]], verdicts=[[1]]))


def test_params_are_validated():
    with pytest.raises(SchemaError, match="kl_factor_max"):
        CRPG.parse_params({"kl_factor_max": 0})
    with pytest.raises(SchemaError, match="normalize"):
        CRPG.parse_params({"normalize": "batch"})
    assert CRPG.parse_params({"kl_factor_max": 1, "normalize": "token"}).kl_factor_max == 1.0
