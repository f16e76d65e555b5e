"""The built-in task: seeded multi-step arithmetic word problems with exact ``Step n:`` reference solutions.

It ships with the package so the main job runs anywhere with no download. Each problem chains 2-4 operations on
one quantity; the reference solution has one step per operation and ends with ``\\boxed{answer}``. Everything is
derived from ``(seed, index)``, so a problem set is reproducible and any index can be regenerated alone.

>>> p = make_problem(seed=0, index=0)
>>> p.steps[-1].endswith("\\\\boxed{%d}." % p.answer)
True
>>> make_problem(seed=0, index=0) == p
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from openrlhf_psr.steps import format_step

_PEOPLE = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kira", "Liam")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells", "stamps", "cookies")


@dataclass(frozen=True)
class ArithProblem:
    id: str
    question: str
    steps: tuple[str, ...]  # reference solution, "Step n: ..." each
    answer: int

    @property
    def solution(self) -> str:
        return "\n".join(self.steps)


def _find(rng: random.Random, total: int, who: str, item: str) -> tuple[str, str, int]:
    k = rng.randint(2, 30)
    return f"{who} finds {k} more {item}.", f"Finding {k} more gives {total} + {k} = {total + k} {item}.", total + k


def _operation(rng: random.Random, total: int, who: str, item: str) -> tuple[str, str, int]:
    """One operation: (sentence for the question, reasoning for the step, new total)."""
    kind = rng.choice(("buy_groups", "give", "double", "find", "share") if total >= 4 else ("buy_groups", "find"))
    if kind == "buy_groups":
        groups, each = rng.randint(2, 6), rng.randint(2, 9)
        new = total + groups * each
        return (
            f"{who} buys {groups} packs with {each} {item} in each pack.",
            f"The packs hold {groups} * {each} = {groups * each} {item}, so {who} has {total} + {groups * each} = "
            f"{new} {item}.",
            new,
        )
    if kind == "give":
        k = rng.randint(1, total - 1)
        return (
            f"{who} gives away {k} {item}.",
            f"After giving away {k}, {who} has {total} - {k} = {total - k} {item}.",
            total - k,
        )
    if kind == "double":
        return (f"{who}'s collection then doubles.", f"Doubling gives 2 * {total} = {2 * total} {item}.", 2 * total)
    if kind == "find":
        return _find(rng, total, who, item)
    # share: keep an exact integer by splitting into a divisor of the total
    divisors = [d for d in range(2, 6) if total % d == 0]
    if not divisors:
        return _find(rng, total, who, item)
    d = rng.choice(divisors)
    return (
        f"{who} splits the {item} equally into {d} boxes and keeps one box.",
        f"One of {d} equal boxes holds {total} / {d} = {total // d} {item}.",
        total // d,
    )


def make_problem(seed: int, index: int, min_ops: int = 2, max_ops: int = 4) -> ArithProblem:
    rng = random.Random(f"psr-arith:{seed}:{index}")
    who, item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    total = rng.randint(3, 40)
    sentences, steps = [f"{who} has {total} {item}."], []
    for n in range(1, rng.randint(min_ops, max_ops) + 1):
        sentence, reasoning, total = _operation(rng, total, who, item)
        sentences.append(sentence)
        steps.append(format_step(n, reasoning))
    sentences.append(f"How many {item} does {who} have now?")
    steps[-1] = steps[-1] + f" The answer is \\boxed{{{total}}}."
    return ArithProblem(f"arith-{seed}-{index}", " ".join(sentences), tuple(steps), total)


def make_problems(n: int, seed: int = 0) -> list[ArithProblem]:
    return [make_problem(seed, i) for i in range(n)]
