"""The built-in task: seeded multi-step arithmetic word problems with exact ``Step n:`` reference solutions.

It ships with the package so the main job runs anywhere with no download. Each problem chains 2-4 operations on
one quantity; the reference solution has one step per operation and ends with ``\\boxed{answer}``. Everything is
derived from ``(seed, index)``, so a problem set is reproducible and any index can be regenerated alone.

Difficulty is a set of knobs (:class:`Difficulty`: operations per problem, number ranges, a cap on every total,
which operations), spelled as source options: ``builtin:arith?seed=11&ops=2-3&max_value=50``. The defaults give
the original problems. :func:`trace_question` recomputes a question's quantities from its text, for exact checks.

>>> p = make_problem(seed=0, index=0)
>>> p.steps[-1].endswith("\\\\boxed{%d}." % p.answer)
True
>>> make_problem(seed=0, index=0) == p
True
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

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


KINDS = ("buy_groups", "give", "double", "find", "share")


@dataclass(frozen=True)
class Difficulty:
    """The built-in task's difficulty knobs. The defaults reproduce the original problems exactly (same random
    draws in the same order), so existing seeds keep their meaning.

    Ranges are inclusive ``(low, high)``. ``max_value`` caps every running total (and the starting amount): an
    operation that cannot stay under it is not chosen and its amounts are drawn below the cap. ``kinds`` limits the
    operations (``share`` falls back to ``find`` when the total has no divisor in 2..5, as it always did).

    >>> Difficulty.from_options({"ops": "2-3", "max_value": "50"})
    Difficulty(min_ops=2, max_ops=3, start=(3, 40), add=(2, 30), groups=(2, 6), each=(2, 9), max_value=50, \
kinds=('buy_groups', 'give', 'double', 'find', 'share'))
    >>> Difficulty(min_ops=2, max_ops=3, max_value=50).spelling()
    'ops=2-3&max_value=50'
    >>> Difficulty().spelling()
    ''
    """

    min_ops: int = 2
    max_ops: int = 4
    start: tuple[int, int] = (3, 40)  # the starting amount
    add: tuple[int, int] = (2, 30)  # "finds k more"
    groups: tuple[int, int] = (2, 6)  # "buys g packs ..."
    each: tuple[int, int] = (2, 9)  # "... with e in each pack"
    max_value: int | None = None
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self):
        for name in ("start", "add", "groups", "each"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"built-in task: {name}={low}-{high}: expected 1 <= low <= high")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"built-in task: ops={self.min_ops}-{self.max_ops}: expected 1 <= low <= high")
        if self.max_value is not None and self.max_value < max(self.start[0], 2):
            raise ValueError(f"built-in task: max_value={self.max_value}: expected >= the lowest start amount")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"built-in task: kinds={','.join(self.kinds)}: expected some of {','.join(KINDS)}")

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Difficulty:
        """From source options (``ops=2-3``, ``start=3-40``, ``add``, ``groups``, ``each``: a range ``low-high``
        or one number; ``max_value=50``; ``kinds=find,give``). Unknown keys are an error listing the known ones."""

        def span(key: str, text: str) -> tuple[int, int]:
            low, sep, high = text.partition("-")
            try:
                return (int(low), int(high)) if sep else (int(low), int(low))
            except ValueError:
                raise ValueError(f"built-in option {key}={text!r}: expected a number or a range, e.g. 2-5") from None

        kw: dict = {}
        for key, text in options.items():
            if key == "ops":
                kw["min_ops"], kw["max_ops"] = span(key, text)
            elif key in ("start", "add", "groups", "each"):
                kw[key] = span(key, text)
            elif key == "max_value":
                kw[key] = span(key, text)[0]
            elif key == "kinds":
                kw[key] = tuple(k.strip() for k in text.split(",") if k.strip())
            else:
                raise ValueError(f"unknown built-in task option {key!r}; available: seed, {', '.join(OPTION_NAMES)}")
        return cls(**kw)

    def spelling(self) -> str:
        """The non-default knobs as source options (empty for the defaults)."""
        default, parts = Difficulty(), []
        if (self.min_ops, self.max_ops) != (default.min_ops, default.max_ops):
            parts.append(f"ops={self.min_ops}-{self.max_ops}")
        for name in ("start", "add", "groups", "each"):
            if getattr(self, name) != getattr(default, name):
                parts.append(f"{name}={getattr(self, name)[0]}-{getattr(self, name)[1]}")
        if self.max_value is not None:
            parts.append(f"max_value={self.max_value}")
        if self.kinds != default.kinds:
            parts.append(f"kinds={','.join(self.kinds)}")
        return "&".join(parts)


OPTION_NAMES = ("ops", "start", "add", "groups", "each", "max_value", "kinds")
DEFAULT = Difficulty()


def _room(total: int, d: Difficulty) -> int | None:
    return None if d.max_value is None else d.max_value - total


def _feasible(kind: str, total: int, d: Difficulty) -> bool:
    room = _room(total, d)
    if kind in ("give", "double", "share") and total < 4:  # the original rule: small totals only grow
        return False
    if room is None:
        return True
    if kind == "buy_groups":
        return d.groups[0] * d.each[0] <= room
    if kind == "double":
        return total <= room
    if kind == "find":
        return d.add[0] <= room
    return True  # give and share only shrink the total


def _find(rng: random.Random, total: int, who: str, item: str, d: Difficulty = DEFAULT) -> tuple[str, str, int]:
    room = _room(total, d)
    k = rng.randint(d.add[0], d.add[1] if room is None else min(d.add[1], room))
    return f"{who} finds {k} more {item}.", f"Finding {k} more gives {total} + {k} = {total + k} {item}.", total + k


def _operation(rng: random.Random, total: int, who: str, item: str, d: Difficulty = DEFAULT) -> tuple[str, str, int]:
    """One operation: (sentence for the question, reasoning for the step, new total)."""
    choices = tuple(k for k in KINDS if k in d.kinds and _feasible(k, total, d))
    if not choices:  # the chosen kinds cannot move this total under the cap: any operation that can
        choices = tuple(k for k in KINDS if _feasible(k, total, d))
    if not choices:
        raise ValueError(f"built-in task {d.spelling()!r}: no operation keeps the total {total} within the cap")
    kind = rng.choice(choices)
    room = _room(total, d)
    if kind == "buy_groups":
        high = d.groups[1] if room is None else min(d.groups[1], room // d.each[0])
        groups = rng.randint(d.groups[0], high)
        high = d.each[1] if room is None else min(d.each[1], room // groups)
        each = rng.randint(d.each[0], high)
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
        return _find(rng, total, who, item, d)
    # share: keep an exact integer by splitting into a divisor of the total
    divisors = [k for k in range(2, 6) if total % k == 0]
    if not divisors:
        if _feasible("find", total, d):
            return _find(rng, total, who, item, d)
        k = rng.randint(1, total - 1)
        return (
            f"{who} gives away {k} {item}.",
            f"After giving away {k}, {who} has {total} - {k} = {total - k} {item}.",
            total - k,
        )
    parts = rng.choice(divisors)
    return (
        f"{who} splits the {item} equally into {parts} boxes and keeps one box.",
        f"One of {parts} equal boxes holds {total} / {parts} = {total // parts} {item}.",
        total // parts,
    )


def make_problem(
    seed: int, index: int, min_ops: int | None = None, max_ops: int | None = None, *, difficulty: Difficulty = DEFAULT
) -> ArithProblem:
    """Problem ``index`` of ``seed``. With non-default ``difficulty`` the id carries its spelling's digest, so
    problems of different difficulties never share an id (resume and per-problem seeds key on ids)."""
    if min_ops is not None or max_ops is not None:
        difficulty = replace(difficulty, min_ops=min_ops or difficulty.min_ops, max_ops=max_ops or difficulty.max_ops)
    d = difficulty
    rng = random.Random(f"psr-arith:{seed}:{index}")
    who, item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    total = rng.randint(d.start[0], d.start[1] if d.max_value is None else min(d.start[1], d.max_value))
    sentences, steps = [f"{who} has {total} {item}."], []
    for n in range(1, rng.randint(d.min_ops, d.max_ops) + 1):
        sentence, reasoning, total = _operation(rng, total, who, item, d)
        sentences.append(sentence)
        steps.append(format_step(n, reasoning))
    sentences.append(f"How many {item} does {who} have now?")
    steps[-1] = steps[-1] + f" The answer is \\boxed{{{total}}}."
    spelling = d.spelling()
    tag = f"{hashlib.sha1(spelling.encode()).hexdigest()[:8]}-" if spelling else ""
    return ArithProblem(f"arith-{seed}-{tag}{index}", " ".join(sentences), tuple(steps), total)


def make_problems(n: int, seed: int = 0, difficulty: Difficulty = DEFAULT) -> list[ArithProblem]:
    return [make_problem(seed, i, difficulty=difficulty) for i in range(n)]


@dataclass(frozen=True)
class ArithTrace:
    """What a question of the built-in task implies: the running totals ``t0`` (the start) .. ``tn`` (the answer)
    and every quantity a correct solution names or computes (amounts, pack contents, totals)."""

    totals: tuple[int, ...]
    values: frozenset[int]


_START = re.compile(r"^\w+ has (\d+) \w+\.$")
_SENTENCES = (
    (re.compile(r"^\w+ buys (\d+) packs with (\d+) \w+ in each pack\.$"), "buy_groups"),
    (re.compile(r"^\w+ gives away (\d+) \w+\.$"), "give"),
    (re.compile(r"^\w+'s collection then doubles\.$"), "double"),
    (re.compile(r"^\w+ finds (\d+) more \w+\.$"), "find"),
    (re.compile(r"^\w+ splits the \w+ equally into (\d+) boxes and keeps one box\.$"), "share"),
)


def trace_question(question: str) -> ArithTrace | None:
    """Recompute a built-in question's quantities from its text (None when it is not one of ours): the exact
    reference an arithmetic verifier checks a step against.

    >>> p = make_problem(0, 3)
    >>> t = trace_question(p.question)
    >>> t.totals[-1] == p.answer, len(t.totals) == len(p.steps) + 1
    (True, True)
    >>> trace_question("What is 2 + 2?") is None
    True
    """
    sentences = re.split(r"(?<=[.?])\s+", question.strip())
    if len(sentences) < 3 or not sentences[-1].startswith("How many "):
        return None
    start = _START.match(sentences[0])
    if not start:
        return None
    total = int(start.group(1))
    totals, values = [total], {total}
    for sentence in sentences[1:-1]:
        matched = next(((m, kind) for pattern, kind in _SENTENCES if (m := pattern.match(sentence))), None)
        if matched is None:
            return None
        m, kind = matched
        numbers = [int(x) for x in m.groups()]
        values.update(numbers)
        if kind == "buy_groups":
            values.add(numbers[0] * numbers[1])
            total += numbers[0] * numbers[1]
        elif kind == "give":
            total -= numbers[0]
        elif kind == "double":
            values.add(2)
            total *= 2
        elif kind == "find":
            total += numbers[0]
        elif numbers[0] == 0 or total % numbers[0]:
            return None
        else:
            total //= numbers[0]
        if total < 0:
            return None
        totals.append(total)
        values.add(total)
    return ArithTrace(tuple(totals), frozenset(values))
