"""The statistics the example studies share (cgpo.studies): paired bootstrap intervals and the exact McNemar test.

Each case is small enough to compute by hand.
"""

from __future__ import annotations

import math

import pytest

from cgpo.studies import mcnemar_exact, paired_bootstrap


def test_bootstrap_of_an_identical_change_on_every_prompt_has_a_zero_width_interval():
    stats = paired_bootstrap([0, 0, 0, 0], [1, 1, 1, 1])
    assert stats == {"before": 0.0, "after": 1.0, "delta": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 4}


def test_bootstrap_of_no_change_is_zero_with_a_zero_interval():
    stats = paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (stats["delta"], stats["ci_low"], stats["ci_high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_of_two_prompts_spans_the_resampled_means():
    # Differences (0, 1): a resample's mean is 0 (p 1/4), 1/2 (p 1/2) or 1 (p 1/4), so the 2.5% and 97.5%
    # quantiles are 0 and 1, and about half of the resamples sit at 1/2.
    stats = paired_bootstrap([0, 0], [0, 1], resamples=4000, seed=1)
    assert stats["delta"] == 0.5
    assert (stats["ci_low"], stats["ci_high"]) == (0.0, 1.0)


def test_bootstrap_keeps_the_pairing():
    # Unpaired, before and after both hold one 1 and one 0; paired, prompt 1 lost what prompt 2 gained, so every
    # resample's change is in {-1, 0, 1} and the point estimate is 0.
    stats = paired_bootstrap([1, 0], [0, 1], resamples=2000)
    assert stats["delta"] == 0.0 and stats["ci_low"] == -1.0 and stats["ci_high"] == 1.0


def test_bootstrap_with_weights_is_a_ratio_of_sums():
    # Instruction-level: 1 of 2 and 3 of 3 instructions followed before, 2 of 2 and 3 of 3 after.
    stats = paired_bootstrap([1, 3], [2, 3], [2, 3], resamples=1000)
    assert stats["before"] == pytest.approx(4 / 5) and stats["after"] == 1.0 and stats["delta"] == pytest.approx(1 / 5)
    # Resamples: {1,1} -> 2/4, {2,2} -> 0, mixed -> 1/5.
    assert stats["ci_low"] == 0.0 and stats["ci_high"] == 0.5


def test_bootstrap_is_reproducible_and_rejects_bad_input():
    a, b = [0, 1, 0, 1, 1], [1, 1, 0, 0, 1]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap([0, 1], [1])
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="positive"):
        paired_bootstrap([0], [1], [0])


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_binomial_p():
    # b = 0 only-before, c = 5 only-after: p = 2 * 0.5**5 = 0.0625.
    before = [False] * 5 + [True, False]
    after = [True] * 5 + [True, False]
    assert mcnemar_exact(before, after) == {"only_before": 0, "only_after": 5, "p_value": 0.0625}
    # b = 1, c = 3: p = 2 * (1 + 4) / 16 = 0.625.
    result = mcnemar_exact([True, False, False, False], [False, True, True, True])
    assert math.isclose(result["p_value"], 0.625)


def test_mcnemar_without_discordant_pairs_or_symmetric_is_one():
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [])
