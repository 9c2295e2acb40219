"""An HTTP LLM judge whose server process dies or hangs mid-batch: -1 with a reason, bounded time, no crash.

The server is a real separate process (``http.server`` on 127.0.0.1, port 0), so killing it with SIGKILL
drops its connections the way a crashed vLLM does; SIGSTOP freezes it the way a wedged one does (the kernel
still accepts connections, nothing answers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cgpo_judges.llm import TemplateJudge

SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(0.1)  # a judge model's latency: a batch takes long enough to be killed in the middle
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print("served", flush=True)

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

httpd = Server(("127.0.0.1", 0), Handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


@pytest.fixture
def server_process():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc, f"http://127.0.0.1:{port}/v1"
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


def judge(url: str, **extra: object) -> TemplateJudge:
    params = {"backend": "http", "base_url": url, "model": "judge-model", "template": "{completion}",
              "positive_label": "yes", "negative_label": "no", "backoff_seconds": 0.05, "timeout_seconds": 2.0,
              "max_retries": 3, "concurrency": 2}  # fmt: skip
    return TemplateJudge(**{**params, **extra})


def test_a_server_killed_mid_batch_gives_minus_one_with_a_reason_and_the_rest_fail_fast(server_process):
    proc, url = server_process
    served = threading.Event()

    def kill_after_four_answers() -> None:
        assert proc.stdout is not None
        for count, _ in enumerate(iter(proc.stdout.readline, ""), start=1):
            if count == 4:
                proc.send_signal(signal.SIGKILL)
                served.set()
                return

    threading.Thread(target=kill_after_four_answers, daemon=True).start()
    n = 40
    with judge(url) as j:
        start = time.monotonic()
        verdicts = j(["p"] * n, [f"c{i}" for i in range(n)])  # never raises
        elapsed = time.monotonic() - start
    assert served.is_set() and proc.wait() == -signal.SIGKILL
    values = [v.value for v in verdicts]
    assert values[:4] == [1, 1, 1, 1] and set(values[4:]) <= {1, -1} and values[-1] == -1
    assert 0 not in values  # an infrastructure failure is never a violation
    failures = [v.reason for v in verdicts if v.value == -1]
    assert all(r.startswith("judge server unavailable after ") for r in failures), failures
    assert any("ConnectionRefusedError" in r for r in failures)
    # One retry schedule, not one per sample: after the first exhausted schedule the rest try once.
    assert sum("already unreachable" in r for r in failures) >= len(failures) - 2
    assert elapsed < 10.0, elapsed  # 36 samples x 4 attempts with backoff would take far longer


def test_a_hung_server_is_bounded_by_the_batch_deadline(server_process):
    proc, url = server_process
    os.kill(proc.pid, signal.SIGSTOP)  # accepts connections (kernel backlog), never answers
    n = 12
    with judge(url, timeout_seconds=0.5, deadline_seconds=1.5) as j:
        start = time.monotonic()
        verdicts = j(["p"] * n, [f"c{i}" for i in range(n)])
        elapsed = time.monotonic() - start
    assert [v.value for v in verdicts] == [-1] * n
    # Without the deadline: 12 samples, 2 at a time, 4 attempts of 0.5 s each, plus backoff: over 12 s.
    assert elapsed < 5.0, elapsed
    reasons = [v.reason for v in verdicts]
    assert any("deadline of the batch" in r for r in reasons), reasons
    assert any("no complete answer within" in r for r in reasons), reasons
    print(json.dumps(reasons[-1]))


def test_the_deadline_is_validated():
    from cgpo.schema import SchemaError, build

    base = {
        "backend": "http",
        "base_url": "http://127.0.0.1:1/v1",
        "model": "m",
        "template": "{completion}",
        "positive_label": "yes",
        "negative_label": "no",
    }
    with pytest.raises(SchemaError, match="deadline_seconds: must be a positive number of seconds or null"):
        build(TemplateJudge.Params, {**base, "deadline_seconds": 0})
    assert build(TemplateJudge.Params, {**base, "deadline_seconds": None}).deadline_seconds is None
    assert build(TemplateJudge.Params, base).deadline_seconds == 600.0
