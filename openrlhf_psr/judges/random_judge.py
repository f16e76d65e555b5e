"""The random judge: a seeded coin, the control arm of a controlled comparison (issue 13).

The coin is a hash of ``seed`` and the comparison's content, so a verdict does not depend on batching, call order
or process. By default it prefers a *candidate*, not a position: the two texts are sorted before hashing, so both
orders of a pair name the same winner and the tournament gets decided pairs just as often as with a consistent
real judge (the control then differs from the other arms only in *which* step wins). ``consistent=False`` flips an
independent coin per ordered comparison instead (both orders then disagree half the time).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from openrlhf_psr.judges.base import Comparison, Judgment, PairwiseJudge
from openrlhf_psr.records import Verdict


def coin(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) from ``seed`` and ``parts`` (stable across processes, unlike ``hash``).

    >>> coin(0, "a", ["b"]) == coin(0, "a", ["b"]), 0 <= coin(1, "x") < 1
    (True, True)
    """
    digest = hashlib.sha256(json.dumps([seed, *parts], ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class RandomJudge(PairwiseJudge):
    """Args:
    seed: the coin's seed (a recipe's ``psr.judge.settings.seed``).
    consistent: one coin per unordered pair of candidates (default) or one per ordered comparison.
    """

    name = "random"

    def __init__(self, *, seed: int = 0, consistent: bool = True, chat_template: bool = True):
        # chat_template: accepted like every judge's setting, unused (no prompt)
        self.seed = int(seed)
        self.consistent = consistent

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        out = []
        for c in comparisons:
            if c.step_a == c.step_b:
                out.append(Judgment(Verdict(None, p_a=0.5), raw="identical candidates"))
                continue
            context = [c.question, list(c.previous_steps)]
            if self.consistent:
                first, second = sorted((c.step_a, c.step_b))
                first_wins = coin(self.seed, *context, first, second) < 0.5
                winner = "A" if (c.step_a == first) == first_wins else "B"
            else:
                winner = "A" if coin(self.seed, *context, c.step_a, c.step_b) < 0.5 else "B"
            out.append(Judgment(Verdict(winner, p_a=1.0 if winner == "A" else 0.0), raw=f"coin seed={self.seed}"))
        return out
