"""Judge accuracy on held-out step pairs with a known better step (the paper's Table 3), in both orders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openrlhf_psr.judges.base import Comparison, PairwiseJudge


@dataclass(frozen=True)
class LabelledPair:
    question: str
    previous_steps: tuple[str, ...]
    better: str
    worse: str


def judge_accuracy(judge: PairwiseJudge, pairs: Sequence[LabelledPair]) -> dict:
    """Both orders of every pair in one judge batch.

    - ``accuracy``: verdicts that pick the better step, over all 2N ordered comparisons (abstentions count wrong);
    - ``pair_accuracy``: pairs right in both orders; ``consistency``: pairs whose two verdicts name the same step;
    - ``abstention_rate``; ``prob_accuracy``: pairs where the mean P(better) over both orders is > 0.5 (judges that
      give probabilities only, e.g. the logit judge).
    """
    comparisons = []
    for p in pairs:
        comparisons += [
            Comparison(p.question, p.previous_steps, p.better, p.worse),
            Comparison(p.question, p.previous_steps, p.worse, p.better),
        ]
    judgments = judge.judge(comparisons) if comparisons else []
    right = consistent = both_right = abstained = 0
    probs = []
    for k in range(len(pairs)):
        first, second = judgments[2 * k].verdict, judgments[2 * k + 1].verdict
        a_right, b_right = first.winner == "A", second.winner == "B"
        right += a_right + b_right
        both_right += a_right and b_right
        abstained += (first.winner is None) + (second.winner is None)
        consistent += first.winner is not None and second.winner is not None and first.winner != second.winner
        if first.p_a is not None and second.p_a is not None:
            probs.append((first.p_a + (1.0 - second.p_a)) / 2)
    n = len(pairs)
    return {
        "pairs": n,
        "accuracy": right / (2 * n) if n else None,
        "pair_accuracy": both_right / n if n else None,
        "consistency": consistent / n if n else None,
        "abstention_rate": abstained / (2 * n) if n else None,
        "prob_accuracy": sum(p > 0.5 for p in probs) / len(probs) if probs else None,
        "always_a_rate": sum(j.verdict.winner == "A" for j in judgments) / len(judgments) if judgments else None,
    }
