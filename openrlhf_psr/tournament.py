"""Choosing the best and worst of w candidate steps from pairwise self-judgments (pure logic, no model).

The paper scores each candidate by its number of pairwise wins in a round robin, takes the best as the accepted step
(and DPO *chosen*), the worst as *rejected*, and rolls back when all scores are equal. This module implements that,
plus the choices the paper leaves open (SPEC.md):

- **Both orders.** Each unordered pair {i, j} is judged with i shown as A and with j shown as A. Agreement gives the
  winner 1 and the loser 0, disagreement 0.5 each, so a judge with a pure position bias (always "A") produces only
  0.5/0.5 pairs, an all-equal score vector and a rollback, instead of a spurious preference.
  With ``aggregate="prob"`` and P(A) available in both orders, the pair goes to the candidate whose mean
  P(better) over the two orders exceeds 0.5 (a logit judge that always *says* A can still rank by probability).
- **Abstentions** (no parseable verdict): if one order abstains the other decides alone; if both do, 0.5 each.
  They are counted, never fatal.
- **Duplicates** are merged by the caller before judging (the search's ``_unique_valid``): comparing a text with
  itself wastes two judge calls. A tournament's indices are those of the distinct candidates it was given.
- **Knockout** is a cheaper bracket (w-1 pairs instead of w(w-1)/2) whose agreement with round robin is measured
  elsewhere.

Tournaments are state machines (:class:`RoundRobinState`, :class:`KnockoutState`): ``pending()`` lists the ordered
comparisons of the current round, ``submit()`` takes their verdicts, until ``done``. The search driver advances the
states of many problems together so that each round's judge prompts of all problems go to the engine as one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# the verdict types and the both-order aggregation live with the other records; re-exported here
from openrlhf_psr.records import Aggregate, PairOutcome, Verdict, aggregate_pair

__all__ = [
    "Aggregate",
    "KnockoutState",
    "PairOutcome",
    "RoundRobinState",
    "TournamentResult",
    "TournamentState",
    "Verdict",
    "aggregate_pair",
    "choose",
    "make_state",
    "round_robin_pairs",
    "score",
]

Method = Literal["round_robin", "knockout"]
_EPS = 1e-9


@dataclass(frozen=True)
class TournamentResult:
    """The outcome of one tournament over one problem's candidates.

    ``best is None`` means **roll back** (the paper's tie rule), never an index: either no preference at all
    (``is_tie``) or a preference weaker than ``min_margin`` (``below_margin``). Exactly one of the three holds:
    ``best is not None``, ``is_tie``, ``below_margin``.

    Attributes:
        best, worst: candidate indices (chosen / rejected), or both ``None`` (roll back).
        scores: wins per candidate.
        margin: best minus worst score: of the chosen pair, or of the pair that fell short of ``min_margin``
            (0.0 on a tie).
        n_comparisons: ordered judge comparisons made (judge calls).
        n_abstentions: of those, the ones that contributed nothing.
        n_consistent / n_pairs_both_orders: pairs whose two orders agreed / pairs where both orders gave a verdict;
            their ratio is the position-consistency rate.
        is_tie: no preference at all: all scores equal (round robin), every match drawn (knockout), or fewer than
            two distinct candidates. With a single distinct candidate (``n_unique == 1``) the model is unanimous;
            whether to accept it without a pair is the caller's choice.
        n_unique: the candidates judged (distinct: the caller merges duplicates).
        outcomes: every judged pair, for the trajectory log.
        below_margin: the candidates differ, but by less than ``min_margin``.
    """

    best: int | None
    worst: int | None
    scores: tuple[float, ...]
    margin: float
    n_comparisons: int
    n_abstentions: int
    n_consistent: int
    n_pairs_both_orders: int
    is_tie: bool
    n_unique: int = 0
    outcomes: tuple[PairOutcome, ...] = field(default=(), repr=False)
    below_margin: bool = False

    def __post_init__(self) -> None:
        if (self.best is None) != (self.worst is None):
            raise ValueError(f"best and worst must both be set or both be None, got {self.best}, {self.worst}")
        if self.best is None and self.is_tie == self.below_margin:
            raise ValueError("a result without best is either a tie or below the margin (exactly one)")
        if self.best is not None and (self.is_tie or self.below_margin):
            raise ValueError("a result with a best candidate is neither a tie nor below the margin")

    @property
    def rollback(self) -> bool:
        """No accepted candidate: the caller discards the previous step and regenerates (the paper's tie rule)."""
        return self.best is None

    @property
    def consistency_rate(self) -> float | None:
        """Share of pairs whose two orders agreed, among pairs where both orders gave a verdict."""
        return self.n_consistent / self.n_pairs_both_orders if self.n_pairs_both_orders else None


def round_robin_pairs(n: int, both_orders: bool = True) -> list[tuple[int, int]]:
    """Ordered comparisons (i shown as A, j as B) of a round robin over n candidates.

    >>> round_robin_pairs(3)
    [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    >>> round_robin_pairs(3, both_orders=False)
    [(0, 1), (0, 2), (1, 2)]
    """
    return _ordered([(i, j) for i in range(n) for j in range(i + 1, n)], both_orders)


def _ordered(pairs: Sequence[tuple[int, int]], both_orders: bool) -> list[tuple[int, int]]:
    if not both_orders:
        return list(pairs)
    return [c for i, j in pairs for c in ((i, j), (j, i))]


def score(outcomes: Sequence[PairOutcome], n: int | None = None) -> list[float]:
    """Wins per candidate, summed over pair outcomes; ``n`` defaults to the largest index seen plus one.

    >>> score([aggregate_pair(0, 1, Verdict("A"), Verdict("B")), aggregate_pair(0, 2, Verdict("A"), Verdict("A"))])
    [1.5, 0.0, 0.5]
    """
    if n is None:
        n = max((max(o.i, o.j) for o in outcomes), default=-1) + 1
    wins = [0.0] * n
    for o in outcomes:
        wins[o.i] += o.score_i
        wins[o.j] += o.score_j
    return wins


def choose(scores: Sequence[float], min_margin: float = 0.0) -> tuple[int, int] | None:
    """``(best, worst)`` by score, or ``None`` when all scores are equal or the margin is below ``min_margin``.

    All-equal scores is the paper's tie rule: the caller discards the previous step and rolls back. Ties for best
    (and for worst) go to the lowest index, which is deterministic and, as candidates are i.i.d. samples, unbiased.

    >>> choose([1.0, 3.0, 3.0, 0.0])
    (1, 3)
    >>> choose([1.5, 1.5, 1.5]) is None, choose([2.0, 1.5], min_margin=1.0) is None
    (True, True)
    """
    if len(scores) < 2:
        return None
    hi, lo = max(scores), min(scores)
    margin = hi - lo
    if margin <= _EPS or margin + _EPS < min_margin:
        return None
    best = next(k for k, s in enumerate(scores) if s >= hi - _EPS)
    worst = next(k for k, s in enumerate(scores) if s <= lo + _EPS)
    return best, worst


class TournamentState(ABC):
    """A tournament over ``n`` candidates, advanced one round of comparisons at a time.

    Protocol: while not ``done``: judge every ``(i, j)`` of ``pending()`` (i shown as A) and ``submit()`` the
    verdicts in the same order. Then ``result()``.
    """

    def __init__(
        self, n: int, *, both_orders: bool = True, aggregate: Aggregate = "verdict", min_margin: float = 0.0
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        self.both_orders = both_orders
        self.aggregate: Aggregate = aggregate
        self.min_margin = min_margin
        self.outcomes: list[PairOutcome] = []
        self.n_comparisons = 0

    @property
    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def _matches(self) -> list[tuple[int, int]]:
        """Unordered pairs of the current round."""

    @abstractmethod
    def _advance(self, outcomes: list[PairOutcome]) -> None:
        """Take the current round's outcomes and move to the next round."""

    @abstractmethod
    def result(self) -> TournamentResult: ...

    def pending(self) -> list[tuple[int, int]]:
        """Ordered comparisons to judge now (empty when done)."""
        return [] if self.done else _ordered(self._matches(), self.both_orders)

    def submit(self, verdicts: Sequence[Verdict]) -> None:
        """Verdicts for ``pending()``, in its order."""
        if self.done:
            raise RuntimeError("tournament is already done")
        matches = self._matches()
        per_pair = 2 if self.both_orders else 1
        if len(verdicts) != per_pair * len(matches):
            raise ValueError(f"expected {per_pair * len(matches)} verdicts, got {len(verdicts)}")
        outcomes = []
        for k, (i, j) in enumerate(matches):
            ij = verdicts[per_pair * k]
            ji = verdicts[per_pair * k + 1] if self.both_orders else None
            outcomes.append(aggregate_pair(i, j, ij, ji, aggregate=self.aggregate))
        self.n_comparisons += len(verdicts)
        self.outcomes.extend(outcomes)
        self._advance(outcomes)

    def _result(
        self, best_worst: tuple[int, int] | None, scores: list[float], is_tie: bool, margin: float = 0.0
    ) -> TournamentResult:
        """``best_worst`` None and not ``is_tie``: a preference of ``margin`` below ``min_margin``."""
        best, worst = best_worst if best_worst is not None else (None, None)
        return TournamentResult(
            best=best,
            worst=worst,
            scores=tuple(scores),
            margin=scores[best] - scores[worst] if best is not None and worst is not None else margin,
            n_comparisons=self.n_comparisons,
            n_abstentions=sum(o.n_abstentions for o in self.outcomes),
            n_consistent=sum(o.consistent for o in self.outcomes),
            n_pairs_both_orders=sum(o.decided_both for o in self.outcomes),
            is_tie=is_tie,
            n_unique=self.n,
            outcomes=tuple(self.outcomes),
            below_margin=best is None and not is_tie,
        )


class RoundRobinState(TournamentState):
    """The paper's tournament: every pair in one round; score = wins; best/worst by :func:`choose`.

    >>> rr = RoundRobinState(3)
    >>> len(rr.pending())
    6
    >>> rr.submit([Verdict("A")] * 6)  # always "A": every pair 0.5/0.5
    >>> rr.done, rr.result().is_tie, rr.result().best
    (True, True, None)
    """

    def __init__(self, n: int, **kwargs) -> None:
        super().__init__(n, **kwargs)
        self._done = n < 2

    @property
    def done(self) -> bool:
        return self._done

    def _matches(self) -> list[tuple[int, int]]:
        return round_robin_pairs(self.n, both_orders=False)

    def _advance(self, outcomes: list[PairOutcome]) -> None:
        self._done = True

    def result(self) -> TournamentResult:
        if not self.done:
            raise RuntimeError("tournament is not done")
        scores = score(self.outcomes, self.n)
        is_tie = self.n < 2 or max(scores) - min(scores) <= _EPS
        margin = 0.0 if is_tie else max(scores) - min(scores)
        return self._result(choose(scores, self.min_margin), scores, is_tie, margin)


class KnockoutState(TournamentState):
    """Single elimination: exactly n-1 pairs (each in both orders), in about log2(n) batched rounds.

    Each round pairs the survivors in order (0 v 1, 2 v 3, ...); an odd one out gets a bye to the next round.
    A drawn match (0.5/0.5) goes to the candidate with more wins so far, then to the lower index.

    Best is the champion. Worst is an approximation, since most pairs are never judged: among the candidates that
    lost the first match they played (first-round losers, or a bye holder beaten on entry) the one with the fewest
    wins, ties to the lowest index. It is always a candidate that lost to someone, never one that beat anyone.
    Tie: every match drawn (the judge never preferred anything), or no margin between best and worst.

    >>> ko = KnockoutState(4)
    >>> ko.pending()
    [(0, 1), (1, 0), (2, 3), (3, 2)]
    >>> ko.submit([Verdict("B"), Verdict("A"), Verdict("A"), Verdict("B")])  # 1 beats 0, 2 beats 3
    >>> ko.pending()
    [(1, 2), (2, 1)]
    >>> ko.submit([Verdict("A"), Verdict("B")])  # 1 beats 2
    >>> r = ko.result()
    >>> r.best, r.worst, r.n_comparisons
    (1, 0, 6)
    """

    def __init__(self, n: int, **kwargs) -> None:
        super().__init__(n, **kwargs)
        self._alive = list(range(n))
        self._wins = [0.0] * n
        self._played: set[int] = set()
        self._first_match_losers: list[int] = []

    @property
    def done(self) -> bool:
        return len(self._alive) <= 1

    def _matches(self) -> list[tuple[int, int]]:
        return [(self._alive[k], self._alive[k + 1]) for k in range(0, len(self._alive) - 1, 2)]

    def _advance(self, outcomes: list[PairOutcome]) -> None:
        bye = [self._alive[-1]] if len(self._alive) % 2 else []
        winners = []
        for o in outcomes:
            wins_before = (self._wins[o.i], self._wins[o.j])
            self._wins[o.i] += o.score_i
            self._wins[o.j] += o.score_j
            if not o.is_draw:
                i_wins = o.score_i > o.score_j
            else:
                i_wins = wins_before[0] > wins_before[1] or (wins_before[0] == wins_before[1] and o.i < o.j)
            winner, loser = (o.i, o.j) if i_wins else (o.j, o.i)
            if loser not in self._played:
                self._first_match_losers.append(loser)
            self._played.update((o.i, o.j))
            winners.append(winner)
        self._alive = winners + bye

    def result(self) -> TournamentResult:
        if not self.done:
            raise RuntimeError("tournament is not done")
        scores = list(self._wins)
        if self.n < 2 or all(o.is_draw for o in self.outcomes):
            return self._result(None, scores, True)
        best = self._alive[0]
        worst = min(self._first_match_losers, key=lambda k: (scores[k], k))
        margin = scores[best] - scores[worst]
        if margin <= _EPS:
            return self._result(None, scores, True)
        return self._result(None if margin + _EPS < self.min_margin else (best, worst), scores, False, margin)


def make_state(
    method: Method,
    n: int,
    *,
    both_orders: bool = True,
    aggregate: Aggregate = "verdict",
    min_margin: float = 0.0,
) -> TournamentState:
    """A fresh tournament state by name: ``"round_robin"`` (the paper's) or ``"knockout"``."""
    states: dict[str, type[TournamentState]] = {"round_robin": RoundRobinState, "knockout": KnockoutState}
    if method not in states:
        raise ValueError(f"unknown tournament {method!r}; expected one of {sorted(states)}")
    return states[method](n, both_orders=both_orders, aggregate=aggregate, min_margin=min_margin)
