"""Graders on hard gold/prediction pairs, both reported; hostile answers graded wrong within the time limit."""

from __future__ import annotations

import doctest

import pytest

from openrlhf_psr.eval import graders
from openrlhf_psr.eval.graders import grade, grade_all, qwen_equal

pytestmark = pytest.mark.unit

EQUAL = [
    ("0.5", "\\frac{1}{2}"),  # fraction vs decimal
    ("\\dfrac{3}{4}", "0.75"),
    ("50\\%", "0.5"),  # percent variants
    ("50", "50\\%"),
    ("1,000", "1000"),  # thousands separator
    ("\\$18.00", "18"),  # currency, trailing zeros
    ("(1, 2]", "(1,2]"),  # interval
    ("\\{3, 1\\}", "\\{1,3\\}"),  # set: unordered
    ("2, 3", "3, 2"),  # multiple answers, any order
    ("\\text{5 dollars}", "5"),  # \text{} and units
    ("12 cm", "12"),
    ("x = 5", "5"),
    ("\\sqrt{8}", "2\\sqrt{2}"),  # symbolic
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\text{(B)}", "B"),  # multiple choice
    ("90^\\circ", "90"),
]
DIFFERENT = [
    ("7", "8"),
    ("[1,2)", "(1,2)"),  # open vs closed interval end
    ("(1, 2)", "(2, 1)"),  # ordered tuple
    ("1, 2", "1, 2, 3"),  # missing element
    ("0.5001", "0.5"),  # beyond the relative tolerance
    ("\\sqrt{2}", "2"),
]


def test_doctests():
    assert doctest.testmod(graders).failed == 0


@pytest.mark.parametrize(("prediction", "gold"), EQUAL)
def test_equal_pairs(prediction, gold):
    assert qwen_equal(prediction, gold)


@pytest.mark.parametrize(("prediction", "gold"), DIFFERENT)
def test_different_pairs(prediction, gold):
    assert not qwen_equal(prediction, gold)


def test_olympiadbench_style_list_answers():
    assert qwen_equal("\\frac{1}{2}, 3", "3,\\frac12")
    assert not qwen_equal("\\frac{1}{2}", "3,\\frac12")


def test_both_graders_are_reported_and_disagreements_listed():
    result = grade_all(["\\frac{1}{2}", "7", "2, 3"], ["0.5", "8", "3, 2"])
    assert [g["qwen"] for g in result["grades"]] == [True, False, True]
    assert result["grades"][0]["math_verify"] is True and result["grades"][1]["math_verify"] is False
    listed = {d["index"] for d in result["disagreements"]}
    assert listed == {k for k, g in enumerate(result["grades"]) if g["math_verify"] != g["qwen"]}
    assert set(result["accuracy"]) == {"math_verify", "qwen"}


@pytest.mark.parametrize(
    "hostile", ["10^{10^{10^{10^{10^{10}}}}}", "\\frac{" * 400 + "1" + "}" * 400, "9" * 5000, "((((" * 500]
)
def test_hostile_answers_are_wrong_within_the_time_limit(hostile):
    import time

    start = time.monotonic()
    result = grade(hostile, "5", time_limit_s=3.0)
    assert result["math_verify"] is False and result["qwen"] is False
    assert time.monotonic() - start < 3.0 + 2.0  # the child is killed at the limit (plus process start-up)
