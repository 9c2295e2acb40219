"""The two backends of the LLM judges: a local causal LM scored on label tokens, and an OpenAI-compatible endpoint.

Both take a batch of :class:`JudgeInput` (the chat messages one sample sends to the judge model) and return,
per sample, either a result or a ``str`` saying why the judge model could not answer; the judge turns that
string into a -1 verdict. Nothing here raises for a single bad sample.

**Local** (:class:`LocalBackend`), two-token scoring as in the CGPO paper App. B.2: one forward pass over a
left-padded batch, no sampling. For each sample with input ids ``x`` (length ``T``) and label token ids
``l_1..l_k`` it returns ``log softmax(z)[l_j]`` where ``z = logits(x)[T-1]`` is the next-token distribution
at the answer position. Left padding puts every sample's answer position in the last column; position ids
are ``cumsum(mask) - 1`` so that a padded row sees the same positions as the unpadded sequence, which makes
the result independent of what a sample is batched with (up to float rounding).

**HTTP** (:class:`HTTPBackend`): ``POST {base}/chat/completions`` with temperature 0 and a small
``max_tokens``, from a thread pool whose size is the concurrency limit, so at most ``concurrency`` requests
per judge are open at any time whatever the number of calling threads. Each attempt has a total deadline
of ``timeout_seconds`` (connect, send and every read share it). Connection errors, timeouts, malformed
HTTP, 408, 429 and 5xx are retried up to ``max_retries`` times after ``backoff * 2**attempt`` seconds
(capped at 30 s) scaled by a jitter factor in [0.5, 1) drawn from a generator seeded by
``(seed, sample index, attempt)``, so a run's retry schedule is reproducible. Other 4xx answers are not
retried.

Two bounds keep a dead or hung server from stalling a training step. ``deadline_seconds`` bounds one
``complete`` call (a batch), all attempts and backoff included: past it no attempt starts and none waits
longer, and what is left is -1 with the reason. (Per-attempt timeouts alone do not bound a batch: 256
samples, 8 at a time, 4 attempts of 60 s against a server that accepts connections and never answers is
over two hours.) And once one request has used all its attempts on retryable failures, the server is
taken as down: later requests make a single attempt, without backoff, until one succeeds again, so a
killed server costs one retry schedule, not one per sample. Only the standard library is used; it ignores ``http_proxy`` variables, so a judge server on
loopback is never sent through a proxy.

Heavy imports (torch, transformers) happen in :class:`LocalBackend`'s constructor only.
"""

from __future__ import annotations

import http.client
import inspect
import json
import math
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

#: Longest response body read from a judge server; a chat completion of a few tokens is far smaller.
MAX_RESPONSE_BYTES = 1 << 20
#: Longest wait between two attempts.
MAX_BACKOFF_SECONDS = 30.0
#: Characters of a server's body or reply quoted in a reason.
QUOTE_CHARS = 200


@dataclass(frozen=True)
class JudgeInput:
    """What one sample sends to the judge model.

    Attributes:
        messages: ``(role, content)`` pairs. The HTTP backend sends them as they are; the local backend
            renders them with the tokenizer's chat template when ``chat`` is set, and otherwise requires a
            single message whose content is the model input verbatim.
        chat: Render through the tokenizer's chat template (local backend only).
    """

    messages: tuple[tuple[str, str], ...]
    chat: bool = False


@dataclass(frozen=True)
class ChatReply:
    """A judge server's answer to one request.

    Attributes:
        text: ``choices[0].message.content``.
        first_token: The reply's first token as the server reports it in its logprobs, or ``None``.
        first_token_logprobs: Log-probabilities of the candidates for the reply's first token (the sampled
            token and its ``top_logprobs``), keyed by token text; ``None`` when the server sent none.
    """

    text: str
    first_token: str | None = None
    first_token_logprobs: dict[str, float] | None = None


def hub_offline() -> bool:
    """Whether the environment forbids downloads (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in _OFFLINE_VARS)


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class LocalBackend:
    """A transformers causal LM that scores label tokens at the answer position.

    Args:
        model: Local directory or hub id. Under ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` it is loaded with
            ``local_files_only=True``, so a missing model fails at construction instead of downloading.
        labels: Label strings, e.g. ``("safe", "unsafe")``.
        label_prefix: Text put before each label when tokenizing it (e.g. ``" "`` where the model writes the
            answer after a space: ``" True"`` and ``"True"`` are different tokens in BPE vocabularies).
        dtype: ``auto`` (bfloat16 on CUDA where supported, else float16 on CUDA, float32 on CPU) or a name.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: Samples per forward pass.
        max_length: Longest input in tokens (also capped by the model's ``max_position_embeddings``); a
            longer sample is not truncated, which would cut the question or the answer cue, but fails (-1).

    Raises:
        JudgeConfigError: a label is not exactly one token, or two labels share a token.
    """

    def __init__(
        self,
        model: str,
        *,
        labels: Sequence[str],
        label_prefix: str = "",
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        max_length: int = 4096,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cgpo.judging import JudgeConfigError
        from cgpo.models import resolve_model_path

        self._torch = torch
        self._lock = threading.Lock()
        local_only = hub_offline()
        # A named model (smollm2:135m-instruct, tiny:policy) becomes its local folder, converted on first use.
        model = resolve_model_path(model, log=lambda message: sys.stderr.write(message + "\n"))
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_only)
        torch_dtype = _resolve_dtype(torch, dtype, self.device)
        # Any: transformers types from_pretrained per architecture; we only call forward, to() and eval().
        self.model: Any = cast(
            Any, AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, local_files_only=local_only)
        )
        self.model.to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, positions) if isinstance(positions, int) and positions > 0 else max_length
        pad = self.tokenizer.pad_token_id
        # The pad id only fills masked positions, so any id works; eos (or 0) when the tokenizer has no pad.
        self._pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self._keep_last_only = "logits_to_keep" in inspect.signature(self.model.forward).parameters

        ids: list[int] = []
        for label in labels:
            pieces = self.tokenizer.encode(label_prefix + label, add_special_tokens=False)
            if len(pieces) != 1:
                shown = self.tokenizer.convert_ids_to_tokens(pieces)
                raise JudgeConfigError(
                    f"label {label!r} with label_prefix {label_prefix!r} is {len(pieces)} tokens {shown} in the "
                    f"tokenizer of {model!r}; two-token scoring needs each label to be exactly one token: choose "
                    "another label or change label_prefix (a leading space usually gives a different token)"
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise JudgeConfigError(f"labels {list(labels)} share a token in the tokenizer of {model!r}")
        self.label_ids = ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _encode(self, item: JudgeInput) -> list[int]:
        messages = [{"role": role, "content": content} for role, content in item.messages]
        if item.chat:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # The rendered chat text already carries the template's BOS; adding special tokens would double it.
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        if len(messages) != 1:
            raise ValueError("a plain (non-chat) judge input is a single message")
        return list(self.tokenizer.encode(messages[0]["content"], add_special_tokens=True))

    def label_logprobs(self, items: Sequence[JudgeInput]) -> list[list[float] | str]:
        """Per sample, ``log P(label_j | input)`` for each label (in the order given), or a failure reason."""
        torch = self._torch
        out: list[list[float] | str] = ["not scored"] * len(items)
        with self._lock, torch.inference_mode():
            if self.model is None:
                raise RuntimeError("the judge model was closed")
            encoded = [self._encode(item) for item in items]
            todo: list[int] = []
            for i, ids in enumerate(encoded):
                if not ids:
                    out[i] = "empty judge input"
                elif len(ids) > self.max_length:
                    out[i] = f"judge input is {len(ids)} tokens, longer than max_length {self.max_length}"
                else:
                    todo.append(i)
            # Similar lengths in one batch waste less compute on padding; results do not depend on the grouping.
            todo.sort(key=lambda i: len(encoded[i]))
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                try:
                    scores: list[list[float] | str] = list(self._score([encoded[i] for i in chunk]))
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one batch: -1 for it, not the call
                    scores = [f"judge model failed on its batch: {type(exc).__name__}: {exc}"[:300]] * len(chunk)
                for i, row in zip(chunk, scores, strict=True):
                    out[i] = row
        return out

    def _score(self, sequences: list[list[int]]) -> list[list[float]]:
        torch = self._torch
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last_only else {}
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            **kwargs,
        ).logits[:, -1, :]  # [b, V] next-token logits at the answer position
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, self.label_ids]  # [b, k]
        return [[float(v) for v in row] for row in logprobs.cpu()]

    def close(self) -> None:
        with self._lock:
            if self.model is None:
                return
            on_cuda = self.device.type == "cuda"
            self.model = None
            if on_cuda:
                self._torch.cuda.empty_cache()


def _resolve_dtype(torch: Any, dtype: str, device: Any) -> Any:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class _Retry(Exception):
    """An attempt failed in a way that another attempt may fix (connection, timeout, 408/429/5xx)."""


class _Fatal(Exception):
    """An attempt failed in a way that retrying cannot fix (4xx, a body that is not a chat completion)."""


def chat_completions_url(base_url: str) -> str:
    """The chat-completions endpoint for ``base_url``.

    ``http://host:8000`` and ``http://host:8000/v1`` (the OpenAI client's convention) both give
    ``http://host:8000/v1/chat/completions``; a URL that already ends in ``/chat/completions`` is kept.
    """
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def backoff_delay(base: float, attempt: int, seed: int, index: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based) of sample ``index``.

    ``min(30, base * 2**attempt) * u`` with ``u`` in [0.5, 1) from ``random.Random`` seeded by
    ``(seed, index, attempt)``: exponential, jittered so that concurrent samples do not retry in lockstep,
    and reproducible.
    """
    rng = random.Random(f"{seed}:{index}:{attempt}")
    return min(MAX_BACKOFF_SECONDS, base * 2.0**attempt) * (0.5 + 0.5 * rng.random())


class HTTPBackend:
    """Client of an OpenAI-compatible chat-completions server (vLLM, TGI, SGLang).

    Args:
        base_url: Server URL, see :func:`chat_completions_url`.
        model: The served model name sent in each request.
        api_key: Bearer token, or ``None`` to send no ``Authorization`` header.
        timeout_seconds: Total deadline of one attempt.
        max_retries: Further attempts after a retryable failure.
        backoff_seconds: Base of the exponential backoff.
        concurrency: Most requests open at once (the thread-pool size).
        max_tokens: Reply length cap; the judges' replies are one or two short lines.
        top_logprobs: Ask for this many alternatives of each reply token (0: do not ask for logprobs; some
            servers reject the parameter).
        seed: Seeds the backoff jitter.
        deadline_seconds: Bound of one ``complete`` call, attempts and backoff included (None: no bound).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 60.0,
        max_retries: int = 3,
        backoff_seconds: float = 0.5,
        concurrency: int = 8,
        max_tokens: int = 16,
        top_logprobs: int = 0,
        seed: int = 0,
        deadline_seconds: float | None = None,
    ) -> None:
        url = urlsplit(chat_completions_url(base_url))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        self.url = url.geturl()
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path + (f"?{url.query}" if url.query else "")
        self.model = model
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs
        self.seed = seed
        self.deadline_seconds = deadline_seconds
        self._down_lock = threading.Lock()
        self._down = False  # a request used all its attempts on retryable failures, and none has succeeded since
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cgpo-llm-judge")

    def __repr__(self) -> str:  # never show the Authorization header
        return f"HTTPBackend(url={self.url!r}, model={self.model!r})"

    def complete(self, items: Sequence[JudgeInput]) -> list[ChatReply | str]:
        """One chat completion per item, at most ``concurrency`` at a time; a failure is a reason string."""
        deadline = None if self.deadline_seconds is None else time.monotonic() + self.deadline_seconds
        futures = [self._pool.submit(self._request, index, item, deadline) for index, item in enumerate(items)]
        return [future.result() for future in futures]

    def _set_down(self, down: bool) -> None:
        with self._down_lock:
            self._down = down

    def _request(self, index: int, item: JudgeInput, deadline: float | None = None) -> ChatReply | str:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in item.messages],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "n": 1,
            "stream": False,
        }
        if self.top_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        body = json.dumps(payload).encode("utf-8")
        attempts = self.max_retries + 1
        last: _Retry | None = None
        for attempt in range(attempts):
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return self._past_deadline(attempt, last)
            try:
                reply = self._post(body, min(self.timeout_seconds, left))
            except _Fatal as exc:
                return f"judge server error: {exc}"
            except _Retry as exc:
                last = exc
                with self._down_lock:
                    known_down = self._down
                if attempt + 1 == attempts or known_down:
                    self._set_down(True)
                    note = "; the server was already unreachable for earlier samples" if known_down else ""
                    return f"judge server unavailable after {attempt + 1} attempt(s){note}: {exc}"
                pause = backoff_delay(self.backoff_seconds, attempt, self.seed, index)
                time.sleep(max(0.0, min(pause, (math.inf if deadline is None else deadline) - time.monotonic())))
                continue
            self._set_down(False)
            return reply
        raise AssertionError("unreachable")  # the loop always returns

    def _past_deadline(self, attempts: int, last: _Retry | None) -> str:
        tried = f"after {attempts} attempt(s)" if attempts else "before its first attempt"
        cause = f": {last}" if last is not None else ""
        return f"judge server gave no answer within the {self.deadline_seconds:g} s deadline of the batch ({tried}){cause}"

    def _post(self, body: bytes, timeout: float) -> ChatReply:
        deadline = time.monotonic() + timeout
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
            sock = conn.sock  # kept: getresponse() may detach it from conn, and every read needs the deadline
            _arm(sock, deadline)
            conn.request("POST", self._path, body=body, headers=self._headers)
            _arm(sock, deadline)
            response = conn.getresponse()
            raw = bytearray()
            while True:
                _arm(sock, deadline)
                chunk = response.read1(65536)
                if not chunk:
                    break
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise _Fatal(f"response body larger than {MAX_RESPONSE_BYTES} bytes")
        except ssl.SSLCertVerificationError as exc:
            raise _Fatal(f"TLS certificate rejected: {exc}") from None
        except TimeoutError:
            raise _Retry(f"no complete answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        text = bytes(raw).decode("utf-8", errors="replace")
        status = response.status
        if status == 408 or status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}: {quote(text)}")
        if status != 200:
            raise _Fatal(f"HTTP {status}: {quote(text)}")
        return parse_chat_completion(text)

    def close(self) -> None:
        # Requests in flight finish on their own deadline; queued ones are dropped (their callers get -1).
        self._pool.shutdown(wait=False, cancel_futures=True)


def _arm(sock: socket.socket | None, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    if sock is not None:
        sock.settimeout(remaining)


def quote(text: str) -> str:
    """``text`` stripped and cut to :data:`QUOTE_CHARS` characters, as a ``repr`` for a verdict's reason."""
    text = text.strip()
    return repr(text[:QUOTE_CHARS] + ("..." if len(text) > QUOTE_CHARS else ""))


def parse_chat_completion(body: str) -> ChatReply:
    """Read ``choices[0].message.content`` and the first token's logprobs from a chat-completions body.

    Raises:
        _Fatal: the body is not a chat completion (no retry: the server answered, just not usefully).
    """
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Fatal(f"not a chat completion: {quote(body)}") from None
    if not isinstance(content, str):
        raise _Fatal(f"reply content is {type(content).__name__}, not text: {quote(body)}")
    return ChatReply(content, *_first_token_logprobs(choice.get("logprobs")))


def _first_token_logprobs(logprobs: Any) -> tuple[str | None, dict[str, float] | None]:
    # OpenAI layout: {"content": [{"token": t, "logprob": x, "top_logprobs": [{"token": t, "logprob": x}, ...]}]}
    if not isinstance(logprobs, Mapping):
        return None, None
    content = logprobs.get("content")
    if not isinstance(content, list) or not content or not isinstance(content[0], Mapping):
        return None, None
    first = content[0]
    sampled = first.get("token") if isinstance(first.get("token"), str) else None
    candidates = [first, *(first.get("top_logprobs") or [])]
    out: dict[str, float] = {}
    for cand in candidates:
        if not isinstance(cand, Mapping):
            continue
        token, value = cand.get("token"), cand.get("logprob")
        if isinstance(token, str) and isinstance(value, int | float) and math.isfinite(value):
            out[token] = float(value)
    return sampled, (out or None)
