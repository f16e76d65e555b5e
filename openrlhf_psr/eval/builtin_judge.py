"""Held-out judge examples from the built-in task: a correct step vs the same step with a wrong result."""

from __future__ import annotations

import random

from openrlhf_psr.eval.judge_accuracy import LabelledPair


def builtin_judge_pairs(n: int, seed: int = 1000) -> list[LabelledPair]:
    """``seed`` defaults far from the training seeds, so these problems are not in the SFT data."""
    from openrlhf_psr.data.sft import builtin_corrupted_steps

    return [LabelledPair(p.question, tuple(p.steps[:k]), p.steps[k], wrong) for p, k, wrong in
            builtin_corrupted_steps(n, seed)]  # fmt: skip


def prm800k_judge_pairs(path: str, limit: int | None = None, seed: int = 0) -> list[LabelledPair]:
    from openrlhf_psr.data.prm800k import human_step_pairs
    from openrlhf_psr.steps import format_step

    pairs = human_step_pairs(path)
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    out = []
    for p in pairs:
        previous = tuple(format_step(i, s) for i, s in enumerate(p.previous_steps, 1))
        k = len(previous) + 1
        out.append(LabelledPair(p.question, previous, format_step(k, p.chosen), format_step(k, p.rejected)))
    return out
