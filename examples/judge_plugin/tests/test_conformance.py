"""The plugin's own tests: the cgpo conformance kit, plus a few golden verdicts."""

from __future__ import annotations

import pytest
from cgpo_example_judges import NoShoutingJudge, WordBudgetJudge

from cgpo.testing import Sample, assert_judge_conforms

SAMPLES = [
    Sample("Describe tea.", "Tea is a calm drink."),
    Sample("Describe tea.", "TEA IS THE BEST DRINK EVER"),
    Sample("Describe tea.", "Tea " * 30, {"word_budget": 50}),
    Sample("Describe tea.", "Tea.", {"word_budget": "ten"}),  # malformed metadata: -1
    Sample("Describe tea.", ""),
]


@pytest.mark.parametrize("judge_cls", [WordBudgetJudge, NoShoutingJudge])
def test_conforms(judge_cls):
    assert_judge_conforms(judge_cls, SAMPLES)


def test_golden_verdicts():
    budget = WordBudgetJudge(max_words=5, min_words=1)
    values = [
        v.value
        for v in budget([s.prompt for s in SAMPLES], [s.completion for s in SAMPLES], [s.metadata for s in SAMPLES])
    ]
    assert values == [1, 0, 1, -1, 0]
    shouting = NoShoutingJudge()
    assert [v.value for v in shouting(["p"] * 3, ["Use the GPU API now", "STOP DOING THAT", "OK"])] == [1, 0, 1]
