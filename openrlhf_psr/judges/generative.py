"""The paper's step-wise LLM-as-a-Judge: explanation, then a ``[[A]]``/``[[B]]`` verdict, greedy.

Candidate text reaches the model only through ``judges.guard.guarded_prompt_ids`` (no forged special tokens, no
forged block delimiters) and the verdict only through ``parse_verdict`` (no quoted candidate verdicts).
"""

from __future__ import annotations

from collections.abc import Sequence

from openrlhf_psr.engines.base import Engine, SampleRequest
from openrlhf_psr.judges.base import Comparison, JudgeContext, Judgment, PairwiseJudge, judge_prompt
from openrlhf_psr.judges.guard import guarded_prompt_ids
from openrlhf_psr.judges.verdict import parse_verdict
from openrlhf_psr.records import Verdict


class GenerativeJudge(PairwiseJudge):
    """All comparisons go to the engine in one batched call (prefix caching shares the problem and previous steps).

    Args:
        engine: any :class:`~openrlhf_psr.engines.base.Engine` (the policy's own engine for self-judging).
        max_tokens: cap on the explanation (SPEC default 512).
        chat_template: wrap the judge prompt in the model's chat template.
        tie: offer ``[[C]]`` (a tie) in the prompt; a last ``[[C]]`` is read as an abstention.
    """

    name = "generative"

    def __init__(self, engine: Engine, *, max_tokens: int = 512, chat_template: bool = True, tie: bool = False):
        self.engine = engine
        self.tie = bool(tie)
        self.max_tokens = max_tokens
        self.chat_template = chat_template

    @classmethod
    def from_config(cls, context: JudgeContext, *, base_url: str | None = None, model: str | None = None, **kw):
        """Self-judging on the policy's engine, or an external judge behind an OpenAI-compatible ``base_url``."""
        if base_url is None:
            return cls(context.engine, **kw)
        from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

        return cls(OpenAIHTTPEngine(base_url, model=model or context.model), **kw)

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        requests = [
            SampleRequest(
                tuple(
                    guarded_prompt_ids(
                        self.engine.tokenizer, judge_prompt(c, self.tie), chat_template=self.chat_template
                    )
                ),
                n=1,
                temperature=0.0,
                max_tokens=self.max_tokens,
                # one engine per problem: the judge prompts' shared prefix stays cached
                affinity=getattr(c, "question", None),
            )
            for c in comparisons
        ]
        outputs = self.engine.generate(requests)
        return [
            Judgment(Verdict(parse_verdict(out[0].text, c.step_a, c.step_b, tie=self.tie)), raw=out[0].text)
            for c, out in zip(comparisons, outputs, strict=True)
        ]
