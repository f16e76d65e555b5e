"""Held-out judge examples from the built-in task: a correct step vs the same step with a wrong result."""

from __future__ import annotations

import random

from openrlhf_psr.records import JudgedStepPair


def builtin_judge_pairs(n: int, seed: int = 1000, difficulty=None) -> list[JudgedStepPair]:
    """``seed`` defaults far from the training seeds, so these problems are not in the SFT data; ``difficulty``
    (an :class:`~openrlhf_psr.data.arith.Difficulty`, None = the defaults) matches the task's problems."""
    from openrlhf_psr.data.sft import builtin_corrupted_steps, builtin_judged_pair

    return [builtin_judged_pair(p, k, wrong) for p, k, wrong in builtin_corrupted_steps(n, seed, difficulty)]


def builtin_tie_pairs(n: int, seed: int = 1000, difficulty=None) -> list[JudgedStepPair]:
    """Held-out pairs of two wrong steps (neither is better; ``better``/``worse`` are only the two positions): the
    problems and steps of :func:`builtin_judge_pairs` with the same ``seed``, the right step replaced by a second
    wrong result. Where a judge offers a tie, it should call one here."""
    from openrlhf_psr.data.sft import builtin_tie_steps

    return [JudgedStepPair(p.question, tuple(p.steps[:k]), wrong, other, source=f"{p.id}#step{k + 1}#tie")
            for p, k, wrong, other in builtin_tie_steps(n, seed, difficulty)]  # fmt: skip


def prm800k_judge_pairs(path: str, limit: int | None = None, seed: int = 0) -> list[JudgedStepPair]:
    from openrlhf_psr.data.prm800k import human_step_pairs

    pairs = human_step_pairs(path)
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs
