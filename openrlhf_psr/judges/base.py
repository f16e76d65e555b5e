"""The pairwise judge interface: the "generative pairwise judge reward" of this plugin.

A judge takes a batch of structured comparisons (the problem, the accepted steps, step A, step B) and returns one
:class:`Judgment` each. Which order the candidates are shown in is the caller's business (the tournament asks for
both orders); a judge only ever sees A and B.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from openrlhf_psr.prompts import render_judge_prompt
from openrlhf_psr.records import Judgment, Verdict  # noqa: F401 - the judge's output types, re-exported


@dataclass(frozen=True)
class Comparison:
    question: str
    previous_steps: tuple[str, ...]
    step_a: str
    step_b: str
    gold: str | None = None  # the problem's gold answer, for judges that may use it (outcome judge); else unused

    def prompt(self, tie: bool = False) -> str:
        """The judge prompt of this comparison (``tie``: the variant that also offers ``[[C]]``, a tie)."""
        return render_judge_prompt(self.question, list(self.previous_steps), self.step_a, self.step_b, tie=tie)


def judge_prompt(comparison, tie: bool) -> str:
    """A comparison's judge prompt; ``tie`` asks for the variant offering ``[[C]]``. Without it ``prompt()`` is
    called as before, so comparison-like objects whose ``prompt`` takes no argument still work."""
    return comparison.prompt(tie=True) if tie else comparison.prompt()


@dataclass
class JudgeContext:
    """What a judge built by name may use: the policy model (self-judging) and the policy's engine."""

    model: str
    engine: object | None = None  # an openrlhf_psr.engines.base.Engine


class PairwiseJudge(ABC):
    """Decides, for each comparison, whether step A or step B is the better next step (or abstains)."""

    name: str = "judge"

    @classmethod
    def from_config(cls, context: JudgeContext, **settings) -> PairwiseJudge:
        """Build from a recipe's ``psr.judge`` settings; the default passes them to the constructor."""
        return cls(**settings)

    @abstractmethod
    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        """One judgment per comparison, in order. Must not raise on odd model output: abstain instead."""


def build_judge(name: str, context: JudgeContext, **settings) -> PairwiseJudge:
    """A judge by registry name (built-in, entry point or ``module:attr``) with its settings."""
    from openrlhf_psr.registry import JUDGES, RegistryError

    cls = JUDGES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, PairwiseJudge)):
        raise RegistryError(f"judge {name!r} resolves to {cls!r}, which is not a PairwiseJudge subclass")
    return cls.from_config(context, **settings)
