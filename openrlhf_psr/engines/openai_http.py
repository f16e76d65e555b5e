"""An OpenAI-compatible completions endpoint (e.g. ``vllm serve``) as an engine: for an external judge or policy.

Prompts are sent as token ids. vLLM's server returns the generated ids when asked (``return_token_ids``); a server
that does not is answered by re-tokenising the text (recorded as ``approx_ids``), which is fine for a judge but
not for DPO pairs. Requests of one batch run concurrently (the server batches them); each is retried with backoff.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from openrlhf_psr.engines.base import Engine, Sample, SampleRequest


class OpenAIHTTPEngine(Engine):
    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        tokenizer=None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
        concurrency: int = 32,
    ):
        self.url = base_url.rstrip("/") + (
            "/completions" if base_url.rstrip("/").endswith("/v1") else "/v1/completions"
        )
        self.model = model
        if tokenizer is None:
            from transformers import AutoTokenizer

            from openrlhf_psr.model_cache import resolve_model

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.concurrency = concurrency
        self.approx_ids = 0

    @classmethod
    def from_config(cls, model: str, *, base_url: str, seed: int = 0, max_model_len: int = 0,
                    served_model_name: str | None = None, **settings):  # fmt: skip
        """``base_url`` is required; ``model`` is the served model name (and where its tokenizer comes from)."""
        return cls(base_url, model=served_model_name or model, **settings)

    def _payload(self, r: SampleRequest) -> dict:
        payload = {
            "model": self.model,
            "prompt": list(r.prompt_token_ids),
            "n": r.n,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_tokens,
            "return_token_ids": True,
        }
        if r.stop:
            payload["stop"] = list(r.stop)
        if r.seed is not None:
            payload["seed"] = r.seed
        return payload

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    raise ConnectionError(f"{self.url}: {exc} (after {self.retries + 1} attempts)") from exc
                time.sleep(min(2**attempt, 10))
        raise AssertionError("unreachable")

    def _samples(self, body: dict, n: int) -> list[Sample]:
        choices = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise ValueError(f"{self.url}: expected {n} choices, got {len(choices)}")
        out = []
        for c in choices:
            text = c.get("text") or ""
            ids = c.get("token_ids")
            if ids is None:
                self.approx_ids += 1
                ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(Sample(text, tuple(ids), c.get("finish_reason") or "length", c.get("stop_reason")))
        return out

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Sample]]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            bodies = list(pool.map(lambda r: self._post(self._payload(r)), requests))
        return [self._samples(b, r.n) for b, r in zip(bodies, requests, strict=True)]
