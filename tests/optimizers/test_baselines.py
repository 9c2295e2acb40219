"""The unconstrained baselines: RAFT, online DPO, REINFORCE/RLOO with a KL penalty; and the registry."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from cgpo.optimizers import OPTIMIZERS
from cgpo.optimizers.online_dpo import OnlineDPO
from cgpo.optimizers.raft import RAFT
from cgpo.optimizers.reinforce import Reinforce
from cgpo.schema import SchemaError

# --- RAFT ---------------------------------------------------------------------------------------------------


def test_raft_is_sft_on_the_best_sample_ignoring_violations(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]],
        rewards=[[-3.0, -1.0, -2.0], [7.0, 1.0, 9.0]],
        verdicts=[[1, 0, 1], [1, 1, -1]],  # a violator can win (unconstrained); an excluded one cannot
        lengths=[[1, 4, 1], [2, 1, 1]],
    )
    out = RAFT().loss(batch)
    assert out.loss.item() == pytest.approx((2.0 + 4.0) / 2)
    out.loss.backward()
    assert batch.logps.grad.tolist() == [[0.0, -0.5, 0.0], [-0.5, 0.0, 0.0]]
    assert RAFT(normalize="token").loss(make_batch(**_raft_kwargs())).loss.item() == pytest.approx((2.0 + 4.0) / 6)


def _raft_kwargs():
    return {
        "logps": [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]],
        "rewards": [[-3.0, -1.0, -2.0], [7.0, 1.0, 9.0]],
        "verdicts": [[1, 0, 1], [1, 1, -1]],
        "lengths": [[1, 4, 1], [2, 1, 1]],
    }


def test_raft_kl_ranking_changes_only_the_winner(make_batch):
    # r - beta * ell: sample 0 (r 1.0, ell 0) beats sample 1 (r 1.5, ell 2) when beta = 0.5.
    kwargs = {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 1.5]], "ell": [[0.0, 2.0]], "verdicts": [[1, 1]]}
    assert RAFT().loss(make_batch(**kwargs)).loss.item() == pytest.approx(2.0)
    assert RAFT(kl_beta=0.5).loss(make_batch(**kwargs)).loss.item() == pytest.approx(1.0)


def test_raft_k1_is_sft_on_the_only_sample_and_all_excluded_is_zero(make_batch, finite_zero):
    assert RAFT().loss(make_batch(logps=[[-3.0]], verdicts=[[0]])).loss.item() == pytest.approx(3.0)
    batch = make_batch(logps=[[-1.0, -2.0]], verdicts=[[-1, -1]])
    finite_zero(RAFT().loss(batch), batch)


# --- online DPO ---------------------------------------------------------------------------------------------


def test_online_dpo_best_vs_worst_hand_value(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0]], ell=[[0.5, 0.0, -1.0]], rewards=[[-0.5, -2.0, -0.1]], verdicts=[[0, 1, 1]]
    )
    out = OnlineDPO(beta=0.5).loss(batch)
    # chosen 2 (r -0.1), rejected 1 (r -2.0): z = 0.5 * ((-1.0) - 0.0) = -0.5.
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(0.5)))
    out.loss.backward()
    assert batch.logps.grad[0, 0].item() == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"logps": [[-3.0]], "rewards": [[1.0]], "verdicts": [[1]]},
        {"logps": [[-1.0, -2.0]], "rewards": [[0.3, 0.3]], "verdicts": [[0, 1]]},
        {"logps": [[-1.0, -2.0]], "rewards": [[0.3, 0.1]], "verdicts": [[-1, -1]]},
        {"logps": [[-1.0, -2.0]], "rewards": [[0.3, 0.1]], "verdicts": [[1, -1]]},
    ],
    ids=["K=1", "ties", "all excluded", "one valid sample"],
)
def test_online_dpo_edge_cases_give_a_finite_zero_loss(make_batch, finite_zero, kwargs):
    batch = make_batch(**kwargs)
    finite_zero(OnlineDPO().loss(batch), batch)


# --- REINFORCE / RLOO ---------------------------------------------------------------------------------------


def test_reinforce_rloo_hand_value(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]],
        ell=[[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]],
        rewards=[[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]],
        verdicts=[[1, 0, 1], [1, -1, 1]],
    )
    out = Reinforce(beta=0.5, baseline="rloo").loss(batch)
    # Prompt 0: R = 0.5, 2.0, 2.0; leave-one-out baselines 2.0, 1.25, 1.25 -> A = -1.5, 0.75, 0.75.
    # Prompt 1: R = 5, -, 0 (sample 1 excluded); baselines 0, 5 -> A = 5, -5.
    terms = -1.5 * -1 + 0.75 * -2 + 0.75 * -3 + 5 * -4 + -5 * -6
    assert out.loss.item() == pytest.approx(-terms / 5)
    out.loss.backward()
    assert batch.logps.grad[1, 1].item() == 0.0


def test_reinforce_mean_baseline_and_calibrated_reward(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0], [-3.0, -4.0]], rewards=[[9.0, 9.0], [9.0, 9.0]], calibrated=[[0.2, 0.4], [0.6, 0.8]], verdicts=[[1, 1], [1, 1]], lengths=[[1, 2], [3, 4]]
    )  # fmt: skip
    out = Reinforce(beta=0.0, reward="calibrated", baseline="mean", normalize="token").loss(batch)
    # Mean 0.5 -> A = -0.3, -0.1, 0.1, 0.3; sum A*lp = 0.3 + 0.2 - 0.3 - 1.2 = -1.0; 10 tokens.
    assert out.loss.item() == pytest.approx(1.0 / 10)


@pytest.mark.parametrize("baseline", ["rloo", "mean"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"logps": [[-3.0]], "rewards": [[1.0]], "verdicts": [[1]]},
        {"logps": [[-1.0, -2.0]], "rewards": [[0.3, 0.3]], "verdicts": [[0, 1]]},
        {"logps": [[-1.0, -2.0]], "rewards": [[0.3, 0.1]], "verdicts": [[-1, -1]]},
    ],
    ids=["K=1", "ties", "all excluded"],
)
def test_reinforce_edge_cases_give_a_finite_zero_loss(make_batch, finite_zero, kwargs, baseline):
    batch = make_batch(**kwargs)
    finite_zero(Reinforce(baseline=baseline).loss(batch), batch)


# --- registry and params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "min_samples", "baseline_response", "kl"),
    [
        ("crpg", "cgpo", 1, False, True),
        ("crraft", "cgpo", 1, True, True),
        ("codpo", "cgpo", 2, False, False),
        ("raft", "baseline", 1, False, False),
        ("online_dpo", "baseline", 2, False, False),
        ("reinforce", "baseline", 1, False, False),
    ],
)
def test_registered_by_name_with_their_contract(name, kind, min_samples, baseline_response, kl):
    cls = OPTIMIZERS.get(name)
    assert cls.kind == kind
    assert cls.min_samples == min_samples
    assert cls.uses_baseline_response is baseline_response
    assert cls.uses_kl_threshold is kl
    assert cls.description
    cls(cls.parse_params({}))  # defaults are valid


def test_baseline_params_are_validated():
    with pytest.raises(SchemaError, match="kl_beta"):
        RAFT.parse_params({"kl_beta": -1})
    with pytest.raises(SchemaError, match="beta"):
        OnlineDPO.parse_params({"beta": 0})
    with pytest.raises(SchemaError, match="baseline"):
        Reinforce.parse_params({"baseline": "median"})
    with pytest.raises(SchemaError, match="reward"):
        Reinforce.parse_params({"reward": "calibrated_reward"})


def test_optimizer_modules_import_without_torch():
    code = (
        "import sys\n"
        "import cgpo.optimizers.crpg, cgpo.optimizers.crraft, cgpo.optimizers.codpo\n"
        "import cgpo.optimizers.raft, cgpo.optimizers.online_dpo, cgpo.optimizers.reinforce\n"
        "import cgpo.reward_functions, cgpo.calibration, cgpo.reward_models\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shape_mismatch_is_an_error(make_batch):
    batch = make_batch(logps=[[-1.0, -2.0]], verdicts=[[1, 1]])
    batch.rewards = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="rewards must have the shape"):
        RAFT().loss(batch)
    batch = make_batch(logps=[[-1.0, -2.0]], verdicts=[[1, 2]])
    with pytest.raises(ValueError, match="verdicts"):
        RAFT().loss(batch)
