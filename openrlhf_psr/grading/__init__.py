"""Answer grading: untrusted answers graded in a pool of supervised processes (``pool``), by math-verify and by a
grader in the manner of the Qwen2.5-Math harness (``graders``). Import the public functions from here."""

from openrlhf_psr.grading.pool import (
    DEADLINE_S,
    GRADERS,
    MARGIN_S,
    MAX_ANSWER_CHARS,
    GradingPool,
    get_pool,
    grade_answer,
    grade_pairs,
    is_correct,
    math_verify_equal,
    shutdown_pool,
)

__all__ = [
    "DEADLINE_S",
    "GRADERS",
    "MARGIN_S",
    "MAX_ANSWER_CHARS",
    "GradingPool",
    "get_pool",
    "grade_answer",
    "grade_pairs",
    "is_correct",
    "math_verify_equal",
    "shutdown_pool",
]
