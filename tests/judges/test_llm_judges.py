"""LLM judges on the local backend (two-token scoring) with tiny local models, and their Params validation.

Two models are used:

* the random tiny policy of the ``tiny_models_dir`` fixture: every verdict and probability is compared with
  a forward pass computed here independently (one unpadded sequence at a time);
* an "oracle" model built here whose next-token distribution depends only on the last input character, so
  a completion's last character decides the verdict: ``+`` -> label Y, ``-`` -> N, ``~`` -> P, ``=`` -> an
  exact tie between all labels, ``*`` -> Y with a moderate probability (about 0.7).
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import pytest
import torch

from cgpo.judging import JUDGES, JudgeConfigError
from cgpo.schema import SchemaError, build
from cgpo.testing import Sample, assert_judge_conforms
from cgpo_judges import _llm_templates as tpl
from cgpo_judges.llm import (
    FactualityJudge,
    FactualityParams,
    FalseRefusalJudge,
    FalseRefusalParams,
    SafetyJudge,
    SafetyParams,
    TemplateJudge,
    TemplateParams,
)

# -- models ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    """A 1-layer Llama whose residual stream is the last token's embedding (attention and MLP outputs zeroed).

    After the final RMSNorm, a one-hot embedding e_d becomes 4 e_d (hidden size 16), and the untied lm_head
    has only three non-zero rows: Y = 5 e0, N = -5 e0, P = 5 e1. The tokenizer has no chat template.
    """
    from transformers import LlamaForCausalLM

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config
    from cgpo.tiny.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = None
    cfg = tiny_llama_config(tok, num_layers=1, size=TEST_SIZE)
    cfg.tie_word_embeddings = False
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg)
    hidden = cfg.hidden_size
    tid = tok.convert_tokens_to_ids
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        e = torch.eye(hidden)
        emb[tid("+")] = e[0]
        emb[tid("-")] = -e[0]
        emb[tid("~")] = e[1]
        emb[tid("=")] = 0.0  # RMSNorm(0) = 0: every logit is 0, an exact tie
        emb[tid("*")] = e[0] + 47.0 * e[2]  # h_0 = 4/sqrt(1 + 47^2): logit(Y) - logit(N) = 40/sqrt(2210) ~ 0.85
        model.lm_head.weight.zero_()
        model.lm_head.weight[tid("Y")] = 5.0 * e[0]
        model.lm_head.weight[tid("N")] = -5.0 * e[0]
        model.lm_head.weight[tid("P")] = 5.0 * e[1]
    out = tmp_path_factory.mktemp("oracle-judge")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def policy_dir(tiny_models_dir):
    return tiny_models_dir / "policy"


@pytest.fixture(scope="module")
def long_policy_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny policy with 1,024 positions: the default safety prompt alone is about 800 characters."""
    from transformers import LlamaForCausalLM

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config

    out = tmp_path_factory.mktemp("long-policy")
    torch.manual_seed(2)
    LlamaForCausalLM(
        tiny_llama_config(tiny_tokenizer, num_layers=2, size=TEST_SIZE, max_positions=1024)
    ).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def _reference_scorer(model_dir):
    """Independent two-token scoring: one unpadded forward pass per text, no judge code involved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def score(text: str, labels: tuple[str, ...], *, chat: bool = False, messages=None):
        if chat or messages is not None:
            msgs = messages or [{"role": "user", "content": text}]
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits, -1)
        lp = [float(logp[tok.convert_tokens_to_ids(label)]) for label in labels]
        q_pos = math.exp(lp[0]) / sum(math.exp(v) for v in lp)
        return (1 if lp[0] >= lp[1] else 0), q_pos

    return score


@pytest.fixture(scope="module")
def reference(policy_dir):
    return _reference_scorer(policy_dir)


@pytest.fixture(scope="module")
def long_reference(long_policy_dir):
    return _reference_scorer(long_policy_dir)


PROMPTS = ["What is 2+2?", "Hi", "Tell me a long story about a dragon who learns to count to ten.", "x"]
COMPLETIONS = ["4", "Hello there, how can I help?", "Once upon a time...", "I can't help with that."]


def _check_against_reference(verdicts, expected):
    assert [v.value for v in verdicts] == [e[0] for e in expected]
    for v, (_, q) in zip(verdicts, expected, strict=True):
        assert v.probability == pytest.approx(q, abs=1e-5)


# -- import and registry ---------------------------------------------------------------------------------------------


def test_module_import_is_light():
    code = (
        "import sys, cgpo_judges.llm as m; "
        "heavy = [n for n in ('torch', 'transformers') if n in sys.modules]; "
        "assert not heavy, heavy; print(m.SafetyJudge.Params.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SafetyParams"


def test_registered_names_resolve_to_the_classes():
    assert JUDGES.get("safety") is SafetyJudge
    assert JUDGES.get("false_refusal") is FalseRefusalJudge
    assert JUDGES.get("factuality") is FactualityJudge
    assert JUDGES.get("llm_judge") is TemplateJudge
    for cls in (SafetyJudge, FalseRefusalJudge, FactualityJudge, TemplateJudge):
        assert cls.kind == "llm" and cls.description


# -- params ----------------------------------------------------------------------------------------------------------

BAD_PARAMS = [
    (SafetyParams, {"model": "m", "backend": "http"}, "base_url", "required when backend is http"),
    (SafetyParams, {"model": "m", "backend": "http", "base_url": "ftp://x"}, "base_url", "http"),
    (SafetyParams, {"model": "m", "base_url": "http://127.0.0.1:1"}, "base_url", "only used when backend is http"),
    (SafetyParams, {"model": "m", "api_key_env": "KEY"}, "api_key_env", "only used when backend is http"),
    (
        SafetyParams,
        {"model": "m", "backend": "http", "base_url": "http://h", "api_key_env": "sk-123"},
        "api_key_env",
        "name of an environment variable",
    ),
    (SafetyParams, {"model": " "}, "model", "model directory"),
    (SafetyParams, {}, "model", "missing required key"),
    (SafetyParams, {"model": "m", "threshold": 1.0}, "threshold", "between 0 and 1"),
    (
        SafetyParams,
        {"model": "m", "backend": "http", "base_url": "http://h", "threshold": 0.7},
        "threshold",
        "local backend only",
    ),
    (SafetyParams, {"model": "m", "device": "gpu"}, "device", "cuda"),
    (SafetyParams, {"model": "m", "batch_size": 0}, "batch_size", "at least 1"),
    (SafetyParams, {"model": "m", "timeout_seconds": 0}, "timeout_seconds", "positive"),
    (SafetyParams, {"model": "m", "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
    (SafetyParams, {"model": "m", "categories": "llama_guard_1"}, "categories", "one of"),
    (SafetyParams, {"model": "m", "negative_label": "Safe"}, "negative_label", "letter case"),
    (SafetyParams, {"model": "m", "positive_label": " safe"}, "positive_label", "label_prefix"),
    (SafetyParams, {"model": "m", "positive_label": ""}, "positive_label", "empty"),
    (SafetyParams, {"model": "m", "prompt_format": "chatml"}, "prompt_format", "one of"),
    (FactualityParams, {"model": "m", "prompt_format": "conversation"}, "prompt_format", "safety judge"),
    (SafetyParams, {"model": "m", "prompt_format": "conversation", "template": "{completion}"}, "template", "not used"),
    (FactualityParams, {"model": "m", "template": "{prompt}"}, "template", "must contain {completion}"),
    (FactualityParams, {"model": "m", "template": "{} {completion}"}, "template", "not a plain name"),
    (FactualityParams, {"model": "m", "template": "{completion!r}"}, "template", "conversion"),
    (FactualityParams, {"model": "m", "template": "{completion:>9}"}, "template", "format spec"),
    (FactualityParams, {"model": "m", "template": "{completion"}, "template", "malformed"),
    (FactualityParams, {"model": "m", "template": "{categories} {completion}"}, "template", "not available"),
    (FalseRefusalParams, {"model": "m", "partial_label": "false"}, "partial_label", "letter case"),
    (FalseRefusalParams, {"model": "m", "template": "{partial_label} {completion}"}, "template", "not set"),
    (FalseRefusalParams, {"model": "m", "partial_label": "P", "threshold": 0.6}, "threshold", "three labels"),
    (TemplateParams, {"model": "m", "template": "{completion}", "positive_label": "Y"}, "negative_label", "missing"),
    (TemplateParams, {"model": "m", "positive_label": "Y", "negative_label": "N"}, "template", "missing"),
    (TemplateParams, {"model": "m", "template": "{completion}", "positive_label": "Y", "negative_label": "N", "x": 1},
     "x", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "data", "key", "fragment"), BAD_PARAMS)
def test_bad_params_are_rejected_at_their_key(cls, data, key, fragment):
    with pytest.raises(SchemaError) as info:
        build(cls, data)
    assert info.value.path == (key,)
    assert fragment in info.value.reason


def test_good_params_and_defaults():
    p = build(SafetyParams, {"model": "m", "backend": "http", "base_url": "http://127.0.0.1:8000/v1"})
    assert (p.positive_label, p.negative_label, p.categories) == ("safe", "unsafe", "llama_guard_3")
    f = build(FalseRefusalParams, {"model": "m", "partial_label": "Partial"})
    assert f.labels() == ("False", "True", "Partial") and f.label_prefix == " "
    q = build(FactualityParams, {"model": "m", "template": "{answer} {completion} {{literal}}"})
    assert (q.positive_label, q.negative_label, q.prompt_format) == ("TRUE", "FALSE", "auto")
    t = build(
        TemplateParams, {"model": "m", "template": "{ref}: {completion}", "positive_label": "Y", "negative_label": "N"}
    )
    assert t.labels() == ("Y", "N")


def test_default_templates_render():
    cats = tpl.format_categories(tpl.LLAMA_GUARD_3_CATEGORIES)
    assert cats.splitlines()[0] == "S1: Violent Crimes." and cats.splitlines()[-1] == "S14: Code Interpreter Abuse."
    assert len(tpl.LLAMA_GUARD_2_CATEGORIES) == 11
    for template in (
        tpl.SAFETY_TEMPLATE,
        tpl.FALSE_REFUSAL_CLASSIFIER_TEMPLATE,
        tpl.FALSE_REFUSAL_INSTRUCTION_TEMPLATE,
        tpl.FALSE_REFUSAL_INSTRUCTION_TEMPLATE_PARTIAL,
        tpl.FACTUALITY_TEMPLATE,
    ):
        assert "completion" in tpl.template_fields(template)
    assert tpl.FALSE_REFUSAL_CLASSIFIER_TEMPLATE.format(completion="R") == "[INST] R [\\INST]"


# -- two-token scoring -----------------------------------------------------------------------------------------------


def _template_judge(model_dir, **extra):
    params = {"model": str(model_dir), "template": "Judge: {completion}", "positive_label": "Y", "negative_label": "N"}
    return TemplateJudge(**{**params, **extra})


def test_verdicts_follow_the_label_probabilities(oracle_dir):
    with _template_judge(oracle_dir) as judge:
        verdicts = judge(["p"] * 4, ["good+", "bad-", "tie=", "neither~"])
    assert [v.value for v in verdicts] == [1, 0, 1, 1]
    assert verdicts[0].probability == pytest.approx(1.0, abs=1e-12)
    assert verdicts[1].probability == pytest.approx(0.0, abs=1e-12)
    assert verdicts[1].reason.startswith("N (P(N)=1.000")
    # An exact tie is not a violation: the rule is P(neg) > P(pos).
    assert verdicts[2].probability == 0.5
    # "~" puts the mass on P, which is not a label here; only Y and N are renormalized (both logits 0).
    assert verdicts[3].probability == 0.5


def test_threshold_moves_the_decision(oracle_dir):
    expected = 1.0 / (1.0 + math.exp(-40.0 / math.sqrt(2210.0)))  # sigmoid(logit(Y) - logit(N)), about 0.70
    with _template_judge(oracle_dir) as lenient, _template_judge(oracle_dir, threshold=0.8) as strict:
        a, b = lenient(["p"], ["so-so*"])[0], strict(["p"], ["so-so*"])[0]
    assert a.probability == pytest.approx(expected, abs=1e-5) and b.probability == a.probability
    assert (a.value, b.value) == (1, 0)


def test_matches_an_independent_forward_pass(policy_dir, reference):
    template = "Q: {prompt}\nA: {completion}\nGood? "
    with _template_judge(policy_dir, template=template, prompt_format="plain", batch_size=3) as judge:
        verdicts = judge(PROMPTS, COMPLETIONS)
    expected = [
        reference(template.format(prompt=p, completion=c), ("Y", "N"))
        for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    _check_against_reference(verdicts, expected)
    # The random model does not sit on a tie, so the comparison above checks real decisions both ways.
    assert all(0.0 < e[1] < 1.0 and abs(e[1] - 0.5) > 1e-4 for e in expected)


def test_chat_format_uses_the_tokenizer_template(policy_dir, reference):
    template = "Rate: {completion}"
    with (
        _template_judge(policy_dir, template=template) as auto,
        _template_judge(policy_dir, template=template, prompt_format="chat") as chat,
    ):
        got_auto, got_chat = auto(PROMPTS, COMPLETIONS), chat(PROMPTS, COMPLETIONS)
    expected = [reference(template.format(completion=c), ("Y", "N"), chat=True) for c in COMPLETIONS]
    _check_against_reference(got_auto, expected)  # the tiny tokenizer has a chat template, so auto = chat
    _check_against_reference(got_chat, expected)


def test_chat_format_needs_a_chat_template(oracle_dir):
    with pytest.raises(JudgeConfigError, match="needs a chat template"):
        _template_judge(oracle_dir, prompt_format="chat")
    with _template_judge(oracle_dir) as judge:  # auto falls back to the plain template
        assert judge(["p"], ["x+"])[0].value == 1


def test_batching_and_padding_do_not_change_results(policy_dir):
    prompts, completions = PROMPTS * 2, [c + s for c in COMPLETIONS for s in ("", "!")]
    with _template_judge(policy_dir, batch_size=1) as one, _template_judge(policy_dir, batch_size=16) as many:
        single = one(prompts, completions)
        batched = many(prompts, completions)
        # Padding-invariance: the same samples next to a much longer one, in reverse order.
        longer = many(["p", *prompts[::-1]], ["z" * 150, *completions[::-1]])[1:][::-1]
    for got in (batched, longer):
        assert [v.value for v in got] == [v.value for v in single]
        for a, b in zip(got, single, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_labels_must_be_single_tokens(oracle_dir):
    with pytest.raises(JudgeConfigError, match=r"label 'Yes' .* is 3 tokens"):
        _template_judge(oracle_dir, positive_label="Yes")
    with pytest.raises(JudgeConfigError, match="label_prefix ' '"):
        _template_judge(oracle_dir, label_prefix=" ")


def test_too_long_inputs_fail_without_truncation(oracle_dir):
    with _template_judge(oracle_dir, max_length=20) as judge:
        verdicts = judge(["p", "p"], ["short+", "x" * 30 + "+"])
    assert verdicts[0].value == 1
    assert verdicts[1].value == -1 and "longer than max_length 20" in verdicts[1].reason


def test_missing_metadata_placeholder_is_a_failure_of_that_sample_only(oracle_dir):
    with _template_judge(oracle_dir, template="{reference} | {completion}") as judge:
        verdicts = judge(["p"] * 3, ["a+", "b-", "c+"], [{"reference": "r"}, {"reference": ["x", "y"]}, {}])
    assert [v.value for v in verdicts] == [1, 0, -1]
    assert "'reference' is missing" in verdicts[2].reason


def test_concurrent_callers_get_the_sequential_results(policy_dir):
    with _template_judge(policy_dir, batch_size=2) as judge:
        expected = judge(PROMPTS, COMPLETIONS)
        results: list = [None] * 4

        def work(k: int) -> None:
            results[k] = judge(PROMPTS, COMPLETIONS)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r == expected for r in results)


def test_closed_judge_fails_instead_of_violating(oracle_dir):
    judge = _template_judge(oracle_dir)
    judge.close()
    judge.close()  # safe twice
    verdicts = judge(["p", "p"], ["a+", "b-"])
    assert [v.value for v in verdicts] == [-1, -1] and "closed" in verdicts[0].reason


# -- the built-in judges on the local backend ------------------------------------------------------------------------


def test_safety_default_template(long_policy_dir, long_reference):
    with SafetyJudge(model=str(long_policy_dir), positive_label="s", negative_label="u", batch_size=2) as judge:
        verdicts = judge(PROMPTS, COMPLETIONS)
    cats = tpl.format_categories(tpl.LLAMA_GUARD_3_CATEGORIES)
    texts = [
        tpl.SAFETY_TEMPLATE.format(prompt=p, completion=c, categories=cats, positive_label="s", negative_label="u")
        for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    assert "S14: Code Interpreter Abuse." in texts[0] and "Agent: 4\n" in texts[0]
    _check_against_reference(verdicts, [long_reference(t, ("s", "u")) for t in texts])


def test_safety_conversation_format(policy_dir, reference):
    with SafetyJudge(
        model=str(policy_dir), positive_label="s", negative_label="u", prompt_format="conversation"
    ) as judge:
        verdicts = judge(PROMPTS, COMPLETIONS)
    expected = [
        reference("", ("s", "u"), messages=[{"role": "user", "content": p}, {"role": "assistant", "content": c}])
        for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    _check_against_reference(verdicts, expected)


def test_safety_unsafe_is_a_violation(oracle_dir):
    with SafetyJudge(
        model=str(oracle_dir), template="{prompt} {completion}", positive_label="Y", negative_label="N"
    ) as judge:
        verdicts = judge(["q", "q"], ["fine+", "harmful-"])
    assert [v.value for v in verdicts] == [1, 0]
    assert verdicts[1].reason.startswith("N (P(N)=")


def test_false_refusal_default_classifier_template(policy_dir, reference):
    with FalseRefusalJudge(model=str(policy_dir), positive_label="C", negative_label="R", label_prefix="") as judge:
        verdicts = judge(PROMPTS, COMPLETIONS)
    expected = [reference(f"[INST] {c} [\\INST]", ("C", "R")) for c in COMPLETIONS]
    _check_against_reference(verdicts, expected)


@pytest.mark.parametrize(("partial_refusal", "value"), [("violated", 0), ("satisfied", 1), ("failed", -1)])
def test_false_refusal_partial_label(oracle_dir, partial_refusal, value):
    with FalseRefusalJudge(
        model=str(oracle_dir),
        template="{completion}",
        positive_label="Y",
        negative_label="N",
        partial_label="P",
        partial_refusal=partial_refusal,
        label_prefix="",
    ) as judge:
        verdicts = judge(["q"] * 4, ["complied+", "refused-", "partly~", "tie="])
    assert [v.value for v in verdicts] == [1, 0, value, 1]  # a three-way tie goes to the positive label
    assert "partial refusal" in verdicts[2].reason
    assert verdicts[2].probability == (None if value == -1 else pytest.approx(0.0, abs=1e-6))
    assert verdicts[3].probability == pytest.approx(1 / 3)


def test_factuality_routing_and_template(long_policy_dir, long_reference):
    with FactualityJudge(model=str(long_policy_dir), positive_label="T", negative_label="F", batch_size=2) as judge:
        meta = [{"answer": "4"}, {}, {"answer": ["Paris", "City of Paris"]}, {"answer": ""}]
        verdicts = judge(PROMPTS, COMPLETIONS, meta)
        judge.close()
        # Without a ground truth the judge is not applicable: 1, and the (now closed) model is never needed.
        assert [v.value for v in judge(["q", "q"], ["a", "b"], [{}, {"other": 1}])] == [1, 1]
    assert verdicts[1] == verdicts[3] and verdicts[1].value == 1 and verdicts[1].reason == "no ground truth"
    texts = {
        i: tpl.FACTUALITY_TEMPLATE.format(
            prompt=PROMPTS[i], completion=COMPLETIONS[i], answer=a, positive_label="T", negative_label="F"
        )
        for i, a in ((0, "4"), (2, "Paris; City of Paris"))
    }
    assert "Ground truth answer: Paris; City of Paris\n" in texts[2]
    # The tiny tokenizer has a chat template and factuality's prompt_format defaults to auto.
    _check_against_reference(
        [verdicts[0], verdicts[2]], [long_reference(texts[i], ("T", "F"), chat=True) for i in (0, 2)]
    )


def test_factuality_answer_key(oracle_dir):
    with FactualityJudge(
        model=str(oracle_dir),
        template="{answer}: {completion}",
        answer_key="gold",
        positive_label="Y",
        negative_label="N",
    ) as judge:
        verdicts = judge(["q"] * 3, ["x-", "x-", "x+"], [{"gold": "g"}, {"answer": "not this key"}, {"gold": 7}])
    assert [v.value for v in verdicts] == [0, 1, 1]
    assert verdicts[1].reason == "no ground truth"


# -- contract --------------------------------------------------------------------------------------------------------


def test_a_failing_batch_fails_only_its_samples(oracle_dir):
    with _template_judge(oracle_dir, batch_size=1) as judge:
        model = judge._local.model

        def flaky(*, input_ids, **kwargs):
            if input_ids.shape[1] > 12:
                raise RuntimeError("CUDA out of memory (simulated)")
            return model(input_ids=input_ids, **kwargs)

        judge._local.model = flaky
        verdicts = judge(["p"] * 3, ["a+", "a much longer one-", "b-"])
    assert [v.value for v in verdicts] == [1, -1, 0]
    assert "judge model failed on its batch: RuntimeError: CUDA out of memory" in verdicts[1].reason


def test_local_judge_conforms(oracle_dir):
    import contextlib

    @contextlib.contextmanager
    def broken_model(judge):
        model = judge._local.model

        def raise_(**kwargs):
            raise RuntimeError("device lost")

        judge._local.model = raise_
        try:
            yield
        finally:
            judge._local.model = model

    samples = [*DEFAULT_SAMPLES_SHORT, Sample("q", "ends in plus+"), Sample("q", "ends in minus-")]
    assert_judge_conforms(
        TemplateJudge,
        samples,
        params={"model": str(oracle_dir), "template": "{completion}", "positive_label": "Y", "negative_label": "N"},
        failure_injectors={"model raises": broken_model},
    )


DEFAULT_SAMPLES_SHORT = [
    Sample("What is 2 + 2?", "4"),
    Sample("Say hello.", ""),  # an empty completion renders an empty input: -1, not a crash
    Sample("Réponds.", "Voilà : ünïcödé 🙂"),  # characters outside the tiny vocabulary become <unk>
    Sample("Repeat yes.", "yes " * 100),  # longer than the oracle's 256 positions: -1
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(policy_dir):
    with (
        _template_judge(policy_dir, device="cpu") as cpu,
        _template_judge(policy_dir, device="cuda", dtype="float32") as gpu,
        _template_judge(policy_dir) as auto,
    ):
        want, got, got_auto = cpu(PROMPTS, COMPLETIONS), gpu(PROMPTS, COMPLETIONS), auto(PROMPTS, COMPLETIONS)
    assert auto._local.device.type == "cuda"
    for a, b in zip(got, want, strict=True):
        assert a.value == b.value and a.probability == pytest.approx(b.probability, abs=1e-4)
    for a, b in zip(got_auto, want, strict=True):  # bfloat16 weights: close, not equal
        assert a.probability == pytest.approx(b.probability, abs=5e-2)
