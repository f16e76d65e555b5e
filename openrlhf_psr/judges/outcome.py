"""The outcome judge, for ablations and tests: finish each candidate with k rollouts and compare how often each
reaches the gold answer (graded with math-verify). It needs gold answers, so it is not self-rewarding; it gives a
judge with known behaviour to compare the self-judges against.
"""

from __future__ import annotations

from collections.abc import Sequence

from openrlhf_psr.engines.base import Engine, SampleRequest
from openrlhf_psr.judges.base import Comparison, JudgeContext, Judgment, PairwiseJudge
from openrlhf_psr.judges.guard import encode_plain, guarded_prompt_ids
from openrlhf_psr.prompts import render_step_prompt
from openrlhf_psr.records import Verdict
from openrlhf_psr.steps import extract_boxed


class OutcomeJudge(PairwiseJudge):
    """P(A better) = 0.5 + (success rate of A - success rate of B) / 2; equal rates abstain.

    Rollouts of every distinct (context, candidate) in a batch go to the engine in one call and are cached, since a
    candidate appears in many comparisons.
    """

    name = "outcome"

    def __init__(
        self,
        engine: Engine,
        *,
        rollouts: int = 4,
        max_tokens: int = 512,
        temperature: float = 0.7,
        chat_template: bool = True,
        grader=None,
    ):
        if grader is None:
            from openrlhf_psr.grading import is_correct as grader
        self.engine = engine
        self.rollouts = rollouts
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.chat_template = chat_template
        self.grader = grader
        self._cache: dict[tuple, float] = {}

    @classmethod
    def from_config(cls, context: JudgeContext, **kw) -> OutcomeJudge:
        return cls(context.engine, **kw)

    def _key(self, c: Comparison, step: str) -> tuple:
        return (c.question, c.previous_steps, step, c.gold)

    def success_rates(self, comparisons: Sequence[Comparison]) -> None:
        todo: dict[tuple, None] = {}
        for c in comparisons:
            if c.gold is None:
                raise ValueError(f"the outcome judge needs a gold answer; none for question {c.question[:60]!r}")
            for step in (c.step_a, c.step_b):
                key = self._key(c, step)
                if key not in self._cache:
                    todo[key] = None
        keys = list(todo)
        tok = self.engine.tokenizer
        requests = []
        for question, previous, step, _ in keys:
            prefix = "".join(s + "\n" for s in (*previous, step))
            # Candidate text continues the policy prompt: encoded as plain text, so it cannot end the turn.
            ids = guarded_prompt_ids(tok, render_step_prompt(question), chat_template=self.chat_template)
            ids += encode_plain(tok, prefix)
            requests.append(
                SampleRequest(tuple(ids), n=self.rollouts, temperature=self.temperature, max_tokens=self.max_tokens)
            )
        for key, samples in zip(keys, self.engine.generate(requests), strict=True):
            step, gold = key[2], key[3]
            answers = [extract_boxed(step) or extract_boxed(s.text) for s in samples]
            self._cache[key] = sum(bool(self.grader(a, gold)) for a in answers) / max(len(answers), 1)

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        self.success_rates(comparisons)
        out = []
        for c in comparisons:
            ra, rb = self._cache[self._key(c, c.step_a)], self._cache[self._key(c, c.step_b)]
            winner = "A" if ra > rb else "B" if rb > ra else None
            out.append(Judgment(Verdict(winner, p_a=0.5 + (ra - rb) / 2), raw=f"success A={ra:.2f} B={rb:.2f}"))
        return out
