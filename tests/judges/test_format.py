"""Format judge: each check, its reasons, and config errors at the right key."""

from __future__ import annotations

import pytest

from cgpo.judging import FAILED, SATISFIED, VIOLATED
from cgpo.schema import SchemaError
from cgpo.testing import assert_judge_conforms
from cgpo_judges.format import FormatJudge


def judge_one(completion, **params):
    (verdict,) = FormatJudge(**params)(["prompt"], [completion])
    return verdict


@pytest.mark.parametrize(
    ("params", "completion", "want"),
    [
        ({"must_match": [r"^Answer:"]}, "Answer: yes", SATISFIED),
        ({"must_match": [r"^Answer:"]}, "Well. Answer: yes", VIOLATED),
        ({"must_match": [r"(?i)final answer", r"\d+"]}, "The FINAL ANSWER is 4", SATISFIED),
        ({"must_match": [r"(?i)final answer", r"\d+"]}, "The final answer is four", VIOLATED),
        ({"must_not_match": [r"(?i)as an ai"]}, "Sure, here it is.", SATISFIED),
        ({"must_not_match": [r"(?i)as an ai"]}, "As an AI, I cannot.", VIOLATED),
        ({"min_words": 3}, "one two three", SATISFIED),
        ({"min_words": 3}, "one two", VIOLATED),
        ({"max_words": 1}, "don't", VIOLATED),  # \w+ runs: "don" and "t"
        ({"max_words": 2}, "hello, world!", SATISFIED),
        ({"min_chars": 5, "max_chars": 5}, "  abcde \n", SATISFIED),  # stripped first
        ({"min_chars": 5, "max_chars": 5, "strip": False}, "  abcde \n", VIOLATED),
        ({"max_chars": 3}, "abcd", VIOLATED),
        ({"min_tokens": 2}, "a-b-c", VIOLATED),  # whitespace tokens
        ({"max_tokens": 3}, "a b c", SATISFIED),
        ({"max_tokens": 3}, "a b c d", VIOLATED),
        ({"starts_with": "Dear"}, "Dear Sir,", SATISFIED),
        ({"starts_with": "Dear"}, "Hi, Dear", VIOLATED),
        ({"ends_with": "Thanks."}, "... Thanks.\n", SATISFIED),
        ({"ends_with": "Thanks."}, "Thanks. Bye.", VIOLATED),
    ],
)
def test_checks(params, completion, want):
    assert judge_one(completion, **params).value == want


@pytest.mark.parametrize(
    ("completion", "want"),
    [
        ('{"a": 1, "b": [2]}', SATISFIED),
        ('```json\n{"a": 1}\n```', SATISFIED),
        ('```JSON\n{"a": 1}\n```', SATISFIED),
        ("```\n[1, 2]\n```", SATISFIED),
        ('Here you go: {"a": 1}', VIOLATED),
        ("{'a': 1}", VIOLATED),
        ('```json\n{"a": 1}\n``` trailing', VIOLATED),
        ("", VIOLATED),
        ("[" * 100_000, VIOLATED),  # deep nesting fails cleanly, never raises
    ],
)
def test_json(completion, want):
    assert judge_one(completion, json=True).value == want


def test_json_keys():
    assert judge_one('{"name": "x", "age": 3}', json=True, json_keys=["name", "age"]).value == SATISFIED
    missing = judge_one('{"name": "x"}', json=True, json_keys=["name", "age"])
    assert missing.value == VIOLATED and "missing 'age'" in missing.reason
    not_object = judge_one('["name", "age"]', json=True, json_keys=["name"])
    assert not_object.value == VIOLATED and "not an object" in not_object.reason


def test_reason_names_every_failed_check():
    verdict = judge_one("As an AI I refuse", must_match=[r"\d"], must_not_match=[r"As an AI"], min_words=10)
    assert verdict.value == VIOLATED
    assert "must_match '\\\\d' does not match" in verdict.reason
    assert "must_not_match 'As an AI' matches" in verdict.reason
    assert "words: 5 < min_words=10" in verdict.reason
    assert judge_one("42", must_match=[r"\d"]).reason == ""


def test_tokenizer_counts_its_own_tokens(tiny_models_dir):
    path = str(tiny_models_dir / "policy")  # a character-level tokenizer: one token per character
    judge = FormatJudge(max_tokens=5, tokenizer=path)
    assert judge.count_tokens("abcde") == 5
    assert [v.value for v in judge(["", ""], ["abcde", "abc def"])] == [SATISFIED, VIOLATED]


def test_batch_shape_and_non_string_completion():
    judge = FormatJudge(max_words=1)
    verdicts = judge(["", "", ""], ["one", "one two", None])
    assert [v.value for v in verdicts] == [SATISFIED, VIOLATED, FAILED]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"must_match": ["ok", "(unclosed"]}, ("must_match", 1)),
        ({"must_not_match": ["*"]}, ("must_not_match", 0)),
        ({"min_words": 5, "max_words": 2}, ("min_words",)),
        ({"max_chars": -1}, ("max_chars",)),
        ({"json_keys": ["a"]}, ("json_keys",)),
        ({"tokenizer": "/x"}, ("tokenizer",)),
        ({"must_match": "a string, not a list"}, ("must_match",)),
        ({"max_word": 3}, ("max_word",)),
        ({}, ()),
    ],
)
def test_bad_params_are_config_errors_at_their_key(data, path):
    with pytest.raises(SchemaError) as info:
        FormatJudge.parse_params(data, ("tasks", 0, "judges", 1, "params"))
    assert info.value.path == ("tasks", 0, "judges", 1, "params", *path)


def test_invalid_regex_message_names_the_pattern():
    with pytest.raises(SchemaError, match=r"invalid regular expression '\(unclosed'"):
        FormatJudge.parse_params({"must_match": ["(unclosed"]})


def test_deterministic_and_stateless():
    judge = FormatJudge(must_match=[r"^\w+$"], max_chars=10)
    batch = ["word", "two words", "x" * 11, "ok"]
    first = judge([""] * 4, batch)
    assert judge([""] * 4, batch) == first
    assert [v.value for v in first] == [SATISFIED, VIOLATED, VIOLATED, SATISFIED]


def test_format_judge_conforms():
    assert_judge_conforms(FormatJudge, params={"max_words": 5, "must_not_match": ["(?i)sorry"]})
