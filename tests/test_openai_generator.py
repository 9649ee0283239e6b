"""The HTTP teacher against a real loopback server: the sampling policy goes out in the request,
`finish_reason == "length"` comes back as truncated, 5xx is retried."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anchor.generate import SamplingConfig, make_generator


@pytest.fixture
def server(monkeypatch):
    seen, state = [], {"fail_first": True}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if state["fail_first"]:
                state["fail_first"] = False
                self.send_response(503)
                self.end_headers()
                return
            user = body["messages"][-1]["content"]
            choices = [
                {
                    "index": k,
                    "message": {"content": f"{user} #{k}"},
                    "finish_reason": "length" if k == 1 else "stop",
                }
                for k in range(body["n"])
            ]
            payload = json.dumps({"choices": choices[::-1]}).encode()  # out of order on purpose
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{httpd.server_port}/v1")
    yield seen
    httpd.shutdown()


def test_openai_teacher_samples_with_the_projects_policy(server):
    teacher = make_generator("openai:big-teacher")
    teacher.retries = 2
    conversations = [
        [{"role": "system", "content": "Be warm."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "bye"}],
    ]
    replies = teacher.generate(
        conversations, SamplingConfig(max_new_tokens=600, temperature=1.0, n=3, seed=7)
    )
    assert replies[0] == ["hi #0", "hi #1", "hi #2"] and replies[1][2] == "bye #2"
    assert teacher.truncated == [[False, True, False], [False, True, False]]
    request = server[-1]
    assert request["model"] == "big-teacher" and request["n"] == 3 and request["max_tokens"] == 600
    assert (request["temperature"], request["top_p"], request["seed"]) == (1.0, 1.0, 7)
    assert len(server) == 3  # one 503, retried, then both conversations
    assert (
        server[1]["messages"][0] == {"role": "system", "content": "Be warm."}
        or server[2]["messages"][0]["role"] == "system"
    )
    with pytest.raises(ValueError, match="prefill"):
        teacher.generate(conversations, prefill="<think>")
