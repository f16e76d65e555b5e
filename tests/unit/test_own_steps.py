"""On-policy EFT (``search:DIR``): judge training rows made from a search's own candidate steps, labelled by the
exact checker. The search here is the real :class:`~openrlhf_psr.search.StepSearch` with the real oracle judge on a
real built-in problem; only the policy is scripted (its candidates are written out), so the rows can be checked
against what the search's judge was shown."""

from __future__ import annotations

import re

import pytest

from openrlhf_psr.data.arith import Difficulty, make_problem
from openrlhf_psr.data.own_steps import own_step_eft, read_trajectories, replay
from openrlhf_psr.data.sources import EFT, IFT, SourceError, parse_source
from openrlhf_psr.errors import DataError
from openrlhf_psr.judges.base import Judgment, PairwiseJudge
from openrlhf_psr.judges.oracle import OracleJudge, check_step
from openrlhf_psr.records import Problem
from openrlhf_psr.search import SearchConfig, StepSearch
from openrlhf_psr.tournament import Verdict

from .test_search import ScriptedEngine, _sample

pytestmark = pytest.mark.unit

P = make_problem(0, 0, difficulty=Difficulty(min_ops=2, max_ops=2))  # 25 + 17 = 42, then 42 / 2 = 21
RIGHT_1 = "Step 1: Finding 17 more gives 25 + 17 = 42 coins."
FALSE_1 = "Step 1: Finding 17 more gives 25 + 17 = 43 coins."  # a false claim
RIGHT_2 = "Step 2: One of 2 equal boxes holds 42 / 2 = 21 coins. The answer is \\boxed{21}."
OTHER_RIGHT_2 = "Step 2: Each of the 2 boxes gets 42 / 2 = 21 coins. The answer is \\boxed{21}."
FALSE_2 = "Step 2: One of 2 equal boxes holds 42 / 2 = 20 coins. The answer is \\boxed{20}."
OFF_2 = "Step 2: One of 3 boxes holds 42 / 3 = 14 coins. The answer is \\boxed{14}."  # true, but not the problem's
CONFIG = SearchConfig(width=3, max_rounds=8)
BLOCK = re.compile(r"\[The Start of Assistant ([AB])'s Next Reasoning Step\]\n(.*?)\n\[The End", re.S)


def policy(first_try_at_step_2: list[bool]):
    """Step 1: right, a false claim, right again. Step 2, first time: two different right steps (the oracle ties:
    a rollback to step 1); then right, a false claim and a true equation on numbers the problem does not hold."""

    def script(question, n_steps, request):
        if n_steps == 0:
            return [_sample(RIGHT_1), _sample(FALSE_1), _sample(RIGHT_1)]
        if first_try_at_step_2[0]:
            first_try_at_step_2[0] = False
            return [_sample(RIGHT_2, "eos"), _sample(OTHER_RIGHT_2, "eos"), _sample(RIGHT_2, "eos")]
        return [_sample(RIGHT_2, "eos"), _sample(FALSE_2, "eos"), _sample(OFF_2, "eos")]

    return script


class Recording(PairwiseJudge):
    """A judge that remembers every comparison it was shown, deciding as ``inner`` does."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def judge(self, comparisons):
        self.seen += list(comparisons)
        return self.inner.judge(comparisons)


class PrefersTheSlip(PairwiseJudge):
    """Consistently prefers the false claim at step 1 (and the right answer at step 2)."""

    def judge(self, comparisons):
        liked = [
            ("= 43" in c.step_a or "{21}" in c.step_a, "= 43" in c.step_b or "{21}" in c.step_b) for c in comparisons
        ]
        return [Judgment(Verdict("A" if a and not b else "B" if b and not a else None)) for a, b in liked]


@pytest.fixture()
def oracle_search(tmp_path):
    judge = Recording(OracleJudge())
    problem = Problem(P.id, P.question, str(P.answer))
    StepSearch(ScriptedEngine(policy([True])), judge, CONFIG).run([problem], tmp_path, progress=False)
    return tmp_path, judge.seen


def _steps(prompt: str) -> dict[str, str]:
    return dict(BLOCK.findall(prompt))


def test_the_replayed_prefix_is_the_one_the_search_held_through_a_rollback(oracle_search):
    folder, _ = oracle_search
    [t] = read_trajectories(folder)
    actions = [r["action"] for r in t.rounds]
    assert actions == ["accept", "rollback", "accept", "accept"]  # the two right step 2s tie: step 1 is dropped
    prefixes = [prefix for prefix, _ in replay(t)]
    assert [len(p) for p in prefixes] == [0, 1, 0, 1]
    assert prefixes[3][0].startswith(RIGHT_1)


def test_rows_are_the_judge_prompts_the_search_showed_with_the_checked_right_step_as_verdict(oracle_search):
    folder, seen = oracle_search
    shown = {c.prompt() for c in seen}
    rows = own_step_eft(read_trajectories(folder))
    # step 1: right vs false claim (once, though the round is searched again after the rollback); step 2: right vs
    # the false claim and vs the true equation on other numbers; the rollback round's two right steps make no row
    assert len(rows) == 2 * (1 + 2)
    for row in rows:
        assert row["input"] in shown  # the very prompt the search's judge read
        steps = _steps(row["input"])
        previous = re.findall(r"^Step \d+: .*$", row["input"].split("[The Start of Assistant A")[0], re.M)
        labels = {k: check_step(P.question, previous, s).label for k, s in steps.items()}
        verdict = row["output"][-3]
        assert labels[verdict] == "right" and labels["AB".replace(verdict, "")] == "wrong", (labels, row["output"])
    verdicts = [row["output"][-5:] for row in rows]
    assert verdicts.count("[[A]]") == verdicts.count("[[B]]")  # both orders of every pair
    assert any("result is 43: wrong" in row["output"] for row in rows)  # a false claim names its stated result
    assert not any(OTHER_RIGHT_2 in row["input"] for row in rows)


def test_ties_and_limit(oracle_search):
    folder, _ = oracle_search
    trajectories = read_trajectories(folder)
    rows = own_step_eft(trajectories, ties=5)
    tie_rows = [r for r in rows if r["output"].endswith("[[C]]")]
    assert len(tie_rows) == 2  # the two wrong step 2s, both orders: the only two-wrong pair with a right neighbour
    assert "result is 20: wrong" in tie_rows[0]["output"] and "result is 14: wrong" in tie_rows[0]["output"]
    assert all('"[[C]]" for a tie' in r["input"] for r in rows)  # with ties, every row in the tie prompt
    assert len(own_step_eft(trajectories, limit=1)) == 2
    assert own_step_eft(trajectories, limit=1, seed=3) == own_step_eft(trajectories, limit=1, seed=3)


def test_no_row_after_a_wrong_accepted_step(tmp_path):
    """A judge that prefers the false claim accepts it: nothing after it is labelled."""

    def wrong_first(question, n_steps, request):
        if n_steps == 0:
            return [_sample(FALSE_1), _sample(RIGHT_1), _sample(FALSE_1)]
        return [_sample(RIGHT_2, "eos"), _sample(FALSE_2, "eos"), _sample(OFF_2, "eos")]

    problem = Problem(P.id, P.question, str(P.answer))
    StepSearch(ScriptedEngine(wrong_first), PrefersTheSlip(), CONFIG).run([problem], tmp_path, progress=False)
    [t] = read_trajectories(tmp_path)
    assert [r["action"] for r in t.rounds] == ["accept", "accept"] and t.steps[0].text.startswith(FALSE_1)
    rows = own_step_eft([t])
    assert len(rows) == 2 and all(FALSE_1 in r["input"] and RIGHT_1 in r["input"] for r in rows)


def test_the_source_kind_and_its_errors(oracle_search, tmp_path):
    from openrlhf_psr.cli.sft_data import build

    folder, _ = oracle_search
    source = parse_source(f"search:{folder}?limit=2&ties=1", EFT)
    assert source.path == folder and dict(source.options) == {"limit": 2, "ties": 1}
    with pytest.raises(SourceError, match="expected a source of kind builtin or gsm8k here, found 'search'"):
        parse_source(f"search:{folder}", IFT)
    rows = build([], [f"search:{folder}?limit=2"])
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"eft"}
    missing = tmp_path / "no_search_here"
    with pytest.raises(DataError, match=f"{missing}: expected a search output folder"):
        build([], [f"search:{missing}"])
    empty = tmp_path / "empty"
    (empty / "trajectories").mkdir(parents=True)
    (empty / "trajectories" / "shard-00000.jsonl").write_text("")
    with pytest.raises(DataError, match="no round of its step-wise search has a right prefix"):
        build([], [f"search:{empty}"])


def test_a_round_log_the_replay_cannot_follow_is_named(oracle_search):
    folder, _ = oracle_search
    [t] = read_trajectories(folder)
    t.rounds[2]["prefix_steps"] = 1  # as if a rollback had not been logged
    with pytest.raises(DataError, match=f"problem {P.id}: round 2 records 1 prefix steps"):
        list(replay(t))


def test_doctests():
    import doctest

    import openrlhf_psr.data.own_steps as own_steps

    assert doctest.testmod(own_steps).failed == 0


def test_a_search_folder_is_a_judge_set_of_the_models_own_slips(oracle_search):
    """``data.eval.judge_sets: [search:DIR]``: right-vs-wrong pairs the exact checker labels (the oracle judge is
    right on all of them, a judge preferring the slip on none), and the two wrong candidates as the tie set."""
    from openrlhf_psr.cli.evaluate import load_judge_pairs, load_tie_pairs
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy

    folder, _ = oracle_search
    name, pairs = load_judge_pairs(f"search:{folder}", seed=0)
    assert name == "search" and len(pairs) == 3
    for p in pairs:
        assert check_step(P.question, p.previous_steps, p.better).label == "right"
        assert check_step(P.question, p.previous_steps, p.worse).label == "wrong"
    assert judge_accuracy(OracleJudge(), pairs)["accuracy"] == 1.0
    assert judge_accuracy(PrefersTheSlip(), pairs)["accuracy"] < 1.0
    assert len(load_judge_pairs(f"search:{folder}?limit=2", seed=0)[1]) == 2
    [tie] = load_tie_pairs(f"search:{folder}")
    assert {tie.better, tie.worse} == {FALSE_2, OFF_2}
    with pytest.raises(SourceError, match="option ties is for EFT sources only"):
        load_judge_pairs(f"search:{folder}?ties=3", seed=0)
