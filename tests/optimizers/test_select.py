"""Masked selection helpers: +-inf masking, never multiplication by 0."""

from __future__ import annotations

import torch

from cgpo.optimizers._select import masked_argmax, masked_argmin, safe_mean, take

INF = float("inf")


def test_masked_argmax_ignores_masked_entries_with_signed_values():
    values = torch.tensor([[-3.0, -1.0, 0.0, 5.0], [2.0, 1.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, False, False], [False, True, False, True]])
    index, found = masked_argmax(values, mask)
    assert index.tolist() == [1, 1]
    assert found.tolist() == [True, True]
    index, found = masked_argmin(values, mask)
    assert index.tolist() == [0, 3]


def test_ties_go_to_the_lowest_masked_in_index():
    values = torch.tensor([[7.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[False, True, True, True]])
    assert masked_argmax(values, mask)[0].tolist() == [1]
    assert masked_argmin(values, mask)[0].tolist() == [1]


def test_infinite_values_never_select_a_masked_out_entry():
    # Every allowed value is -inf (argmax) or +inf (argmin): the naive fill would tie with the masked-out
    # entries and could return one of them.
    values = torch.tensor([[5.0, -INF, -INF], [INF, INF, -1.0]])
    mask = torch.tensor([[False, False, True], [False, True, False]])
    assert masked_argmax(values, mask)[0].tolist() == [2, 1]
    values = torch.tensor([[INF, -5.0, INF], [INF, INF, -1.0]])
    assert masked_argmin(values, mask)[0].tolist() == [2, 1]


def test_empty_rows_are_reported_not_found():
    index, found = masked_argmax(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[False, False], [True, False]]))
    assert found.tolist() == [False, True]
    assert index[1].item() == 0


def test_take_keeps_gradients_and_safe_mean_of_empty_is_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    take(x, torch.tensor([1, 0])).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert safe_mean(torch.tensor([])) == 0.0
    assert safe_mean(torch.tensor([1.0, 2.0])) == 1.5


def test_zero_loss_is_finite_even_with_infinite_logps_on_excluded_samples(make_batch, finite_zero):
    from cgpo.optimizers.crpg import CRPG

    batch = make_batch(logps=[[-1.0, float("-inf")]], verdicts=[[-1, -1]])
    finite_zero(CRPG().loss(batch), batch)
