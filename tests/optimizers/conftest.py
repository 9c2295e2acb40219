"""Builders of small PolicyBatch tensors for the optimizer tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cgpo.optimizers.base import LossOutput, PolicyBatch


def batch_from(
    *,
    logps,
    verdicts,
    rewards=None,
    calibrated=None,
    ell=None,
    lengths=None,
    kl_threshold=None,
    baseline_logps=None,
    baseline_ref_logps=None,
    baseline_verdicts=None,
    baseline_lengths=None,
) -> PolicyBatch:
    """A PolicyBatch from nested lists; ``ell`` sets ref_logps = old_logps - ell. logps carry gradients."""
    lp = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    shape = lp.shape
    old = lp.detach().clone()
    ell_t = torch.zeros(shape, dtype=torch.float64) if ell is None else torch.tensor(ell, dtype=torch.float64)
    rewards_t = (
        torch.zeros(shape, dtype=torch.float64) if rewards is None else torch.tensor(rewards, dtype=torch.float64)
    )
    calibrated_t = torch.sigmoid(rewards_t) if calibrated is None else torch.tensor(calibrated, dtype=torch.float64)
    lengths_t = torch.ones(shape, dtype=torch.int64) if lengths is None else torch.tensor(lengths, dtype=torch.int64)

    def opt(values, dtype, grad=False):
        if values is None:
            return None
        return torch.tensor(values, dtype=dtype, requires_grad=grad)

    return PolicyBatch(
        logps=lp,
        old_logps=old,
        ref_logps=old - ell_t,
        rewards=rewards_t,
        calibrated_rewards=calibrated_t,
        verdicts=torch.tensor(verdicts, dtype=torch.int64),
        lengths=lengths_t,
        kl_threshold=kl_threshold,
        baseline_logps=opt(baseline_logps, torch.float64, grad=True),
        baseline_ref_logps=opt(baseline_ref_logps, torch.float64),
        baseline_verdicts=opt(baseline_verdicts, torch.int64),
        baseline_lengths=opt(baseline_lengths, torch.int64),
    )


def assert_finite_zero(out: LossOutput, batch: PolicyBatch) -> None:
    """The loss is exactly 0, attached to the graph, and its backward gives finite zero gradients."""
    assert torch.isfinite(out.loss)
    assert out.loss.item() == 0.0
    assert out.loss.requires_grad
    out.loss.backward()
    assert batch.logps.grad is not None
    assert torch.equal(batch.logps.grad, torch.zeros_like(batch.logps))


@pytest.fixture
def make_batch() -> Callable[..., PolicyBatch]:
    return batch_from


@pytest.fixture
def finite_zero() -> Callable[[LossOutput, PolicyBatch], None]:
    return assert_finite_zero
