"""Judge accuracy on held-out step pairs with a known better step (the paper's Table 3), in both orders."""

from __future__ import annotations

from collections.abc import Sequence

from openrlhf_psr.judges.base import Comparison, PairwiseJudge
from openrlhf_psr.records import JudgedStepPair, aggregate_pair

LabelledPair = JudgedStepPair  # the former name of a judged step pair


def both_orders(pairs: Sequence[JudgedStepPair]) -> list[Comparison]:
    """Each pair as two comparisons, its ``better`` step shown first as A, then as B."""
    return [
        Comparison(p.question, p.previous_steps, a, b)
        for p in pairs
        for a, b in ((p.better, p.worse), (p.worse, p.better))
    ]


def judge_accuracy(judge: PairwiseJudge, pairs: Sequence[JudgedStepPair]) -> dict:
    """Both orders of every pair in one judge batch.

    - ``accuracy``: verdicts that pick the better step, over all 2N ordered comparisons (abstentions count wrong);
    - ``pair_accuracy``: pairs right in both orders; ``consistency``: pairs whose two verdicts name the same step;
    - ``abstention_rate``; ``prob_accuracy``: pairs where the mean P(better) over both orders is > 0.5 (judges that
      give probabilities only, e.g. the logit judge; a NaN probability leaves its pair out).

    Each pair's two orders go through :func:`openrlhf_psr.records.aggregate_pair` (better = candidate 0), the same
    aggregation the search's tournament uses.
    """
    comparisons = both_orders(pairs)
    judgments = judge.judge(comparisons) if comparisons else []
    right = consistent = both_right = abstained = 0
    probs = []
    for k in range(len(pairs)):
        outcome = aggregate_pair(0, 1, judgments[2 * k].verdict, judgments[2 * k + 1].verdict, aggregate="prob")
        right += outcome.votes_i
        both_right += outcome.votes_i == 2
        abstained += 2 - outcome.votes_i - outcome.votes_j
        consistent += outcome.consistent
        if outcome.p_i is not None:
            probs.append(outcome.p_i)
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


def tie_rate(judge: PairwiseJudge, pairs: Sequence[JudgedStepPair]) -> dict:
    """On pairs where neither step is better (two wrong steps): the share of the 2N ordered comparisons the judge
    calls a tie (abstains on), and of pairs it ties in both orders, i.e. pairs from which a search makes no pair."""
    comparisons = both_orders(pairs)
    ties = [j.verdict.winner is None for j in (judge.judge(comparisons) if comparisons else [])]
    n = len(pairs)
    return {
        "tie_pairs": n,
        "tie_rate": sum(ties) / (2 * n) if n else None,
        "tie_pair_rate": sum(ties[2 * k] and ties[2 * k + 1] for k in range(n)) / n if n else None,
    }
