"""The HTTP engine's next-token log-probs (what the logit judge reads), against a local stand-in server that answers
as vLLM's completions endpoint does; the real ``vllm serve``: tests/integration/test_openai_http.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from openrlhf_psr.engines.base import UnsupportedByEngine
from openrlhf_psr.testing import CharTokenizer, send_json

pytestmark = pytest.mark.unit


class _LogprobServer(BaseHTTPRequestHandler):
    """Log-prob of token t after a prompt: -(t + len(prompt)) / 10. ``ignore_asked`` answers as a server without
    ``logprob_token_ids`` does: the sampled token only, keyed by its text."""

    seen: list[dict] = []
    ignore_asked = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        choices = []
        for index, prompt in enumerate(body["prompt"]):
            if self.ignore_asked:
                top = {"A": -0.1}
            else:
                top = {f"token_id:{t}": -(t + len(prompt)) / 10 for t in body["logprob_token_ids"]}
                top["token_id:7"] = -0.05  # the sampled token, as vLLM adds it
            choices.append({"index": index, "text": "x", "logprobs": {"top_logprobs": [top]}})
        send_json(self, {"choices": choices[::-1]})  # in any order: the index says which prompt

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _LogprobServer.seen = []
    _LogprobServer.ignore_asked = False
    httpd = HTTPServer(("127.0.0.1", 0), _LogprobServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_http_engine_returns_the_asked_tokens_logprobs_per_prompt_in_order(server):
    from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

    engine = OpenAIHTTPEngine(server, model="judge", tokenizer=CharTokenizer())
    rows = engine.next_token_logprobs([[1, 2], [1, 2, 3, 4]], [65, 66])
    assert rows == [[-6.7, -6.8], [-6.9, -7.0]]  # by id, not by rank or text: 7 (the sampled token) is ignored
    sent = _LogprobServer.seen[0]
    assert len(_LogprobServer.seen) == 1 and sent["prompt"] == [[1, 2], [1, 2, 3, 4]]  # one request for the batch
    many = engine.next_token_logprobs([[1] * k for k in range(1, 71)], [65])
    assert len(_LogprobServer.seen) == 4 and sorted(len(b["prompt"]) for b in _LogprobServer.seen[1:]) == [6, 32, 32]
    assert many == [[-(65 + k) / 10] for k in range(1, 71)]  # in prompt order across requests
    assert sent["logprob_token_ids"] == [65, 66] and sent["return_tokens_as_token_ids"] is True
    assert sent["max_tokens"] == 1 and sent["logprobs"] == 1 and sent["temperature"] == 0.0
    assert engine.next_token_logprobs([], [65, 66]) == []


def test_a_server_without_logprob_token_ids_is_not_implemented_so_the_logit_judge_falls_back(server):
    from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

    _LogprobServer.ignore_asked = True
    engine = OpenAIHTTPEngine(server, model="judge", tokenizer=CharTokenizer())
    expected = r"prompt 0: the server returned no logprob for token ids \[65, 66\]"
    with pytest.raises(UnsupportedByEngine, match=expected):
        engine.next_token_logprobs([[1, 2]], [65, 66])
