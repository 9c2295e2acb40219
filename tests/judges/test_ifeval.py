"""IFEval judge: each of the 25 instructions, strict vs loose, config errors, determinism, reference agreement."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cgpo.judging import JUDGES
from cgpo.schema import SchemaError
from cgpo_judges._ifeval_checks import INSTRUCTIONS, KwargError, build_check
from cgpo_judges._ifeval_text import count_capital_words, count_sentences, count_words, split_sentences
from cgpo_judges.ifeval import IFEvalJudge, IFEvalParams, Mode, instruction_results

EN = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the porch and "
    "thinks about the harvest that is coming next week"
)


def follows(instruction_id: str, kwargs: dict[str, Any], text: str, mode: Mode = "strict") -> bool:
    return bool(instruction_results(text, [instruction_id], [kwargs], mode)[0])


# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "pie"]}, "An Apple PIE recipe.", "An apple tart."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat, Cat.", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["red"]}, "a reddish, bored sky", "a Red sky"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zZz", "zz"),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "less than"}, "#", "##"),
    ("language:response_language", {"language": "de"}, "Der Hund läuft schnell über die grüne Wiese.", EN),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "One two. Three.",
        "One. Two. Three.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two! Three?",
        "J. Smith. Two.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "one\n***\ntwo", "one\n***\n\n***\ntwo"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "two words", "one two three"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one two three", "two words"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'First part.\n\n"Then, more.',
        "First part.\n\nNext, more.",
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", "[name] only"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np.s. bye", "Hi. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP. P. S. bye", "Hi.\nP.S. bye"),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "x\nNOTE: y", "x\nNote y"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b\n**bold**", "* a\n* b\n- c"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "My answer is perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and * *"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\na\nSECTION 2\nb",
        "SECTION 1\na\nSection two",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', '{"a": 1,}'),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >>\n<<two\nlines>>"),
    ("combination:two_responses", {}, "first\n******\nsecond", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "  say HI. Hi!", "Hi! Say hi."),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. any other questions?"\n',
        "Any other questions? Ok.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "DON'T do IT",
        "Don't DO it",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Only ONE here",
        "TWO CAPS",
    ),
    ("change_case:english_capital", {}, EN.upper(), EN.upper() + " x"),
    ("change_case:english_lowercase", {}, EN, EN + " Fox"),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
    ("startend:quotation", {}, ' "quoted" ', '"unbalanced'),
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_instruction_pass_and_fail(instruction_id: str, kwargs: dict[str, Any], good: str, bad: str) -> None:
    assert follows(instruction_id, kwargs, good), good
    assert not follows(instruction_id, kwargs, bad), bad


def test_every_instruction_id_has_cases() -> None:
    assert len(INSTRUCTIONS) == 25
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


def test_relations_at_the_boundary() -> None:
    # "less than" is strict (<), "at least" is inclusive (>=): exactly N words is "at least N", not "less than N".
    three = "one two three"
    assert not follows("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, three)
    assert follows("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, three)
    assert follows("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, three)
    assert not follows("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, three)


def test_text_utilities() -> None:
    assert count_words("Don't stop-believing, 42 times!") == 6
    # Expected values are NLTK 3.10's untrained PunktSentenceTokenizer / word_tokenize outputs.
    # Untrained Punkt: unknown abbreviations end a sentence, initials and numbers before lower case do not.
    assert split_sentences("Dr. Smith came. J. Smith too.") == ["Dr.", "Smith came.", "J. Smith too."]
    assert count_sentences("Step 1. then go. Done") == 2
    assert split_sentences('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]
    assert split_sentences("Wait... what?! Yes") == ["Wait...", "what?!", "Yes"]
    assert count_sentences("") == 0
    # Contractions split like nltk.word_tokenize: DON'T -> DO + N'T; AI's -> AI + 's; hyphenated words stay whole.
    assert count_capital_words("DON'T stop") == 2
    assert count_capital_words("AI's NASA-led work, WELL-KNOWN.") == 2
    assert count_capital_words("CANNOT") == 2


def test_loose_differs_from_strict() -> None:
    # A preamble line breaks strict "wrap in quotes"; loose drops the first line.
    text = 'Sure, here it is:\n"All wrapped up"'
    assert not follows("startend:quotation", {}, text, "strict")
    assert follows("startend:quotation", {}, text, "loose")
    # Markdown bold asterisks break strict "end with"; loose removes them.
    bold = "Thanks. **Is there anything else I can help with?**"
    kwargs = {"end_phrase": "Is there anything else I can help with?"}
    assert not follows("startend:end_checker", kwargs, bold, "strict")
    assert follows("startend:end_checker", kwargs, bold, "loose")

    judge_s, judge_l = IFEvalJudge(mode="strict"), IFEvalJudge(mode="loose")
    meta = [{"instruction_id_list": ["startend:quotation"], "kwargs": [{}]}]
    assert judge_s(["p"], [text], meta)[0].value == 0
    assert judge_l(["p"], [text], meta)[0].value == 1


def test_empty_response_is_a_violation() -> None:
    meta = [{"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]
    for mode in ("strict", "loose"):
        verdict = IFEvalJudge(mode=mode)(["p"], ["  \n "], meta)[0]
        assert verdict.value == 0, mode


def test_prompt_level_verdict_and_reason() -> None:
    judge = IFEvalJudge()
    meta = {
        "instruction_id_list": ["punctuation:no_comma", "keywords:existence", "detectable_format:title"],
        "kwargs": [{}, {"keywords": ["owl"]}, {}],
    }
    ok, bad = judge(["p", "p"], ["<<Owls>> an owl hoots", "<<Hawks>> a hawk, no"], [meta, meta])
    assert ok.value == 1 and "all 3 followed" in ok.reason
    assert bad.value == 0
    assert "not followed: punctuation:no_comma, keywords:existence" in bad.reason
    assert "detectable_format:title=1" in bad.reason


def test_none_kwargs_are_dropped_but_falsy_values_kept() -> None:
    # Dataset rows carry every kwarg of every instruction, mostly null; 0 is a real value.
    kwargs = {"num_words": 0, "relation": "at least", "keywords": None, "language": None}
    assert follows("length_constraints:number_words", kwargs, "anything")
    assert not follows("length_constraints:number_words", {"num_words": 0, "relation": "less than"}, "x")
    # An empty end phrase is a real value too (every response ends with it), as in the reference.
    assert follows("startend:end_checker", {"end_phrase": ""}, "whatever")


def test_per_sample_config_problems_are_minus_one() -> None:
    judge = IFEvalJudge()
    metas = [
        {"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]},
        {"instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "x", "relation": "at least"}]},
        {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}]},
        {"instruction_id_list": ["combination:repeat_prompt"], "kwargs": [{}]},
        {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "klingon"}]},
        {},
    ]
    verdicts = judge(["p"] * len(metas), ["x"] * len(metas), metas)
    assert [v.value for v in verdicts] == [-1] * len(metas)
    assert "unknown IFEval instruction id" in verdicts[0].reason
    assert "'keywords:frequency', kwarg 'frequency': missing" in verdicts[1].reason
    assert "kwargs must be a list of 2" in verdicts[2].reason
    assert "kwarg 'prompt_to_repeat': missing" in verdicts[3].reason
    assert "not a langdetect language code" in verdicts[4].reason


def test_kwarg_errors_never_randomise() -> None:
    with pytest.raises(KwargError, match="let_relation"):
        build_check("keywords:letter_frequency", {"letter": "a", "let_frequency": 2, "let_relation": "at most"})
    with pytest.raises(KwargError, match="single character"):
        build_check("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"})
    with pytest.raises(KwargError, match="nth_paragraph"):
        build_check(
            "length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}
        )
    with pytest.raises(KwargError, match="num_bullets"):
        build_check("detectable_format:number_bullet_lists", {"num_bullets": -1})
    with pytest.raises(KwargError, match="not an argument"):
        build_check("punctuation:no_comma", {"num_bullets": 2})


def test_params_fix_instructions_for_every_prompt() -> None:
    judge = IFEvalJudge(
        instruction_id_list=["punctuation:no_comma", "keywords:existence"], kwargs=[{}, {"keywords": ["x"]}]
    )
    verdicts = judge(["a", "b"], ["x marks", "x, y"], [{}, {"instruction_id_list": ["startend:quotation"]}])
    assert [v.value for v in verdicts] == [1, 0]  # params take precedence over the metadata


def test_params_unknown_id_names_the_key() -> None:
    with pytest.raises(SchemaError) as err:
        IFEvalJudge.parse_params({"instruction_id_list": ["punctuation:no_comma", "keywords:nope"]})
    assert err.value.path == ("instruction_id_list", 1)
    assert "unknown IFEval instruction id" in str(err.value)


def test_params_missing_kwarg_names_id_and_kwarg() -> None:
    with pytest.raises(SchemaError) as err:
        IFEvalJudge.parse_params(
            {"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]}
        )
    assert err.value.path == ("kwargs", 0, "relation")
    assert "length_constraints:number_words" in str(err.value) and "'relation'" in str(err.value)
    with pytest.raises(SchemaError, match="kwargs: has 1 entries for 2"):
        IFEvalJudge.parse_params({"instruction_id_list": ["punctuation:no_comma"] * 2, "kwargs": [{}]})
    with pytest.raises(SchemaError, match="mode"):
        IFEvalJudge.parse_params({"mode": "lenient"})
    with pytest.raises(SchemaError, match="missing"):
        IFEvalJudge(instruction_id_list=["combination:repeat_prompt"])


def test_undetectable_language_policy() -> None:
    meta = [{"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "hi"}]}]
    assert IFEvalJudge()(["p"], ["12345 !!!"], meta)[0].value == 0
    assert IFEvalJudge(undetected_language="satisfied")(["p"], ["12345 !!!"], meta)[0].value == 1


def test_registered_and_contract() -> None:
    assert JUDGES.get("ifeval") is IFEvalJudge
    assert IFEvalJudge.kind == "rule" and IFEvalJudge.Params is IFEvalParams and IFEvalJudge.description


@pytest.fixture(scope="module")
def langdetect_factory() -> Any:
    """A private langdetect factory with seed 0, as the reference's ``DetectorFactory.seed = 0``."""
    from langdetect import DetectorFactory
    from langdetect.detector_factory import PROFILES_DIRECTORY

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def _synthetic_texts(factory: Any) -> list[str]:
    """Texts in every profile language's script (words of characters drawn by P(char | language)), mixtures of
    two languages (slow trials that often reach the iteration limit), short and all-caps texts, texts with a URL
    and an e-mail address, decomposed Vietnamese and lone surrogates."""
    import random
    import unicodedata

    rng = random.Random(12345)
    probs, langs = factory.word_lang_prob_map, factory.langlist
    chars = {
        j: [(g, p[j]) for g, p in probs.items() if len(g) == 1 and g != " " and p[j] > 0] for j in range(len(langs))
    }

    def words(j: int, n: int) -> str:
        alphabet, weights = zip(*chars[j], strict=True)
        return " ".join("".join(rng.choices(alphabet, weights, k=rng.randint(1, 8))) for _ in range(n))

    texts = []
    for j in range(len(langs)):
        texts += [words(j, 2), words(j, 20), words(j, 5).upper() + " see http://example.com/x?y=1 or mail a.b@c.org"]
        if j % 4 == 0:  # mixtures are slow for langdetect (trials run to its iteration limit): a few suffice
            texts.append(words(j, 8) + " " + words(rng.randrange(len(langs)), 8))
    texts += [unicodedata.normalize("NFD", "Tiếng Việt có dấu, ngôn ngữ"), "abc \ud800 日本語 \udfff text", "A", "I"]
    return texts


@pytest.mark.slow  # langdetect itself on ~400 texts: about 10 s on a shared 2-core machine
def test_fast_language_detection_equals_langdetect(shared_data: Path, langdetect_factory: Any) -> None:
    from langdetect.lang_detect_exception import LangDetectException

    import cgpo_judges._ifeval_langdetect as fast
    from cgpo_judges._ifeval_langdetect import UndetectableLanguage, detect, detect_many
    from cgpo_judges.ifeval import _loose_variants

    # The vectorised path is the one under test: the stream and NumPy checks hold on this interpreter.
    assert fast._get_model().vectorized

    def reference(text: str) -> str | None:
        detector = langdetect_factory.create()
        detector.append(text)
        try:
            return str(detector.detect())
        except LangDetectException:
            return None

    def ours(text: str) -> str | None:
        try:
            return str(detect(text))
        except UndetectableLanguage:
            return None

    rows = [json.loads(line) for line in (shared_data / "ifeval" / "responses_gpt4.jsonl").open()]
    texts = [r["response"] for r in rows[::9]] + [r["prompt"] for r in rows[::27]]
    texts += [v for r in rows[5::40] for v in _loose_variants(r["response"])]
    texts += ["", "123 !!", "Привет, как дела?", "日本語のテキストです", "HELLO THERE WORLD", "Tiếng Việt có dấu"]
    texts += _synthetic_texts(langdetect_factory)
    expected = [reference(t) for t in texts]
    assert len(set(expected)) > 40  # most profile languages, "unknown" and undetectable texts among them
    mismatches = [(t[:60], e, ours(t)) for t, e in zip(texts, expected, strict=True) if e != ours(t)]
    assert not mismatches
    # The batched path (all texts' trials in lockstep, the last one alone) gives the same answers, in one batch,
    # in small batches, and with a stream window so short that every text's draws must be extended.
    assert detect_many(texts) == expected
    assert [x for i in range(0, len(texts), 3) for x in detect_many(texts[i : i + 3])] == expected
    window = fast._WINDOW
    fast._WINDOW = 40
    try:
        assert detect_many(texts) == expected
    finally:
        fast._WINDOW = window


def test_profiles_equal_langdetects(langdetect_factory: Any) -> None:
    from cgpo_judges._ifeval_langdetect import _load_profiles

    langs, gram_id, matrix = _load_profiles()
    assert langs == langdetect_factory.langlist and len(langs) == 55
    probs = langdetect_factory.word_lang_prob_map
    assert gram_id.keys() == probs.keys()
    assert all(matrix[g].tolist() == probs[gram][: len(langs)] for gram, g in gram_id.items())


def test_loose_rounds_equal_one_by_one_evaluation() -> None:
    # Language checks that fail on the first variants make the judge detect in several rounds; the verdicts
    # equal instruction_results, which detects each text on its own when a check asks for it.
    ids = ["language:response_language", "change_case:english_lowercase", "change_case:english_capital"]
    kwargs: list[dict[str, Any]] = [{"language": "de"}, {}, {}]
    texts = [
        "Title line\n*Der Hund* läuft schnell über die grüne Wiese.\nlast LINE",
        "FIRST\nthe quick brown fox jumps\nover the lazy dog\nEND",
        "**BOLD HEADER**\nDIE KATZE SCHLÄFT AUF DEM SOFA\nfin",
        EN,
    ]
    verdicts = IFEvalJudge(mode="loose")(
        ["p"] * len(texts), texts, [{"instruction_id_list": ids, "kwargs": kwargs}] * 4
    )
    for text, verdict in zip(texts, verdicts, strict=True):
        alone = instruction_results(text, ids, kwargs, "loose")
        assert verdict.value == int(all(alone)), (text, verdict.reason, alone)
        assert verdict.reason.endswith("[" + " ".join(f"{i}={int(f)}" for i, f in zip(ids, alone, strict=True)) + "]")


def test_deterministic() -> None:
    judge = IFEvalJudge(mode="loose")
    meta = [
        {
            "instruction_id_list": ["language:response_language", "change_case:english_lowercase"],
            "kwargs": [{"language": "en"}, {}],
        },
        {
            "instruction_id_list": ["length_constraints:number_sentences"],
            "kwargs": [{"num_sentences": 2, "relation": "at least"}],
        },
    ] * 3
    texts = [EN, "One. Two. Three."] * 3
    first = judge(["p"] * 6, texts, meta)
    second = judge(["p"] * 6, texts, meta)
    assert first == second
    assert [v.value for v in first] == [1, 1] * 3


def _load_ifeval(shared_data: Path) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]]]:
    folder = shared_data / "ifeval"
    inputs = [json.loads(line) for line in (folder / "input_data.jsonl").open()]
    responses = {r["prompt"]: r["response"] for r in map(json.loads, (folder / "responses_gpt4.jsonl").open())}
    reference = [json.loads(line) for line in (folder / "reference_verdicts.jsonl").open()]
    assert len(inputs) == len(reference) == 541
    return inputs, responses, reference


@pytest.mark.parametrize("mode", ["strict", "loose"])
def test_agreement_with_reference_verdicts(shared_data: Path, mode: Mode) -> None:
    inputs, responses, reference = _load_ifeval(shared_data)
    judge = IFEvalJudge(mode=mode)
    verdicts = judge(
        [r["prompt"] for r in inputs],
        [responses[r["prompt"]] for r in inputs],
        [{"instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]} for r in inputs],
    )
    prompt_agree = sum((v.value == 1) == ref[f"follow_all_{mode}"] for v, ref in zip(verdicts, reference, strict=True))
    disagreements = [
        (r["key"], ref[f"follow_all_{mode}"], v.reason)
        for r, v, ref in zip(inputs, verdicts, reference, strict=True)
        if (v.value == 1) != ref[f"follow_all_{mode}"]
    ]
    per_id: Counter[str] = Counter()
    inst_agree = inst_total = 0
    for r, ref in zip(inputs, reference, strict=True):
        got = instruction_results(responses[r["prompt"]], r["instruction_id_list"], r["kwargs"], mode)
        for iid, g, e in zip(r["instruction_id_list"], got, ref[f"follow_instruction_list_{mode}"], strict=True):
            inst_total += 1
            inst_agree += g == e
            per_id[iid] += g != e
    print(f"{mode}: prompt-level {prompt_agree}/541, instruction-level {inst_agree}/{inst_total}")
    assert prompt_agree / 541 >= 0.99, f"disagreements: {disagreements}; per instruction id: {+per_id}"
    assert inst_total == 834 and inst_agree / inst_total >= 0.99, f"per instruction id: {+per_id}"


@pytest.mark.parametrize("mode", ["strict", "loose"])
def test_conformance_kit(mode: str) -> None:
    from cgpo.testing import Sample, assert_judge_conforms

    def meta(ids: list[str], kwargs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"instruction_id_list": ids, "kwargs": kwargs}

    samples = [
        Sample("p", EN, meta(["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}])),
        Sample("p", "Ein kurzer Satz auf Deutsch.", meta(["language:response_language"], [{"language": "de"}])),
        Sample(
            "p",
            "**One.** Two.\nThree!",
            meta(["length_constraints:number_sentences"], [{"num_sentences": 3, "relation": "at least"}]),
        ),
        Sample("p", "", meta(["detectable_format:title"], [{}])),
        Sample("p", "x", meta(["keywords:nope"], [{}])),
        Sample("p", "HELLO WORLD", {}),
    ]
    assert_judge_conforms(IFEvalJudge, samples, params={"mode": mode})


def test_pathological_responses_are_judged_quickly() -> None:
    # Degenerate RL outputs: long runs of blank lines, brackets, periods, marks. The reference's regexes are
    # quadratic on some of these (blank-line runs for bullets, "[[[[" for placeholders, "<<<<" for titles);
    # ours are linear, so 10,000 characters take well under a second per instruction.
    import time

    n = 10_000
    texts = [
        "\n" * n,
        "[" * n,
        "<" * n,
        ". " * (n // 2),
        "*\n" * (n // 2),
        "!" * n,
        "A. " * (n // 3),
        " \n" * (n // 2),
    ]
    metas = [{"instruction_id_list": [iid], "kwargs": [kw]} for iid, kw, _, _ in CASES]
    for mode in ("strict", "loose"):
        judge = IFEvalJudge(mode=mode)
        for text in texts:
            start = time.perf_counter()
            verdicts = judge(["p"] * len(metas), [text] * len(metas), metas)
            assert time.perf_counter() - start < 20, (mode, text[:10])
            assert all(v.value in (0, 1) for v in verdicts) or text.startswith("[")
    # "[[[[..." is too deeply nested for Python's json parser: that one check is -1 (never 0), the rest decide.
    verdicts = IFEvalJudge()(["p"] * len(metas), ["[" * n] * len(metas), metas)
    assert [v.value == -1 for v in verdicts] == [iid == "detectable_format:json_format" for iid, *_ in CASES]


def test_linear_scans_match_the_reference_regexes() -> None:
    # The linear-time bullet, placeholder and title scans count exactly what IFEval's regexes count.
    import random
    import re

    from cgpo_judges._ifeval_checks import count_placeholders, count_star_bullets, has_title

    rng = random.Random(0)
    pieces = [*"* -\n[]<> a\t\r\x85x", "**", "\n\n", "<<", ">>", "* ", "- "]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert count_star_bullets(text) == len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)), text
        assert count_placeholders(text) == len(re.findall(r"\[.*?\]", text)), text
        expected_title = any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))
        assert has_title(text) == expected_title, text
