"""Evaluation metrics, judge accuracy, SFT data builders and step-pair sources (pure logic, scripted parts)."""

from __future__ import annotations

import doctest
import json

import pytest

from openrlhf_psr.data import sft
from openrlhf_psr.data.problems import Problem, load_problems
from openrlhf_psr.eval.generate import score_solutions
from openrlhf_psr.eval.judge_accuracy import LabelledPair, judge_accuracy
from openrlhf_psr.judges.base import Judgment, PairwiseJudge
from openrlhf_psr.tournament import Verdict

pytestmark = pytest.mark.unit


def test_doctests():
    import openrlhf_psr.data.arith as arith
    import openrlhf_psr.data.problems as problems
    import openrlhf_psr.eval.generate as generate
    import openrlhf_psr.grading as grading
    import openrlhf_psr.srlm as srlm

    for module in (sft, problems, arith, generate, grading, srlm):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_score_solutions_reports_accuracy_format_and_steps():
    problems = [Problem("a", "q", "5"), Problem("b", "q", "6"), Problem("c", "q", None)]
    texts = ["Step 1: 2+3\nStep 2: so \\boxed{5}", "The answer is 7", "Step 1: hi"]
    out = score_solutions(problems, texts, grader=lambda pred, gold: pred == gold)
    m = out["metrics"]
    assert m["accuracy"] == 0.5 and m["boxed_rate"] == pytest.approx(1 / 3)
    assert m["step_marker_rate"] == pytest.approx(2 / 3) and m["mean_steps"] == pytest.approx((2 + 1 + 1) / 3)
    assert [r["correct"] for r in out["records"]] == [True, False, None]


class AlwaysA(PairwiseJudge):
    def judge(self, comparisons):
        return [Judgment(Verdict("A", p_a=0.9 if "good" in c.step_a else 0.95)) for c in comparisons]


class Knows(PairwiseJudge):
    def judge(self, comparisons):
        return [Judgment(Verdict("A" if "good" in c.step_a else "B")) for c in comparisons]


PAIRS = [LabelledPair("q", (), "good step", "bad step")] * 4


def test_judge_accuracy_exposes_position_bias_and_reads_probabilities():
    biased = judge_accuracy(AlwaysA(), PAIRS)
    assert biased["accuracy"] == 0.5 and biased["consistency"] == 0.0 and biased["always_a_rate"] == 1.0
    # mean P(better) = (0.9 + (1 - 0.95)) / 2 < 0.5: the probabilities do not rescue this judge
    assert biased["prob_accuracy"] == 0.0
    good = judge_accuracy(Knows(), PAIRS)
    assert good["accuracy"] == good["pair_accuracy"] == good["consistency"] == 1.0 and good["abstention_rate"] == 0


def test_eft_records_are_balanced_and_end_with_the_right_verdict():
    records = sft.eft_records(LabelledPair("q", ("Step 1: a",), "Step 2: right", "Step 2: wrong", "off by one"))
    assert [r["output"][-5:] for r in records] == ["[[A]]", "[[B]]"]
    assert "Step 2: right" in records[0]["input"].split("Assistant A's Next Reasoning Step]")[1].split("[The End")[0]
    assert "Assistant B's step is wrong: off by one" in records[0]["output"]


def test_builtin_sft_mixture_and_corruption():
    import random

    records = sft.builtin_sft(n_ift=5, n_eft=3)
    assert sum(r["kind"] == "ift" for r in records) == 5 and sum(r["kind"] == "eft" for r in records) == 6
    assert all("\\boxed{" in r["output"] for r in records if r["kind"] == "ift")
    assert sft.corrupt_step("Step 1: 2 + 2 = 4.", random.Random(0)) != "Step 1: 2 + 2 = 4."
    assert sft.corrupt_step("Step 1: no numbers", random.Random(0)) is None


def test_problem_rows_missing_a_field_name_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps({"problem": "q"}) + "\n")
    with pytest.raises(KeyError, match=r"p.jsonl: row 2 has no field 'question'"):
        load_problems(f"jsonl:{path}")
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: not valid JSON"):
        load_problems(f"jsonl:{path}")
    with pytest.raises(ValueError, match="unknown built-in task"):
        load_problems("builtin:algebra")


def test_step_pairs_from_a_search_directory_keep_ids_exactly(tmp_path):
    from openrlhf_psr.data.step_pairs import StepPairDataset, load_step_pairs
    from openrlhf_psr.io import ShardStore

    pair = {"problem_id": "p", "step_index": 1, "prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]}
    ShardStore(tmp_path).commit({"pairs": [pair], "trajectories": [{"problem_id": "p"}]})
    dataset = StepPairDataset(load_step_pairs(tmp_path), max_len=100, pad_token_id=0)
    ids, segments, positions = dataset.items[0]
    assert ids == [5, 6, 7, 8, 9, 10] and segments == [1, 1, 1, 2, 2, 3] and positions == [0, 1, 2, 3, 4, 3]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(load_step_pairs(tmp_path / "nope"))


def test_builtin_eft_checks_the_arithmetic_before_its_verdict():
    import operator
    import re

    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
    records = [r for r in sft.builtin_sft(n_ift=0, n_eft=40) if r["kind"] == "eft"]
    assert len(records) == 80
    for r in records:
        shown = {
            k: r["input"].split(f"[The Start of Assistant {k}'s Next Reasoning Step]\n")[1].split("\n[The End")[0]
            for k in "AB"
        }
        out = r["output"]
        verdict = out[-3]
        m = re.match(r"Check: (\d+) ([-+*/]) (\d+) = (\d+)\. ", out)
        assert m, out
        assert ops[m[2]](int(m[1]), int(m[3])) == int(m[4])  # the check itself is right
        marked = re.findall(r"Assistant ([AB])'s result is (\d+): (right|wrong)", out)
        results = {k: (v, mark) for k, v, mark in marked}
        # each stated result is the last number of the step shown under that letter, marked against the check
        assert all(re.findall(r"\d+", shown[k])[-1] == results[k][0] for k in "AB"), (shown, out)
        assert all((results[k][0] == m[4]) == (results[k][1] == "right") for k in "AB"), out
        assert results[verdict][1] == "right" and results["A" if verdict == "B" else "B"][1] == "wrong"
    assert sorted(r["output"][-5:] for r in records).count("[[A]]") == 40  # balanced positions
