"""CRRAFT (eqs. 16-18): hand-computed values, the fallback, violators ignored, edge cases."""

from __future__ import annotations

import pytest
import torch

from cgpo.optimizers.crraft import CRRAFT
from cgpo.optimizers.raft import RAFT
from cgpo.schema import SchemaError

# Four prompts, four samples, KL_max = 1.
HAND = {
    "logps": [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0], [-1.5, -2.5, -3.5, -4.5], [-1.0, -1.0, -1.0, -1.0]],
    # Prompt 0: every reward is negative; the excluded sample has the highest raw reward and must not win.
    # Prompt 1: every sample violates -> fallback to a_bar (which passes).
    # Prompt 2: the highest-reward satisfying sample exceeds KL_max -> the next one wins.
    # Prompt 3: every sample violates and a_bar violates too -> skipped.
    "rewards": [[-3.0, -1.0, -2.0, 5.0], [1.0, 2.0, 0.0, 0.5], [0.3, 0.9, 0.1, 0.0], [1.0, 2.0, 3.0, 4.0]],
    "calibrated": [[0.3, 0.4, 0.35, 0.99], [0.6, 0.7, 0.5, 0.55], [0.55, 0.8, 0.52, 0.5], [0.6, 0.7, 0.8, 0.9]],
    "verdicts": [[1, 1, 0, -1], [0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]],
    "ell": [[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 5.0, -1.0, 0.2], [0.0, 0.0, 0.0, 0.0]],
    "kl_threshold": 1.0,
    "baseline_logps": [-10.0, -20.0, -30.0, -40.0],
    "baseline_ref_logps": [-10.0, -20.0, -30.0, -40.0],
    "baseline_verdicts": [1, 1, 1, 0],
}
# Kept: prompt 0 sample 1 (0.4 * -2), prompt 1 a_bar (0.5 * -20), prompt 2 sample 2 (0.52 * -3.5); n = 3.
HAND_LOSS = -(0.4 * -2.0 + 0.5 * -20.0 + 0.52 * -3.5) / 3


def test_loss_matches_hand_computation(make_batch):
    batch = make_batch(**HAND)
    out = CRRAFT().loss(batch)
    assert out.loss.item() == pytest.approx(HAND_LOSS)
    out.loss.backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[0, 1], expected[2, 2] = -0.4 / 3, -0.52 / 3
    torch.testing.assert_close(batch.logps.grad, expected)
    torch.testing.assert_close(batch.baseline_logps.grad, torch.tensor([0.0, -0.5 / 3, 0.0, 0.0], dtype=torch.float64))
    assert out.stats["kept_prompts"] == 3
    assert out.stats["skipped_prompts"] == 1
    assert out.stats["fallback_prompts"] == 1
    assert out.stats["kl_filtered_samples"] == 1


def test_violators_get_no_gradient(make_batch):
    batch = make_batch(**HAND)
    CRRAFT().loss(batch).loss.backward()
    violators = batch.verdicts == 0
    assert torch.count_nonzero(batch.logps.grad[violators]) == 0
    # Only one sample per prompt is ever trained on.
    assert int((batch.logps.grad != 0).sum(dim=1).max()) <= 1


def test_fallback_requires_kl_is_off_by_default_and_works_when_on(make_batch):
    kwargs = dict(HAND, baseline_ref_logps=[-10.0, -25.0, -30.0, -40.0])  # ell(a_bar) of prompt 1 = 5 > KL_max
    assert CRRAFT().loss(make_batch(**kwargs)).loss.item() == pytest.approx(HAND_LOSS)
    out = CRRAFT(fallback_requires_kl=True).loss(make_batch(**kwargs))
    assert out.stats["fallback_prompts"] == 0
    assert out.loss.item() == pytest.approx(-(0.4 * -2.0 + 0.52 * -3.5) / 2)


def test_fallback_requires_kl_needs_the_reference_logps(make_batch):
    with pytest.raises(ValueError, match="baseline_ref_logps"):
        CRRAFT(fallback_requires_kl=True).loss(make_batch(**dict(HAND, baseline_ref_logps=None)))


def test_without_baseline_tensors_the_prompt_is_skipped(make_batch):
    kwargs = dict(HAND, baseline_logps=None, baseline_ref_logps=None, baseline_verdicts=None)
    out = CRRAFT().loss(make_batch(**kwargs))
    assert out.stats["fallback_prompts"] == 0
    assert out.loss.item() == pytest.approx(-(0.4 * -2.0 + 0.52 * -3.5) / 2)


def test_fallback_weight_param(make_batch):
    out = CRRAFT(fallback_weight=1.0).loss(make_batch(**HAND))
    assert out.loss.item() == pytest.approx(-(0.4 * -2.0 + 1.0 * -20.0 + 0.52 * -3.5) / 3)


def test_ties_go_to_the_lowest_index(make_batch):
    batch = make_batch(
        logps=[[-1.0, -2.0, -3.0]], rewards=[[0.5, 0.5, 0.5]], calibrated=[[0.6, 0.6, 0.6]], verdicts=[[1, 1, 1]]
    )
    out = CRRAFT().loss(batch)
    assert out.loss.item() == pytest.approx(0.6)
    out.loss.backward()
    assert batch.logps.grad[0].tolist() == [-0.6, 0.0, 0.0]


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("K=1 violating", {"logps": [[-3.0]], "rewards": [[1.0]], "verdicts": [[0]], "kl_threshold": 1.0}),
        ("every sample violates, no a_bar", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[0, 0]], "kl_threshold": 1.0}),
        ("every sample violates, a_bar violates", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[0, 0]], "kl_threshold": 1.0, "baseline_logps": [-4.0], "baseline_verdicts": [0]}),
        ("every sample violates, a_bar judge failed", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[0, 0]], "kl_threshold": 1.0, "baseline_logps": [-4.0], "baseline_verdicts": [-1]}),
        ("all excluded", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[-1, -1]], "kl_threshold": 1.0}),
        ("nothing left after the KL filter", {"logps": [[-1.0, -2.0]], "rewards": [[1.0, 2.0]], "verdicts": [[1, 1]], "ell": [[1.5, 3.0]], "kl_threshold": 1.0}),
    ],
)  # fmt: skip
def test_edge_cases_give_a_finite_zero_loss(make_batch, finite_zero, case, kwargs):
    batch = make_batch(**kwargs)
    out = CRRAFT().loss(batch)
    assert out.stats["kept_prompts"] == 0
    finite_zero(out, batch)
    if batch.baseline_logps is not None:
        assert batch.baseline_logps.grad is not None and batch.baseline_logps.grad.item() == 0.0


def test_k1_satisfying_sample_is_kept(make_batch):
    out = CRRAFT().loss(
        make_batch(logps=[[-3.0]], rewards=[[-7.0]], calibrated=[[0.25]], verdicts=[[1]], kl_threshold=1.0)
    )
    assert out.loss.item() == pytest.approx(0.75)


def test_every_sample_satisfies_reduces_to_raft(make_batch):
    # No judges, no KL threshold, calibrated reward 1 everywhere (a judge-only task): CRRAFT == RAFT.
    kwargs = {"logps": [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], "rewards": [[-1.0, -0.5, -2.0], [3.0, 1.0, 3.5]], "calibrated": [[1.0] * 3] * 2, "verdicts": [[1, 1, 1], [1, 1, 1]]}  # fmt: skip
    crraft = CRRAFT().loss(make_batch(**kwargs)).loss
    raft = RAFT().loss(make_batch(**kwargs)).loss
    torch.testing.assert_close(crraft, raft)
    assert crraft.item() == pytest.approx((2.0 + 6.0) / 2)


def test_params_are_validated():
    with pytest.raises(SchemaError, match="fallback_weight"):
        CRRAFT.parse_params({"fallback_weight": 1.5})
    with pytest.raises(SchemaError, match="unknown key"):
        CRRAFT.parse_params({"fallback_requires_KL": True})


def test_backward_reaches_baseline_logps_even_without_a_fallback(make_batch):
    # Every DDP rank must differentiate the same tensors, whichever prompts fell back.
    batch = make_batch(logps=[[-1.0, -2.0]], rewards=[[1.0, 0.0]], verdicts=[[1, 1]], baseline_logps=[float("nan")], baseline_verdicts=[1])  # fmt: skip
    out = CRRAFT().loss(batch)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-torch.sigmoid(torch.tensor(1.0)).item() * -1.0)
    assert batch.baseline_logps.grad is not None
    assert batch.baseline_logps.grad.tolist() == [0.0]
