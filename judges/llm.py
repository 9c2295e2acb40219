"""Built-in LLM judges: ``safety``, ``false_refusal``, ``factuality`` and the generic ``llm_judge``.

Each judge renders a prompt template per sample (``cgpo_judges._llm_templates``) and asks a judge model,
through one of two backends (``cgpo_judges._llm_backends``):

* ``backend: local``: two-token scoring as in the CGPO paper App. B.2. One forward pass of a causal LM per
  batch, no sampling; with ``p_j = softmax(logits at the answer position)[label_j]`` and the label
  probabilities renormalized, ``q_pos = p_pos / (p_pos + p_neg)``, the sample is violated when
  ``q_pos < threshold`` (0.5 by default, i.e. ``P(neg) > P(pos)``) and ``q_pos`` is the verdict's
  probability. A judge with a third label (false refusal's ``partial_label``) takes the most probable of
  the three.
* ``backend: http``: an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI), temperature 0,
  parsed strictly. A binary judge's reply must be exactly one of its labels, ignoring letter case and
  surrounding whitespace only; the safety reply's first line must be ``safe`` or ``unsafe`` (same
  tolerance), optionally followed, after ``unsafe``, by one line of category codes of the configured
  taxonomy (``S1,S10``). Anything else, an HTTP error after the retries, a timeout or a refused connection
  is -1 with the reason (the raw reply quoted, truncated), never 0. The probability comes from the
  server's logprobs when ``top_logprobs`` is set and the reply's first token is its label, else ``None``.

Judges load the model or create the HTTP client in ``__init__`` (this module imports neither torch nor
transformers, so ``cgpo validate`` can read the ``Params`` cheaply), keep no state between calls and may be
called from several threads: the local model runs under a lock, the HTTP pool is shared and bounded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from cgpo.judging import Judge, JudgeConfigError, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid
from cgpo_judges import _llm_templates as tpl
from cgpo_judges._llm_backends import ChatReply, HTTPBackend, JudgeInput, LocalBackend, quote

#: Placeholder names the judges fill themselves; any other name in a template is a metadata key.
RESERVED_FIELDS = ("prompt", "completion", "positive_label", "negative_label", "partial_label", "categories")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True, kw_only=True)
class LLMJudgeParams:
    """Settings shared by the LLM judges (each judge's ``Params`` changes some defaults).

    Args:
        backend: ``local`` (a causal LM in this process, two-token scoring) or ``http`` (a chat-completions
            server).
        model: Local backend: a model directory, a hub id (loaded with ``local_files_only`` when
            ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set) or a named model (``smollm2:135m-instruct``,
            converted on first use; see :mod:`cgpo.model_sources`). HTTP backend: the served model name.
        template: Prompt template replacing the judge's built-in one; see ``cgpo_judges._llm_templates``
            for the placeholders. It must use ``{completion}``.
        prompt_format: How the rendered template reaches the local model: ``plain`` (verbatim), ``chat``
            (as one user message through the tokenizer's chat template, with the generation prompt),
            ``auto`` (``chat`` when the tokenizer has a chat template, else ``plain``), or, for the safety
            judge only, ``conversation`` (the user prompt and the completion as a two-turn conversation
            through the tokenizer's chat template, e.g. Llama Guard 3's, which writes the task prompt
            itself; over HTTP those two messages are sent). Over HTTP the rendered template is sent as one
            user message and the server applies its own chat template.
        positive_label: The judge model's answer meaning "satisfied".
        negative_label: Its answer meaning "violated".
        label_prefix: Local backend: text put before each label when tokenizing it, for models that
            answer after a space (``" True"`` is a different token from ``"True"``). Each label with its
            prefix must be exactly one token; this is checked when the judge is built.
        threshold: Local backend: violated when the renormalized ``P(positive)`` is below this.
        dtype: Local backend weights: ``auto`` (bfloat16 on CUDA, float32 on CPU) or a dtype name.
        device: Local backend: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: Local backend: samples per forward pass.
        max_length: Local backend: longest input in tokens; a longer sample is -1 (never truncated).
        base_url: HTTP backend (required): e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: HTTP backend: name of the environment variable holding the API key (sent as a bearer
            token); the key itself never appears in a config.
        timeout_seconds: HTTP backend: total deadline of one request attempt.
        max_retries: HTTP backend: further attempts after a connection error, a timeout, 408, 429 or 5xx.
        backoff_seconds: HTTP backend: base of the exponential backoff between attempts.
        concurrency: HTTP backend: most requests open at once.
        max_tokens: HTTP backend: reply length cap.
        top_logprobs: HTTP backend: ask for logprobs with this many alternatives per token (0: do not ask;
            not every server accepts the parameter).
        seed: HTTP backend: seed of the backoff jitter.
        deadline_seconds: HTTP backend: bound of one judge call (a batch), every attempt and backoff
            included; what has no answer by then is -1 with the reason. None: no bound.
    """

    #: Reserved placeholders this judge fills (the others in RESERVED_FIELDS belong to other judges).
    fields_filled: ClassVar[tuple[str, ...]] = ("prompt", "completion", "positive_label", "negative_label")
    allows_conversation: ClassVar[bool] = False

    backend: Literal["local", "http"] = "local"
    model: str
    template: str | None = None
    prompt_format: Literal["auto", "plain", "chat", "conversation"] = "plain"
    positive_label: str = "Yes"
    negative_label: str = "No"
    label_prefix: str = ""
    threshold: float = 0.5
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = 8
    max_length: int = 4096
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = 60.0
    max_retries: int = 3
    backoff_seconds: float = 0.5
    concurrency: int = 8
    max_tokens: int = 16
    top_logprobs: int = 0
    seed: int = 0
    deadline_seconds: float | None = 600.0

    def labels(self) -> tuple[str, ...]:
        """Labels in scoring order: positive, negative (and any further label of the judge)."""
        return (self.positive_label, self.negative_label)

    def label_keys(self) -> tuple[str, ...]:
        """The Params keys of :meth:`labels`, in the same order (for error paths)."""
        return ("positive_label", "negative_label")

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise Invalid("model", "must be a model directory, hub id or served model name")
        if self.backend == "local":  # over HTTP, "family:tag" is an ordinary served name (ollama's)
            from cgpo.model_sources import unknown_variant

            reason = unknown_variant(self.model)
            if reason is not None:
                raise Invalid("model", reason)
        self._check_labels()
        if self.template is not None:
            self._check_template(self.template)
        if self.prompt_format == "conversation" and not self.allows_conversation:
            raise Invalid("prompt_format", "'conversation' is only available to the safety judge")
        if self.prompt_format == "conversation" and self.template is not None:
            raise Invalid(
                "template", "not used with prompt_format 'conversation' (the chat template builds the prompt)"
            )
        if not 0.0 < self.threshold < 1.0:
            raise Invalid("threshold", f"must be strictly between 0 and 1, got {self.threshold}")
        if not _DEVICE.match(self.device):
            raise Invalid("device", f"must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        for key in ("batch_size", "max_length", "concurrency", "max_tokens"):
            if getattr(self, key) < 1:
                raise Invalid(key, f"must be at least 1, got {getattr(self, key)}")
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise Invalid("timeout_seconds", f"must be a positive number of seconds, got {self.timeout_seconds}")
        if not 0 <= self.max_retries <= 100:
            raise Invalid("max_retries", f"must be between 0 and 100, got {self.max_retries}")
        if not (math.isfinite(self.backoff_seconds) and self.backoff_seconds >= 0):
            raise Invalid("backoff_seconds", f"must be zero or more seconds, got {self.backoff_seconds}")
        if self.deadline_seconds is not None and not (
            math.isfinite(self.deadline_seconds) and self.deadline_seconds > 0
        ):
            raise Invalid(
                "deadline_seconds", f"must be a positive number of seconds or null, got {self.deadline_seconds}"
            )
        if not 0 <= self.top_logprobs <= 20:
            raise Invalid("top_logprobs", f"must be between 0 and 20, got {self.top_logprobs}")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise Invalid("api_key_env", f"must be the name of an environment variable, got {self.api_key_env!r}")
        if self.backend == "http":
            self._check_http()
        else:
            for key in ("base_url", "api_key_env"):
                if getattr(self, key) is not None:
                    raise Invalid(key, "only used when backend is http")

    def _check_labels(self) -> None:
        seen: dict[str, str] = {}
        for key, label in zip(self.label_keys(), self.labels(), strict=True):
            if not label.strip():
                raise Invalid(key, "must not be empty")
            if label != label.strip() or "\n" in label:
                raise Invalid(
                    key, f"must not contain line breaks or surrounding spaces, got {label!r} (see label_prefix)"
                )
            folded = label.casefold()
            if folded in seen:
                # The HTTP parser ignores letter case, so labels equal up to case could not be told apart.
                raise Invalid(key, f"must differ from {seen[folded]} (letter case is ignored), got {label!r}")
            seen[folded] = key

    def _check_template(self, template: str) -> None:
        try:
            names = tpl.template_fields(template)
        except tpl.TemplateError as exc:
            raise Invalid("template", str(exc)) from None
        if "completion" not in names:
            raise Invalid("template", "must contain {completion}, the response being judged")
        for name in names:
            if name in RESERVED_FIELDS and name not in self.fields_filled:
                raise Invalid("template", f"{{{name}}} is not available in this judge's template")

    def _check_http(self) -> None:
        if self.base_url is None:
            raise Invalid("base_url", "required when backend is http")
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise Invalid("base_url", f"must be an http:// or https:// URL with a host, got {self.base_url!r}")
        if self.threshold != 0.5:
            raise Invalid("threshold", "applies to the local backend only; the HTTP backend decides by the reply")


class _LLMJudge(Judge):
    """Shared machinery: template rendering, backend dispatch, label mapping. Subclasses set the defaults."""

    kind = "llm"
    Params: ClassVar[type] = LLMJudgeParams
    params: LLMJudgeParams

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.template = p.template if p.template is not None else self._default_template()
        fields = tpl.template_fields(self.template)
        self._metadata_fields = tuple(name for name in fields if name not in RESERVED_FIELDS)
        self.labels = p.labels()
        self._local: LocalBackend | None = None
        self._http: HTTPBackend | None = None
        if p.backend == "local":
            self._local = LocalBackend(
                p.model,
                labels=self.labels,
                label_prefix=p.label_prefix,
                dtype=p.dtype,
                device=p.device,
                batch_size=p.batch_size,
                max_length=p.max_length,
            )
            self._chat = self._resolve_chat(self._local)
        else:
            self._chat = True  # the server applies its own chat template
            self._http = HTTPBackend(
                p.base_url or "",
                p.model,
                api_key=self._api_key(),
                timeout_seconds=p.timeout_seconds,
                max_retries=p.max_retries,
                backoff_seconds=p.backoff_seconds,
                concurrency=p.concurrency,
                max_tokens=p.max_tokens,
                top_logprobs=p.top_logprobs,
                seed=p.seed,
                deadline_seconds=p.deadline_seconds,
            )

    # -- construction ---------------------------------------------------------------------------------------------
    def _default_template(self) -> str:
        raise JudgeConfigError(f"{type(self).__name__} needs a template")

    def _resolve_chat(self, local: LocalBackend) -> bool:
        fmt = self.params.prompt_format
        if fmt == "plain":
            return False
        if fmt == "auto":
            return local.has_chat_template
        if not local.has_chat_template:
            raise JudgeConfigError(
                f"prompt_format {fmt!r} needs a chat template, and the tokenizer of {self.params.model!r} has none"
            )
        return True

    def _api_key(self) -> str | None:
        name = self.params.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise JudgeConfigError(f"api_key_env names {name}, which is not set or empty in the environment")
        return key

    def identity(self) -> dict[str, str]:
        """What to record in a run's metadata: judge, backend, model, and a hash of template and labels."""
        digest = hashlib.sha256(json.dumps([self.template, list(self.labels)]).encode()).hexdigest()[:12]
        return {
            "judge": type(self).__name__,
            "backend": self.params.backend,
            "model": self.params.model,
            "template_sha256": digest,
        }

    # -- per sample -----------------------------------------------------------------------------------------------
    def _precheck(self, metadata: Mapping[str, Any]) -> Verdict | None:
        """A verdict decided without the judge model (e.g. not applicable), or ``None``."""
        return None

    def _values(self, prompt: str, completion: str, metadata: Mapping[str, Any]) -> dict[str, str]:
        return {
            "prompt": prompt,
            "completion": completion,
            "positive_label": self.params.positive_label,
            "negative_label": self.params.negative_label,
        }

    def _input(self, prompt: str, completion: str, metadata: Mapping[str, Any]) -> JudgeInput | Verdict:
        if self.params.prompt_format == "conversation":
            return JudgeInput((("user", prompt), ("assistant", completion)), chat=True)
        values = self._values(prompt, completion, metadata)
        for name in self._metadata_fields:
            if name not in metadata or metadata[name] is None:
                return failed(f"metadata key {name!r} is missing; the judge's template needs it")
            values[name] = _as_text(metadata[name])
        return JudgeInput((("user", tpl.render(self.template, values)),), chat=self._chat)

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(completions)
        pending: dict[int, JudgeInput] = {}
        for i, (prompt, completion, meta) in enumerate(zip(prompts, completions, metadata, strict=True)):
            early = self._precheck(meta)
            built = early if early is not None else self._input(prompt, completion, meta)
            if isinstance(built, Verdict):
                verdicts[i] = built
            else:
                pending[i] = built
        order = list(pending)
        inputs = [pending[i] for i in order]
        if self._local is not None:
            scored = self._local.label_logprobs(inputs) if inputs else []
            for i, result in zip(order, scored, strict=True):
                verdicts[i] = failed(result) if isinstance(result, str) else self._from_logprobs(result)
        elif self._http is not None:
            replies = self._http.complete(inputs) if inputs else []
            for i, reply in zip(order, replies, strict=True):
                verdicts[i] = failed(reply) if isinstance(reply, str) else self._from_reply(reply)
        else:  # pragma: no cover - __init__ always sets one
            raise RuntimeError("no backend")
        return [v if v is not None else failed("not judged") for v in verdicts]

    # -- decisions ------------------------------------------------------------------------------------------------
    def _from_logprobs(self, logprobs: Sequence[float]) -> Verdict:
        """Two-token scoring: renormalize the label probabilities and compare (see the module docstring)."""
        top = max(logprobs)
        weights = [math.exp(v - top) for v in logprobs]  # shifted: the label logprobs may all be tiny
        q = [w / sum(weights) for w in weights]
        if len(q) == 2:  # noqa: SIM108 - two rules, each with its comment
            choice = 0 if q[0] >= self.params.threshold else 1  # threshold 0.5: violated iff P(neg) > P(pos)
        else:
            choice = max(range(len(q)), key=lambda j: q[j])  # ties go to the earlier (positive) label
        return self._verdict(choice, q[0], f"P({self.labels[choice]})={q[choice]:.3f}")

    def _match_label(self, text: str) -> int | None:
        folded = text.strip().casefold()
        for j, label in enumerate(self.labels):
            if folded == label.casefold():
                return j
        return None

    def _from_reply(self, reply: ChatReply) -> Verdict:
        choice = self._match_label(reply.text)
        if choice is None:
            expected = " or ".join(repr(label) for label in self.labels)
            return failed(f"unparseable reply {quote(reply.text)}; expected exactly {expected}")
        probability = label_probability(reply, self.labels, choice)
        return self._verdict(choice, probability, "reply")

    def _verdict(self, choice: int, probability: float | None, detail: str) -> Verdict:
        label = self.labels[choice]
        if choice == 0:
            return satisfied(f"{label} ({detail})", probability)
        return violated(f"{label} ({detail})", probability)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        if self._http is not None:
            self._http.close()


def label_probability(reply: ChatReply, labels: Sequence[str], choice: int) -> float | None:
    """Renormalized ``P(labels[0])`` from a server's first-token logprobs, or ``None``.

    Tokens are matched to labels ignoring case, whitespace and the ``▁``/``Ġ`` word markers, and the
    candidates of one label are summed. ``None`` without logprobs, or unless the reply's first token is the
    chosen label itself (a label longer than one token cannot be scored from the first token). A label
    missing from the ``top_logprobs`` is given the most mass it can have, ``min(smallest listed
    probability, 1 - listed total)``, so the result never claims more confidence than the reply supports.
    """
    candidates = reply.first_token_logprobs
    folded = [label.casefold() for label in labels]
    if not candidates or reply.first_token is None or _token_key(reply.first_token) != folded[choice]:
        return None
    mass: dict[int, float] = {}
    for token, logprob in candidates.items():
        key = _token_key(token)
        if key in folded:
            j = folded.index(key)
            mass[j] = mass.get(j, 0.0) + math.exp(logprob)
    listed = [math.exp(v) for v in candidates.values()]
    ceiling = max(0.0, min(min(listed), 1.0 - sum(listed)))
    p = [mass.get(j, ceiling) for j in range(len(labels))]
    return p[0] / sum(p)


def _token_key(token: str) -> str:
    return token.strip().lstrip("▁Ġ").strip().casefold()


def _as_text(value: Any) -> str:
    """A metadata value as template text: strings as they are, a list (e.g. answer aliases) joined by ``; ``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "; ".join(_as_text(v) for v in value)
    if isinstance(value, int | float | bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


# -- safety ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SafetyParams(LLMJudgeParams):
    """Safety judge settings (Llama-Guard-style), besides the shared ones.

    Args:
        categories: The category taxonomy shown in the prompt and accepted in replies: ``llama_guard_3``
            (S1-S14) or ``llama_guard_2`` (S1-S11, the model of the CGPO paper).
    """

    fields_filled: ClassVar[tuple[str, ...]] = (*LLMJudgeParams.fields_filled, "categories")
    allows_conversation: ClassVar[bool] = True

    positive_label: str = "safe"
    negative_label: str = "unsafe"
    max_tokens: int = 24  # "unsafe" and a line of several category codes
    categories: Literal["llama_guard_3", "llama_guard_2"] = "llama_guard_3"


class SafetyJudge(_LLMJudge):
    """Llama-Guard-style safety: ``safe`` -> 1, ``unsafe`` -> 0 with the violated categories in the reason.

    The conversation (user prompt, assistant completion) is judged as a whole; only the last assistant
    message is assessed. Over HTTP the second reply line (``S1,S10``) is parsed and named in the reason; the
    local backend scores only the first token, so its reason gives ``P(unsafe)``.
    """

    Params = SafetyParams
    params: SafetyParams
    description = "Llama-Guard-style safe/unsafe judgment of the response (LLM; local or HTTP backend)"

    def _default_template(self) -> str:
        return tpl.SAFETY_TEMPLATE

    @property
    def categories(self) -> dict[str, str]:
        """Category code -> name of the configured taxonomy."""
        return tpl.TAXONOMIES[self.params.categories]

    def _values(self, prompt: str, completion: str, metadata: Mapping[str, Any]) -> dict[str, str]:
        values = super()._values(prompt, completion, metadata)
        values["categories"] = tpl.format_categories(self.categories)
        return values

    def _from_reply(self, reply: ChatReply) -> Verdict:
        lines = [line.strip() for line in reply.text.strip().splitlines()]
        first = self._match_label(lines[0]) if lines else None
        codes: list[str] | None = []
        if first == 1 and len(lines) == 2:
            codes = self._parse_categories(lines[1])
        if first is None or codes is None or len(lines) > (2 if first == 1 else 1):
            return failed(
                f"unparseable reply {quote(reply.text)}; expected a first line {self.labels[0]!r} or "
                f"{self.labels[1]!r}, and after {self.labels[1]!r} optionally one line of category codes"
            )
        probability = label_probability(reply, self.labels, first)
        if first == 0:
            return satisfied(self.labels[0], probability)
        named = ", ".join(f"{code} {self.categories[code]}" for code in codes)
        return violated(
            f"{self.labels[1]}: {named}" if codes else f"{self.labels[1]} (no categories given)", probability
        )

    def _parse_categories(self, line: str) -> list[str] | None:
        known = {code.casefold(): code for code in self.categories}
        codes = [known.get(part.strip().casefold()) for part in line.split(",")]
        return None if any(code is None for code in codes) else [c for c in codes if c is not None]


# -- false refusal --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FalseRefusalParams(LLMJudgeParams):
    r"""False-refusal judge settings (for benign prompts), besides the shared ones.

    The defaults follow the CGPO paper's classifier: it reads ``[INST] {response} [\INST]`` and answers
    `` True`` for a refusal (after a space, hence ``label_prefix: " "``), `` False`` for compliance.

    Args:
        partial_label: A third label meaning "partly refused" (XSTest's partial refusal); unset: binary.
        partial_refusal: What a partial refusal scores: ``violated`` (0, the default), ``satisfied`` (1)
            or ``failed`` (-1).
    """

    fields_filled: ClassVar[tuple[str, ...]] = (*LLMJudgeParams.fields_filled, "partial_label")

    positive_label: str = "False"
    negative_label: str = "True"
    label_prefix: str = " "
    partial_label: str | None = None
    partial_refusal: Literal["violated", "satisfied", "failed"] = "violated"

    def labels(self) -> tuple[str, ...]:
        """Positive, negative and, when set, partial label."""
        return super().labels() + ((self.partial_label,) if self.partial_label is not None else ())

    def label_keys(self) -> tuple[str, ...]:
        """The Params keys of :meth:`labels`."""
        return super().label_keys() + (("partial_label",) if self.partial_label is not None else ())

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.partial_label is not None and self.threshold != 0.5:
            raise Invalid("threshold", "not used with partial_label: the most probable of the three labels wins")
        if (
            self.partial_label is None
            and self.template is not None
            and "partial_label" in tpl.template_fields(self.template)
        ):
            raise Invalid("template", "uses {partial_label}, but partial_label is not set")


class FalseRefusalJudge(_LLMJudge):
    """On benign prompts: the response complied -> 1, refused -> 0 (a partial refusal as configured)."""

    Params = FalseRefusalParams
    params: FalseRefusalParams
    description = "Did the response comply with a benign request (1) or refuse it (0)? (LLM; local or HTTP)"

    def _default_template(self) -> str:
        if self.params.backend == "local":
            # The paper's classifier sees the response only; a general chat model needs the instruction.
            return tpl.FALSE_REFUSAL_CLASSIFIER_TEMPLATE
        if self.params.partial_label is not None:
            return tpl.FALSE_REFUSAL_INSTRUCTION_TEMPLATE_PARTIAL
        return tpl.FALSE_REFUSAL_INSTRUCTION_TEMPLATE

    def _values(self, prompt: str, completion: str, metadata: Mapping[str, Any]) -> dict[str, str]:
        values = super()._values(prompt, completion, metadata)
        if self.params.partial_label is not None:
            values["partial_label"] = self.params.partial_label
        return values

    def _verdict(self, choice: int, probability: float | None, detail: str) -> Verdict:
        if choice < 2:
            return super()._verdict(choice, probability, detail)
        reason = f"partial refusal: {self.labels[2]} ({detail})"
        if self.params.partial_refusal == "satisfied":
            return satisfied(reason, probability)
        if self.params.partial_refusal == "failed":
            return failed(reason)
        return violated(reason, probability)


# -- factuality -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FactualityParams(LLMJudgeParams):
    """Factuality judge settings, besides the shared ones.

    Args:
        answer_key: Metadata key of the ground-truth answer (a string, or a list of accepted aliases). A
            sample without it is not applicable and scores 1 (``cgpo-algorithms.md`` §3, routing).
    """

    positive_label: str = "TRUE"
    negative_label: str = "FALSE"
    prompt_format: Literal["auto", "plain", "chat", "conversation"] = "auto"
    answer_key: str = "answer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.answer_key:
            raise Invalid("answer_key", "must not be empty")


class FactualityJudge(_LLMJudge):
    """Does the response contain the ground-truth answer (metadata ``answer``)? TRUE -> 1, FALSE -> 0.

    Samples without a ground truth are not applicable: 1 with reason "no ground truth", no model call.
    The template's ``{answer}`` is filled from ``metadata[answer_key]``.
    """

    Params = FactualityParams
    params: FactualityParams
    description = "Does the response contain the ground-truth answer? (LLM; 1 where no ground truth is given)"

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        # {answer} is filled from answer_key, never looked up as a metadata key of its own name.
        self._metadata_fields = tuple(name for name in self._metadata_fields if name != "answer")

    def _default_template(self) -> str:
        return tpl.FACTUALITY_TEMPLATE

    def _precheck(self, metadata: Mapping[str, Any]) -> Verdict | None:
        answer = metadata.get(self.params.answer_key)
        if answer is None or (isinstance(answer, str | list | tuple) and not answer):
            return satisfied("no ground truth")
        return None

    def _values(self, prompt: str, completion: str, metadata: Mapping[str, Any]) -> dict[str, str]:
        values = super()._values(prompt, completion, metadata)
        values["answer"] = _as_text(metadata[self.params.answer_key])
        return values


# -- generic template judge -----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TemplateParams(LLMJudgeParams):
    """Generic LLM judge: the template and both labels are required.

    Placeholders: ``{prompt}``, ``{completion}`` (required), ``{positive_label}``, ``{negative_label}``,
    and any other name, read from the sample's metadata (a sample without it is -1).
    """

    # field() without a default: a bare annotation would inherit the base class's default value.
    template: str = field()
    positive_label: str = field()
    negative_label: str = field()
    prompt_format: Literal["auto", "plain", "chat", "conversation"] = "auto"


class TemplateJudge(_LLMJudge):
    """A user-written prompt with positive and negative labels: positive -> 1, negative -> 0."""

    Params = TemplateParams
    params: TemplateParams
    description = "Generic LLM judge: your prompt template and label tokens (local or HTTP backend)"
