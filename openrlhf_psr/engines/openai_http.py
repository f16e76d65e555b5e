"""An OpenAI-compatible completions endpoint (e.g. ``vllm serve``) as an engine: for an external judge or policy.

Prompts are sent as token ids. vLLM's server returns the generated ids when asked (``return_token_ids``); a server
that does not is answered by re-tokenising the text (recorded as ``approx_ids``), which is fine for a judge but
not for DPO pairs. Requests of one batch run concurrently (the server batches them); each is retried with backoff.

The logit judge reads P("A")/P("B") through :meth:`OpenAIHTTPEngine.next_token_logprobs`: ``max_tokens: 1``
requests of up to 32 prompts each, with vLLM's ``logprob_token_ids`` (every asked token is returned whatever its
rank) and ``return_tokens_as_token_ids`` (keys ``"token_id:N"``, so no token text is matched). A server without
those fields answers without the asked tokens; that is reported as ``UnsupportedByEngine``, on which the logit
judge falls back to its transformers forward (or fails with ``backend: engine``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from openrlhf_psr.engines.base import Engine, Sample, SampleRequest, UnsupportedByEngine

_TOKEN_ID_KEY = "token_id:"  # vLLM's key for a token when ``return_tokens_as_token_ids`` is set
_PROMPTS_PER_REQUEST = 32  # verdict reads batched per request (the completions API takes a list of prompts)


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
        engine = cls(base_url, model=served_model_name or model, **settings)
        engine.max_model_len = max_model_len or None  # the server's limit, when the recipe states it
        return engine

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

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()) -> list[list[float]]:
        """Log-probs of ``token_ids`` as the next token of each prompt (the server's full-vocabulary softmax): the
        prompts go as lists of ids, ``_PROMPTS_PER_REQUEST`` per request, requests concurrent; prompts sharing a
        prefix hit the server's prefix cache."""
        asked = [int(t) for t in token_ids]
        chunks = [prompts[i : i + _PROMPTS_PER_REQUEST] for i in range(0, len(prompts), _PROMPTS_PER_REQUEST)]
        if not chunks:
            return []

        def payload(chunk) -> dict:
            return {
                "model": self.model, "prompt": [list(p) for p in chunk], "max_tokens": 1, "temperature": 0.0,
                "logprobs": 1, "logprob_token_ids": asked, "return_tokens_as_token_ids": True,
            }  # fmt: skip

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks))) as pool:
            bodies = list(pool.map(lambda chunk: self._post(payload(chunk)), chunks))
        rows = []
        for first, (chunk, body) in enumerate(zip(chunks, bodies, strict=True)):
            choices = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(chunk):
                raise ValueError(f"{self.url}: expected {len(chunk)} choices, got {len(choices)}")
            start = first * _PROMPTS_PER_REQUEST
            rows += [self._asked_logprobs(c, asked, start + k) for k, c in enumerate(choices)]
        return rows

    def _asked_logprobs(self, choice: dict, asked: list[int], index: int) -> list[float]:
        try:
            position = choice["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"{self.url}: prompt {index}: no next-token logprobs in the response ({exc!r})") from exc
        by_id = {}
        for key, value in (position or {}).items():
            if isinstance(key, str) and key.startswith(_TOKEN_ID_KEY) and key[len(_TOKEN_ID_KEY) :].isdigit():
                by_id[int(key[len(_TOKEN_ID_KEY) :])] = float(value)
        missing = [t for t in asked if t not in by_id]
        if missing:
            raise UnsupportedByEngine(
                f"{self.url}: prompt {index}: the server returned no logprob for token ids {missing}: it does not "
                "support vLLM's logprob_token_ids / return_tokens_as_token_ids (serve the judge with vLLM)"
            )
        return [by_id[t] for t in asked]
