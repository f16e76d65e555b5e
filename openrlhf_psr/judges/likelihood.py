"""The likelihood judge: compares two candidate steps by the policy's own log-probability of each, given the
problem and the accepted steps (issue 13's fourth arm).

A small model whose pairwise judge prompt sits at chance can still assign the correct step a much higher
likelihood than a corrupted one. Scores, per candidate ``s`` with context ``x`` = step prompt + previous steps:

- ``mean`` (default): ``log pi(s | x) / len(s)``, length-normalised so that longer steps are not penalised;
- ``sum``: ``log pi(s | x)``;
- ``implicit``: ``beta * (log pi(s | x) - log pi_ref(s | x))``, the implicit reward of a DPO-trained policy
  against its reference (as implicit process reward models use it); needs ``reference`` (a model path or name).

The verdict goes to the higher score; ``p_a = sigmoid((score_a - score_b) / temperature)``; a difference of at most
``min_margin`` abstains. The context is built as the search builds it: the step prompt (chat template when
``chat_template``) followed by every accepted step and its newline; context and step are tokenised separately and
their ids concatenated (SPEC, step-wise DPO), so the scored ids are the step's ids.

Every distinct (context, step) of a batch is scored once, in one engine call (vLLM prompt log-probs; the shared
context may come from the prefix cache), and cached for the judge's lifetime. It needs an engine that can score
given text: the ``vllm`` generator; others raise a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from openrlhf_psr.judges.base import Comparison, JudgeContext, Judgment, PairwiseJudge
from openrlhf_psr.judges.guard import encode_plain
from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt
from openrlhf_psr.records import Verdict

Score = Literal["mean", "sum", "implicit"]


def step_score(policy: Sequence[float], reference: Sequence[float] | None, score: Score, beta: float) -> float:
    """One candidate's score from its per-token log-probs.

    >>> step_score([-1.0, -3.0], None, "mean", 0.1), step_score([-1.0, -3.0], None, "sum", 0.1)
    (-2.0, -4.0)
    >>> round(step_score([-1.0, -3.0], [-2.0, -2.0], "implicit", 0.5), 6)
    0.0
    """
    if not policy:
        return -math.inf
    if score == "mean":
        return sum(policy) / len(policy)
    if score == "sum":
        return sum(policy)
    if reference is None or len(reference) != len(policy):
        raise ValueError("implicit score needs the reference model's log-probs of the same tokens")
    return beta * (sum(policy) - sum(reference))


# Scores and context ids kept between calls (a candidate appears in many comparisons of its round); bounded so a
# long search does not hold every (problem, prefix) it ever saw.
CACHE_ENTRIES = 100_000


class LikelihoodJudge(PairwiseJudge):
    """Args:
    engine: the policy's engine (must implement ``continuation_logprobs``).
    score: ``mean`` | ``sum`` | ``implicit``.
    reference: for ``implicit``, the reference model (name or path), loaded as another in-process vLLM engine
        with ``reference_settings``; or pass ``reference_engine`` directly.
    beta: the implicit reward's beta (SPEC's DPO default 0.1).
    temperature: scale of the score difference inside ``p_a``'s sigmoid.
    min_margin: score differences at most this large abstain.
    chat_template: render the step prompt with the model's chat template (as the search does).
    """

    name = "likelihood"

    def __init__(
        self,
        engine,
        *,
        score: Score = "mean",
        reference: str | None = None,
        reference_engine=None,
        reference_settings: dict | None = None,
        beta: float = 0.1,
        temperature: float = 1.0,
        min_margin: float = 0.0,
        chat_template: bool = True,
    ):
        if engine is None:
            raise ValueError("the likelihood judge scores with the policy's engine; none was given")
        if score not in ("mean", "sum", "implicit"):
            raise ValueError(f"likelihood judge: score {score!r}; expected mean, sum or implicit")
        if score == "implicit" and reference is None and reference_engine is None:
            raise ValueError("likelihood judge: score 'implicit' needs a reference model (setting 'reference')")
        if temperature <= 0:
            raise ValueError(f"likelihood judge: temperature {temperature}; expected > 0")
        self.engine = engine
        self.score = score
        self.reference = reference
        self.reference_engine = reference_engine
        self.reference_settings = dict(reference_settings or {})
        self.beta = beta
        self.temperature = temperature
        self.min_margin = min_margin
        self.chat_template = chat_template
        self._cache: dict[tuple, float] = {}
        self._context_ids: dict[tuple, list[int]] = {}

    @classmethod
    def from_config(cls, context: JudgeContext, **kw) -> LikelihoodJudge:
        """Self-judging: the policy's own engine."""
        return cls(context.engine, **kw)

    def _reference(self):
        if self.reference_engine is None and self.score == "implicit":
            from openrlhf_psr.engines.vllm_local import VLLMLocalEngine

            self.reference_engine = VLLMLocalEngine(model=self.reference, **self.reference_settings)
        return self.reference_engine

    def _context(self, question: str, previous: tuple[str, ...]) -> list[int]:
        key = (question, previous)
        if key not in self._context_ids:
            tok = self.engine.tokenizer
            ids = prompt_token_ids(tok, render_step_prompt(question), chat_template=self.chat_template)
            if previous:
                ids = ids + encode_plain(tok, "".join(s + "\n" for s in previous))
            self._context_ids[key] = ids
        return self._context_ids[key]

    def scores(self, comparisons: Sequence[Comparison]) -> None:
        """Score every distinct (context, candidate) not scored yet, in one call per engine."""
        if len(self._cache) > CACHE_ENTRIES:  # a search's rounds only ever revisit the current contexts: start over
            self._cache.clear()
            self._context_ids.clear()
        todo: dict[tuple, None] = {}
        for c in comparisons:
            for step in (c.step_a, c.step_b):
                key = (c.question, tuple(c.previous_steps), step)
                if key not in self._cache:
                    todo[key] = None
        keys = list(todo)
        if not keys:
            return
        tok = self.engine.tokenizer
        # model-written text: special-token strings in it stay plain text (judges/guard.py)
        items = [(self._context(q, prev), encode_plain(tok, step)) for q, prev, step in keys]
        policy = self.engine.continuation_logprobs(items)
        reference = self._reference().continuation_logprobs(items) if self.score == "implicit" else [None] * len(keys)
        for key, lp, ref in zip(keys, policy, reference, strict=True):
            self._cache[key] = step_score(lp, ref, self.score, self.beta)

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        self.scores(comparisons)
        out = []
        for c in comparisons:
            prev = tuple(c.previous_steps)
            a, b = self._cache[(c.question, prev, c.step_a)], self._cache[(c.question, prev, c.step_b)]
            diff = a - b if math.isfinite(a) or math.isfinite(b) else 0.0
            if math.isnan(diff) or abs(diff) <= self.min_margin:
                winner, p_a = None, 0.5
            else:
                winner = "A" if diff > 0 else "B"
                z = max(-60.0, min(60.0, diff / self.temperature))
                p_a = 1.0 / (1.0 + math.exp(-z))
            out.append(Judgment(Verdict(winner, p_a=p_a), raw=f"{self.score} A={a:.4f} B={b:.4f}"))
        return out

    def close(self) -> None:
        if self.reference_engine is not None and self.reference is not None:
            self.reference_engine.close()
