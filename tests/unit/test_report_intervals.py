"""Every accuracy the report compares comes with its Wilson 95% interval and its n (issue 13): in the tables, in
summary.json and as error bars in the plot."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from openrlhf_psr.cli.report import build_report
from openrlhf_psr.eval import stats
from openrlhf_psr.eval.stats import wilson_interval

pytestmark = pytest.mark.unit


def _eval(correct: int, n: int, judge_accuracy: float, pairs: int) -> dict:
    records = [{"correct": k < correct} for k in range(n)] + [{"correct": None}]  # one problem without gold
    metrics = {"accuracy": correct / n, "boxed_rate": 1.0, "step_marker_rate": 1.0, "mean_steps": 3.0,
               "mean_step_tokens": 20.0, "n": n + 1}  # fmt: skip
    judge = {"pairs": pairs, "accuracy": judge_accuracy, "consistency": 0.5, "abstention_rate": 0.0,
             "prob_accuracy": judge_accuracy, "always_a_rate": 0.5}  # fmt: skip
    return {"benchmarks": {"arith": {"metrics": metrics, "records": records}}, "judges": {"logit/builtin": judge}}


def _write(path: Path, result: dict) -> None:
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps(result))


def test_the_report_gives_each_accuracy_its_interval_and_n(tmp_path):
    run = tmp_path / "runs" / "demo"
    _write(run / "m0" / "eval", _eval(0, 200, 0.5, 200))
    _write(run / "sft" / "eval", _eval(13, 200, 0.8, 200))
    summary = build_report(run)
    m1 = summary["models"]["M1"]
    assert m1["accuracy_ci95"]["arith"]["n"] == 200  # the problem without a gold answer is not counted
    assert m1["accuracy_ci95"]["arith"]["ci95"] == pytest.approx(list(wilson_interval(13, 200)))
    assert summary["models"]["M0"]["accuracy_ci95"]["arith"]["ci95"][0] == 0.0
    assert m1["judge_accuracy_ci95"]["logit/builtin"]["ci95"] == pytest.approx(list(wilson_interval(160, 200)))
    md = (run / "report" / "summary.md").read_text()
    assert "| M1 | 6.5 [3.8, 10.8] (200) |" in md
    assert "80.0 [73.9, 85.0] (200)" in md  # M1's judge accuracy with its interval
    assert (run / "report" / "accuracy_and_steps.png").stat().st_size > 0
    saved = json.loads((run / "report" / "summary.json").read_text())
    assert saved["models"]["M1"]["accuracy_ci95"]["arith"]["n"] == 200


def test_the_judge_table_shows_the_tie_rate_only_where_a_judge_was_offered_ties(tmp_path):
    run = tmp_path / "runs" / "demo"
    _write(run / "m0" / "eval", _eval(0, 200, 0.5, 200))
    tied = _eval(13, 200, 0.8, 200)
    tied["judges"]["logit/builtin"].update(tie_rate=0.625, tie_pairs=200, tie_pair_rate=0.5)
    _write(run / "sft" / "eval", tied)
    build_report(run)
    md = (run / "report" / "summary.md").read_text()
    assert "ties on two wrong steps |" in md and "| 50.0 | 62.5 |" in md  # M1: answers A, then its tie rate
    assert "| 50.0 | - |" in md  # M0's judge was not offered ties
    plain = tmp_path / "runs" / "plain"
    _write(plain / "m0" / "eval", _eval(0, 200, 0.5, 200))
    build_report(plain)
    assert "ties on two wrong steps" not in (plain / "report" / "summary.md").read_text()


def test_wilson_interval_rejects_impossible_counts_and_doctests():
    with pytest.raises(ValueError, match="within"):
        wilson_interval(5, 4)
    assert doctest.testmod(stats).failed == 0


def test_mcnemar_exact_is_the_two_sided_binomial_test_on_the_changed_answers():
    from math import comb

    assert stats.mcnemar_exact(10, 2) == stats.mcnemar_exact(2, 10) == 2 * sum(comb(12, k) for k in range(3)) / 2**12
    assert stats.mcnemar_exact(6, 0) == 2 / 2**6 and stats.mcnemar_exact(6, 5) == 1.0  # never above 1
    with pytest.raises(ValueError, match="counts must be >= 0"):
        stats.mcnemar_exact(-1, 3)
