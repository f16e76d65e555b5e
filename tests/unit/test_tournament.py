"""Tournaments over candidate steps: both-order aggregation, tie rule, abstentions, knockout. (Duplicates are merged
by the search before its tournaments: tests/unit/test_search.py.)"""

from __future__ import annotations

import doctest
import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from openrlhf_psr import tournament
from openrlhf_psr.tournament import (
    KnockoutState,
    RoundRobinState,
    TournamentResult,
    Verdict,
    aggregate_pair,
    choose,
    make_state,
    round_robin_pairs,
    score,
)

pytestmark = pytest.mark.unit

Judge = Callable[[list[tuple[str, str]]], list[Verdict]]


def quality_judge(quality: dict[str, float]) -> Judge:
    """A consistent judge: the candidate of higher quality wins, whatever its position."""
    return lambda pairs: [Verdict("A" if quality[a] > quality[b] else "B") for a, b in pairs]


def always(winner: str | None, p_a: float | None = None) -> Judge:
    return lambda pairs: [Verdict(winner, p_a) for _ in pairs]  # type: ignore[arg-type]


class CountingJudge:
    """Wraps a judge; records every comparison it was asked for."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.calls: list[tuple[str, str]] = []

    def __call__(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        self.calls.extend(pairs)
        return self.judge(pairs)


def play(candidates: Sequence[str], judge: Judge, *, method="round_robin", **settings) -> TournamentResult:
    """One problem's tournament over distinct candidates, driven to the end through the state protocol (the search
    drives many problems' states together the same way)."""
    state = make_state(method, len(candidates), **settings)
    while not state.done:
        state.submit(judge([(candidates[i], candidates[j]) for i, j in state.pending()]))
    return state.result()


CANDIDATES = ["c0", "c1", "c2", "c3", "c4", "c5"]
QUALITY = {"c0": 2.0, "c1": 5.0, "c2": 0.0, "c3": 4.0, "c4": 1.0, "c5": 3.0}


# ---- one pair ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ij", "ji", "expected", "consistent", "abstentions"),
    [
        ("A", "B", (1.0, 0.0), True, 0),  # both orders: i
        ("B", "A", (0.0, 1.0), True, 0),  # both orders: j
        ("A", "A", (0.5, 0.5), False, 0),  # position bias cancels
        ("B", "B", (0.5, 0.5), False, 0),
        (None, "B", (1.0, 0.0), False, 1),  # one abstention: the other order alone
        ("B", None, (0.0, 1.0), False, 1),
        (None, None, (0.5, 0.5), False, 2),  # both abstain: no information
    ],
)
def test_both_order_aggregation(ij, ji, expected, consistent, abstentions) -> None:
    o = aggregate_pair(3, 5, Verdict(ij), Verdict(ji))
    assert (o.i, o.j, (o.score_i, o.score_j)) == (3, 5, expected)
    assert o.consistent is consistent
    assert o.n_abstentions == abstentions
    assert o.decided_both is (ij is not None and ji is not None)


def test_single_order_aggregation() -> None:
    o = aggregate_pair(0, 1, Verdict("B"))
    assert (o.score_i, o.score_j, o.decided_both, o.consistent) == (0.0, 1.0, False, False)
    assert aggregate_pair(0, 1, Verdict(None)).score_i == 0.5


def test_probability_aggregation() -> None:
    # The judge says "A" in both orders (position bias) but its probabilities still prefer candidate 1.
    o = aggregate_pair(0, 1, Verdict("A", 0.55), Verdict("A", 0.75), aggregate="prob")
    assert (o.score_i, o.score_j) == (0.0, 1.0)
    assert o.p_i == pytest.approx(0.4)
    assert o.n_abstentions == 0
    # Exactly 0.5 on average: a draw.
    o = aggregate_pair(0, 1, Verdict("A", 0.7), Verdict("A", 0.7), aggregate="prob")
    assert (o.score_i, o.score_j) == (0.5, 0.5)
    # Verdict mode ignores probabilities.
    assert aggregate_pair(0, 1, Verdict("A", 0.55), Verdict("A", 0.75)).score_i == 0.5


def test_probability_aggregation_falls_back_to_verdicts_without_both_probabilities() -> None:
    o = aggregate_pair(0, 1, Verdict("A", 0.9), Verdict("B", None), aggregate="prob")
    assert (o.score_i, o.p_i) == (1.0, None)
    o = aggregate_pair(0, 1, Verdict("B", float("nan")), Verdict("A", 0.1), aggregate="prob")
    assert (o.score_i, o.p_i) == (0.0, None)


def test_verdict_validation() -> None:
    with pytest.raises(ValueError):
        Verdict("C")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Verdict("A", 1.5)
    assert Verdict(None, float("nan")).winner is None  # NaN is tolerated, treated as missing


# ---- scores and choice -------------------------------------------------------------------------------------------


def test_score_sums_pair_outcomes() -> None:
    outcomes = [
        aggregate_pair(0, 1, Verdict("A"), Verdict("B")),
        aggregate_pair(0, 2, Verdict("A"), Verdict("A")),
        aggregate_pair(1, 2, Verdict(None), Verdict("A")),
    ]
    assert score(outcomes) == [1.5, 0.0, 1.5]
    assert score(outcomes, n=4) == [1.5, 0.0, 1.5, 0.0]


def test_choose_tie_rule_and_lowest_index() -> None:
    assert choose([2.5, 2.5, 2.5, 2.5]) is None  # all equal: the caller rolls back
    assert choose([1.0]) is None and choose([]) is None
    assert choose([3.0, 1.0, 3.0, 1.0]) == (0, 1)  # ties for best and for worst go to the lowest index
    assert choose([0.0, 2.0, 1.0]) == (1, 0)


def test_choose_min_margin() -> None:
    assert choose([3.0, 1.0], min_margin=2.0) == (0, 1)  # margin equal to min_margin is enough
    assert choose([3.0, 1.5], min_margin=2.0) is None


def test_round_robin_pairs() -> None:
    pairs = round_robin_pairs(6)
    assert len(pairs) == 30 and len(set(pairs)) == 30
    assert all((j, i) in pairs for i, j in pairs)
    assert round_robin_pairs(6, both_orders=False) == list(itertools.combinations(range(6), 2))
    assert round_robin_pairs(1) == [] and round_robin_pairs(0) == []


# ---- round robin -------------------------------------------------------------------------------------------------


def test_round_robin_consistent_judge_picks_true_best_and_worst() -> None:
    judge = CountingJudge(quality_judge(QUALITY))
    r = play(CANDIDATES, judge)
    assert (r.best, r.worst) == (1, 2)
    # With a consistent total order, score = number of candidates beaten = rank.
    assert r.scores == (2.0, 5.0, 0.0, 4.0, 1.0, 3.0)
    assert r.margin == 5.0 and not r.is_tie
    assert r.n_comparisons == len(judge.calls) == 30
    assert (r.n_consistent, r.n_pairs_both_orders, r.consistency_rate) == (15, 15, 1.0)
    assert r.n_abstentions == 0 and r.n_unique == 6 and len(r.outcomes) == 15


def test_round_robin_always_a_judge_is_a_tie() -> None:
    r = play(CANDIDATES, always("A"))
    assert r.is_tie and (r.best, r.worst) == (None, None)
    assert all((o.score_i, o.score_j) == (0.5, 0.5) for o in r.outcomes)
    assert r.scores == (2.5,) * 6 and r.margin == 0.0
    assert (r.n_consistent, r.n_pairs_both_orders, r.consistency_rate) == (0, 15, 0.0)


def test_round_robin_probabilities_rescue_a_position_biased_judge() -> None:
    # Says "A" every time, but P(A) leans towards the better candidate by 0.1.
    def judge(pairs):
        return [Verdict("A", 0.6 + (0.1 if QUALITY[a] > QUALITY[b] else -0.1)) for a, b in pairs]

    assert play(CANDIDATES, judge).is_tie
    r = play(CANDIDATES, judge, aggregate="prob")
    assert (r.best, r.worst, r.is_tie) == (1, 2, False)


def test_round_robin_single_order_keeps_position_bias() -> None:
    r = play(CANDIDATES, always("A"), both_orders=False)
    assert r.n_comparisons == 15 and r.n_pairs_both_orders == 0
    assert (r.best, r.worst) == (0, 5)  # "A" is always the lower index: the bias the second order removes


def test_round_robin_abstentions() -> None:
    # Abstains whenever the better candidate is shown as A: the other order still decides every pair.
    good = quality_judge(QUALITY)

    def judge(pairs):
        return [Verdict(None) if QUALITY[a] > QUALITY[b] else v for (a, b), v in zip(pairs, good(pairs), strict=True)]

    r = play(CANDIDATES, judge)
    assert (r.best, r.worst) == (1, 2)
    assert r.n_abstentions == 15 and r.n_pairs_both_orders == 0
    assert r.consistency_rate is None

    r = play(CANDIDATES, always(None))
    assert r.is_tie and r.n_abstentions == 30 and r.scores == (2.5,) * 6


def test_round_robin_min_margin() -> None:
    assert play(CANDIDATES, quality_judge(QUALITY), min_margin=5.0).best == 1
    r = play(CANDIDATES, quality_judge(QUALITY), min_margin=5.5)
    # best=None is a rollback, never an index: not a tie, but a preference (margin 5) weaker than asked for
    assert (r.best, r.worst, r.is_tie, r.below_margin, r.rollback, r.margin) == (None, None, False, True, True, 5.0)


@pytest.mark.parametrize("method", ["round_robin", "knockout"])
def test_a_single_candidate_is_a_tie_without_judging(method) -> None:
    judge = CountingJudge(always("A"))
    r = play(["Step 2: x"], judge, method=method)
    assert judge.calls == [] and r.n_unique == 1 and r.is_tie and r.best is None


# ---- knockout ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w", range(0, 10))
def test_knockout_uses_w_minus_1_pairs_and_finds_the_true_best(w: int) -> None:
    rng = random.Random(w)
    for _ in range(20):
        quality = {f"c{k}": rng.random() for k in range(w)}
        candidates = list(quality)
        judge = CountingJudge(quality_judge(quality))
        r = play(candidates, judge, method="knockout")
        unordered = {frozenset(p) for p in judge.calls}
        assert len(unordered) == max(w - 1, 0)
        assert r.n_comparisons == len(judge.calls) == 2 * max(w - 1, 0)
        if w < 2:
            assert r.is_tie and r.best is None
            continue
        assert candidates[r.best] == max(quality, key=quality.get)
        # The worst is a candidate that lost its first match, i.e. it beat nobody.
        assert r.scores[r.worst] == 0.0 and r.worst != r.best
        assert r.consistency_rate == 1.0


def test_knockout_worst_is_an_approximation_among_first_round_losers() -> None:
    # Round 1: c1 beats c0, c3 beats c2, c5 beats c4. The three losers have 0 wins each, and the bracket never
    # compares them, so the lowest index (c0) is rejected although c2 is the true worst (round robin finds it).
    r = play(CANDIDATES, quality_judge(QUALITY), method="knockout")
    assert (r.best, r.worst) == (1, 0)
    assert r.scores == (0.0, 3.0, 0.0, 1.0, 0.0, 1.0)
    assert play(CANDIDATES, quality_judge(QUALITY)).worst == 2


def test_knockout_always_a_judge_is_a_tie() -> None:
    r = play(CANDIDATES, always("A"), method="knockout")
    assert r.is_tie and r.best is None and r.n_comparisons == 10


def test_knockout_min_margin() -> None:
    r = play(CANDIDATES, quality_judge(QUALITY), method="knockout", min_margin=100.0)
    assert r.best is None and r.rollback and r.below_margin and not r.is_tie and r.margin == 3.0


@pytest.mark.parametrize("method", ["round_robin", "knockout"])
def test_every_result_is_exactly_one_of_accept_tie_or_below_margin(method) -> None:
    rng = random.Random(3)
    for _ in range(200):
        w = rng.randrange(0, 7)
        candidates = [f"c{k}" for k in range(w)]

        def judge(pairs):
            return [Verdict(rng.choice(["A", "B", None])) for _ in pairs]

        r = play(candidates, judge, method=method, min_margin=rng.choice([0.0, 1.0, 2.5]))
        assert [r.best is not None, r.is_tie, r.below_margin].count(True) == 1
        assert r.rollback == (r.best is None) and (r.best is None) == (r.worst is None)


def test_knockout_draw_goes_to_more_wins_then_lower_index() -> None:
    ko = KnockoutState(4)
    ko.submit([Verdict("A"), Verdict("A"), Verdict("A"), Verdict("B")])  # 0 v 1 drawn -> 0; 2 beats 3
    assert ko.pending() == [(0, 2), (2, 0)]
    ko.submit([Verdict("A"), Verdict("A")])  # drawn final -> 2, which has more wins
    r = ko.result()
    assert (r.best, r.worst) == (2, 3) and not r.is_tie


# ---- the state-machine protocol ----------------------------------------------------------------------------------


def _advance_all(states: Sequence[tuple[list[str], RoundRobinState | KnockoutState]], judge: Judge) -> int:
    """Drive many problems' tournaments together, one batched judge call per round; returns the number of rounds."""
    rounds = 0
    while any(not s.done for _, s in states):
        batch = [(c[i], c[j]) for c, s in states for i, j in s.pending()]
        verdicts = judge(batch)
        rounds += 1
        k = 0
        for _, s in states:
            m = len(s.pending())
            if m:
                s.submit(verdicts[k : k + m])
                k += m
        assert k == len(verdicts)
    return rounds


def test_knockout_states_batch_across_problems() -> None:
    problems = [[f"c{k}" for k in range(w)] for w in (6, 3, 2, 1, 5)]
    quality = {f"c{k}": float(k % 4) + k / 10 for k in range(6)}
    states = [(c, KnockoutState(len(c))) for c in problems]
    rounds = _advance_all(states, quality_judge(quality))
    assert rounds == 3  # ceil(log2(6))
    for c, s in states:
        r = s.result()
        assert r.n_comparisons == 2 * max(len(c) - 1, 0)
        if len(c) >= 2:
            assert c[r.best] == max(c, key=quality.get)


def test_round_robin_state_is_one_round() -> None:
    state = RoundRobinState(4)
    assert state.pending() == round_robin_pairs(4)
    state.submit([Verdict("A")] * 12)
    assert state.done and state.pending() == []


def test_state_protocol_errors() -> None:
    state = make_state("round_robin", 3)
    with pytest.raises(RuntimeError):
        state.result()
    with pytest.raises(ValueError):
        state.submit([Verdict("A")] * 5)
    state.submit([Verdict("A")] * 6)
    with pytest.raises(RuntimeError):
        state.submit([])
    with pytest.raises(ValueError):
        make_state("swiss", 3)  # type: ignore[arg-type]


def test_result_is_frozen() -> None:
    r = play(CANDIDATES, quality_judge(QUALITY))
    assert isinstance(r, TournamentResult)
    with pytest.raises(AttributeError):
        r.best = 0  # type: ignore[misc]


def test_doctests() -> None:
    assert doctest.testmod(tournament).failed == 0
