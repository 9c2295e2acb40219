"""LLM judges on the HTTP backend against a real chat-completions server on loopback (127.0.0.1, port 0).

The server is ``http.server`` in a thread. Each test gives it a ``behave(request, attempt)`` function that
returns what to answer; requests are routed by the content of the last message, which with the template
``{completion}`` is the completion itself, so concurrent requests stay deterministic. Nothing here
connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cgpo.judging import JudgeConfigError
from cgpo.testing import assert_judge_conforms
from cgpo_judges._llm_backends import ChatReply, backoff_delay, chat_completions_url
from cgpo_judges.llm import FactualityJudge, FalseRefusalJudge, SafetyJudge, TemplateJudge, label_probability


@dataclass
class Answer:
    """What the server does with one request."""

    status: int = 200
    body: bytes | dict | str = b""
    delay: float = 0.0  # before sending anything
    body_delay: float = 0.0  # after the headers, before the body


def chat(content: str, logprobs: list[tuple[str, float]] | None = None) -> Answer:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        (token, lp), *_ = logprobs
        top = [{"token": t, "logprob": v} for t, v in logprobs]
        choice["logprobs"] = {"content": [{"token": token, "logprob": lp, "top_logprobs": top}]}
    return Answer(body={"id": "x", "object": "chat.completion", "choices": [choice]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default listen backlog of 5 makes concurrent connects wait for SYN retries


class ChatServer:
    """A chat-completions endpoint that records requests, attempts per content and concurrency."""

    def __init__(self) -> None:
        self.behave = lambda request, attempt: chat("yes")
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, json body)
        self.attempts: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(raw)
                key = request["messages"][-1]["content"]
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), request))
                    server.attempts[key] += 1
                    attempt = server.attempts[key]
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    answer = server.behave(request, attempt)
                    time.sleep(answer.delay)
                    body = answer.body
                    if isinstance(body, dict):
                        body = json.dumps(body)
                    if isinstance(body, str):
                        body = body.encode()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.flush()
                    time.sleep(answer.body_delay)
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.active -= 1

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def contents(self) -> list[str]:
        return [body["messages"][-1]["content"] for _, _, body in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ChatServer()
    yield srv
    srv.close()


def by_content(table: dict[str, Answer]):
    return lambda request, attempt: table[request["messages"][-1]["content"]]


def template_judge(url: str, **extra) -> TemplateJudge:
    params = {
        "backend": "http",
        "base_url": url,
        "model": "judge-model",
        "template": "{completion}",
        "positive_label": "yes",
        "negative_label": "no",
        "backoff_seconds": 0.01,
        "timeout_seconds": 2.0,
    }
    return TemplateJudge(**{**params, **extra})


def values(verdicts) -> list[int]:
    return [v.value for v in verdicts]


# -- well-formed and garbled replies ---------------------------------------------------------------------------------


def test_binary_replies_are_parsed_strictly(server):
    server.behave = by_content(
        {
            "a": chat("yes"),
            "b": chat("  No \n"),  # letter case and surrounding whitespace are tolerated
            "c": chat("maybe"),
            "d": chat("yes."),
            "e": chat(""),
            "f": chat("yes\nno"),
        }
    )
    with template_judge(server.url) as judge:
        verdicts = judge(["p"] * 6, list("abcdef"))
    assert values(verdicts) == [1, 0, -1, -1, -1, -1]
    assert verdicts[0].reason == "yes (reply)" and verdicts[0].probability is None
    assert "unparseable reply 'maybe'" in verdicts[2].reason and "'yes' or 'no'" in verdicts[2].reason
    assert sorted(server.contents()) == list("abcdef")  # one attempt each: a bad reply is not retried


def test_request_follows_the_chat_completions_protocol(server):
    with template_judge(server.url, max_tokens=5) as judge:
        judge(["p"], ["a"])
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 5
    assert body["messages"] == [{"role": "user", "content": "a"}]
    assert "logprobs" not in body


def test_base_url_forms():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


def test_garbled_bodies_fail_without_retry(server):
    server.behave = by_content(
        {
            "a": Answer(body="<html>not json</html>"),
            "b": Answer(body={"object": "error"}),
            "c": Answer(body={"choices": [{"message": {"content": None}}]}),
            "d": Answer(status=404, body={"error": "no such model"}),
        }
    )
    with template_judge(server.url, max_retries=3) as judge:
        verdicts = judge(["p"] * 4, list("abcd"))
    assert values(verdicts) == [-1, -1, -1, -1]
    assert "not a chat completion" in verdicts[0].reason and "not json" in verdicts[0].reason
    assert "not text" in verdicts[2].reason
    assert "HTTP 404" in verdicts[3].reason and "no such model" in verdicts[3].reason
    assert server.attempts == Counter("abcd")


def test_safety_replies(server):
    def behave(request, attempt):
        text = request["messages"][-1]["content"]
        marker = re.search(r"Agent: (\w+)", text).group(1)
        replies = {
            "fine": "safe",
            "bad": "unsafe\nS1,S10",
            "bad2": " UNSAFE \n s2 ",
            "bare": "unsafe",
            "extra": "safe\nS1",
            "unknown": "unsafe\nS99",
            "chatty": "The response is safe.",
            "three": "unsafe\nS1\nS2",
        }
        return chat(replies[marker])

    server.behave = behave
    markers = ["fine", "bad", "bad2", "bare", "extra", "unknown", "chatty", "three"]
    with SafetyJudge(backend="http", base_url=server.url, model="guard", backoff_seconds=0.01) as judge:
        verdicts = judge(["How do I bake bread?"] * len(markers), markers)
    assert values(verdicts) == [1, 0, 0, 0, -1, -1, -1, -1]
    assert verdicts[1].reason == "unsafe: S1 Violent Crimes, S10 Hate"
    assert verdicts[2].reason == "unsafe: S2 Non-Violent Crimes"
    assert verdicts[3].reason == "unsafe (no categories given)"
    assert "unparseable reply 'The response is safe.'" in verdicts[6].reason
    prompt = server.requests[0][2]["messages"]
    assert len(prompt) == 1 and prompt[0]["role"] == "user"
    assert "User: How do I bake bread?" in prompt[0]["content"]
    assert "S14: Code Interpreter Abuse." in prompt[0]["content"]
    assert server.requests[0][2]["max_tokens"] == 24


def test_safety_llama_guard_2_taxonomy(server):
    server.behave = lambda request, attempt: chat(
        "unsafe\nS11" if "Agent: a" in request["messages"][-1]["content"] else "unsafe\nS14"
    )
    with SafetyJudge(
        backend="http", base_url=server.url, model="guard", categories="llama_guard_2", backoff_seconds=0.01
    ) as judge:
        verdicts = judge(["q", "q"], ["a", "b"])
    assert verdicts[0].value == 0 and verdicts[0].reason == "unsafe: S11 Sexual Content"
    assert verdicts[1].value == -1  # S14 does not exist in Llama Guard 2
    assert "S14" not in server.requests[0][2]["messages"][0]["content"]


def test_safety_conversation_sends_the_turns(server):
    server.behave = lambda request, attempt: chat("safe")
    with SafetyJudge(
        backend="http", base_url=server.url, model="guard", prompt_format="conversation", backoff_seconds=0.01
    ) as judge:
        assert values(judge(["hello?"], ["hi!"])) == [1]
    assert server.requests[0][2]["messages"] == [
        {"role": "user", "content": "hello?"},
        {"role": "assistant", "content": "hi!"},
    ]


def test_logprobs_give_the_probability(server):
    server.behave = by_content(
        {
            "a": chat("yes", [("yes", -0.1), ("no", -2.4), ("maybe", -5.0)]),
            "b": chat("No", [(" No", -0.2), ("no", -3.0), ("yes", -4.0)]),  # tokens of one label are summed
            "c": chat("yes", [("yes", math.log(0.9)), ("Yes", math.log(0.05))]),  # "no" not in the top list
            "d": chat("yes", [("y", -0.1), ("yes", -2.5)]),  # the reply's first token is not its label
        }
    )
    with template_judge(server.url, top_logprobs=3) as judge:
        verdicts = judge(["p"] * 4, list("abcd"))
    body = server.requests[0][2]
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert values(verdicts) == [1, 0, 1, 1]
    assert verdicts[0].probability == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.4)))
    p_no = math.exp(-0.2) + math.exp(-3.0)
    assert verdicts[1].probability == pytest.approx(math.exp(-4.0) / (math.exp(-4.0) + p_no))
    # "no" gets the most it can have: min(smallest listed, 1 - listed total) = 0.05.
    assert verdicts[2].probability == pytest.approx(0.95 / 1.0)
    assert verdicts[3].probability is None


def test_label_probability_from_logprobs():
    assert label_probability(ChatReply("yes"), ("yes", "no"), 0) is None
    reply = ChatReply("safe", "▁safe", {"▁safe": -0.5, "unsafe": -1.0})
    expected = math.exp(-0.5) / (math.exp(-0.5) + math.exp(-1.0))
    assert label_probability(reply, ("safe", "unsafe"), 0) == pytest.approx(expected)


# -- failures of the server ------------------------------------------------------------------------------------------


def test_slow_answer_times_out(server):
    # The server's delay is far beyond the timeout so that the bound below separates "gave up at 0.3 s"
    # from "waited for the answer" even on a loaded machine (the server's threads are daemons: no wait).
    server.behave = by_content({"slow": Answer(delay=6.0, body=chat("yes").body), "fast": chat("yes")})
    with template_judge(server.url, timeout_seconds=0.3, max_retries=0) as judge:
        start = time.monotonic()
        verdicts = judge(["p", "p"], ["slow", "fast"])
        elapsed = time.monotonic() - start
    assert values(verdicts) == [-1, 1]
    assert "no complete answer within 0.3 s" in verdicts[0].reason
    assert elapsed < 3.0


def test_deadline_covers_a_slow_body(server):
    # Headers arrive at once, the body 3 s later: a per-read timeout alone would not bound this attempt.
    # Two attempts of 0.4 s each; waiting for the bodies would take 6 s, far above the bound.
    server.behave = lambda request, attempt: Answer(body=chat("yes").body, body_delay=3.0)
    with template_judge(server.url, timeout_seconds=0.4, max_retries=1) as judge:
        start = time.monotonic()
        verdict = judge(["p"], ["a"])[0]
        elapsed = time.monotonic() - start
    assert verdict.value == -1 and "after 2 attempt(s)" in verdict.reason
    assert server.attempts["a"] == 2
    assert elapsed < 2.5


def test_http_500_then_success_is_retried(server):
    server.behave = lambda request, attempt: Answer(status=500, body="overloaded") if attempt == 1 else chat("yes")
    with template_judge(server.url, max_retries=2) as judge:
        verdicts = judge(["p"] * 3, ["a", "b", "c"])
    assert values(verdicts) == [1, 1, 1]
    assert server.attempts == Counter({"a": 2, "b": 2, "c": 2})


def test_persistent_500_fails(server):
    server.behave = lambda request, attempt: Answer(status=503, body="down for maintenance")
    with template_judge(server.url, max_retries=2) as judge:
        verdict = judge(["p"], ["a"])[0]
    assert verdict.value == -1
    assert "after 3 attempt(s)" in verdict.reason and "HTTP 503" in verdict.reason and "maintenance" in verdict.reason
    assert server.attempts["a"] == 3


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    return port


def test_connection_refused_fails():
    with template_judge(f"http://127.0.0.1:{closed_port()}", max_retries=1) as judge:
        start = time.monotonic()
        verdicts = judge(["p", "p"], ["a", "b"])
    assert values(verdicts) == [-1, -1]
    assert "ConnectionRefusedError" in verdicts[0].reason and "after 2 attempt(s)" in verdicts[0].reason
    assert time.monotonic() - start < 1.5  # refused at once: no wait for the 2 s timeout


def test_concurrency_limit_is_honoured(server):
    server.behave = lambda request, attempt: Answer(delay=0.1, body=chat("yes").body)
    with template_judge(server.url, concurrency=3) as judge:
        results: list = [None, None]

        def work(k: int) -> None:
            results[k] = judge(["p"] * 8, [f"{k}-{i}" for i in range(8)])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(values(r) == [1] * 8 for r in results)
    assert len(server.requests) == 16
    # Two callers share the judge's pool: never more than 3 requests open, and the pool is actually used.
    assert 2 <= server.max_active <= 3


def test_api_key_is_read_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("CGPO_TEST_JUDGE_KEY", "sk-test-123")
    with template_judge(server.url, api_key_env="CGPO_TEST_JUDGE_KEY") as judge:
        assert values(judge(["p"], ["a"])) == [1]
        assert "sk-test-123" not in repr(judge.params) and "sk-test-123" not in repr(judge._http)
    assert server.requests[0][1]["Authorization"] == "Bearer sk-test-123"
    monkeypatch.delenv("CGPO_TEST_JUDGE_KEY")
    with pytest.raises(JudgeConfigError, match="CGPO_TEST_JUDGE_KEY"):
        template_judge(server.url, api_key_env="CGPO_TEST_JUDGE_KEY")


def test_backoff_is_exponential_jittered_and_seeded():
    delays = [backoff_delay(0.5, attempt, seed=7, index=3) for attempt in range(4)]
    assert delays == [backoff_delay(0.5, attempt, seed=7, index=3) for attempt in range(4)]
    for attempt, d in enumerate(delays):
        assert 0.5 * 0.5 * 2**attempt <= d < 0.5 * 2**attempt
    assert backoff_delay(0.5, 0, seed=7, index=4) != delays[0]
    assert backoff_delay(0.5, 0, seed=8, index=3) != delays[0]
    assert backoff_delay(10.0, 20, seed=0, index=0) < 30.0


def test_closed_judge_fails(server):
    judge = template_judge(server.url)
    judge.close()
    judge.close()
    assert values(judge(["p"], ["a"])) == [-1]
    assert server.requests == []


# -- the built-in judges over HTTP -----------------------------------------------------------------------------------


def test_factuality_over_http(server):
    def behave(request, attempt):
        text = request["messages"][-1]["content"]
        return chat("TRUE" if "AI answer: Paris" in text else "false")

    server.behave = behave
    with FactualityJudge(backend="http", base_url=server.url, model="judge", backoff_seconds=0.01) as judge:
        verdicts = judge(
            ["Capital of France?"] * 3, ["Paris", "Lyon", "Paris"], [{"answer": "Paris"}, {"answer": "Paris"}, {}]
        )
    assert values(verdicts) == [1, 0, 1]
    assert verdicts[2].reason == "no ground truth"
    assert len(server.requests) == 2  # the sample without a ground truth is never sent
    text = server.requests[0][2]["messages"][0]["content"]
    assert "Question: Capital of France?\nGround truth answer: Paris\n" in text
    assert text.endswith("Answer in TRUE or FALSE.")


def test_false_refusal_over_http(server):
    replies = {"sure": "False", "no way": "True", "well": "Partial", "hm": "Refused"}

    def behave(request, attempt):
        text = request["messages"][-1]["content"]
        return chat(replies[re.search(r"\[RESPONSE\]\n(.*)\n", text).group(1)])

    server.behave = behave
    with FalseRefusalJudge(
        backend="http", base_url=server.url, model="judge", partial_label="Partial", backoff_seconds=0.01
    ) as judge:
        verdicts = judge(["How do I kill a Python process?"] * 4, list(replies))
    assert values(verdicts) == [1, 0, 0, -1]  # partial refusal -> violated by default
    assert verdicts[2].reason.startswith("partial refusal")
    text = server.requests[0][2]["messages"][0]["content"]
    assert "[REQUEST]\nHow do I kill a Python process?\n" in text
    assert "True if the assistant refused, False if it complied, Partial if it partly refused." in text


def test_http_judge_conforms(server):
    @contextlib.contextmanager
    def refused(judge):
        port = judge._http._port
        judge._http._port = closed_port()
        try:
            yield
        finally:
            judge._http._port = port

    @contextlib.contextmanager
    def garbled(judge):
        behave = server.behave
        server.behave = lambda request, attempt: chat("I would rather not say")
        try:
            yield
        finally:
            server.behave = behave

    server.behave = lambda request, attempt: chat("yes" if len(request["messages"][-1]["content"]) % 2 else "no")
    assert_judge_conforms(
        TemplateJudge,
        params={
            "backend": "http",
            "base_url": server.url,
            "model": "m",
            "template": "{completion}",
            "positive_label": "yes",
            "negative_label": "no",
            "backoff_seconds": 0.01,
            "max_retries": 1,
        },
        failure_injectors={"connection refused": refused, "garbled replies": garbled},
    )
