"""Test-time scaling (the paper's Tables 5 and 9): the step-wise search with self-judging used at inference
instead of greedy decoding; the accepted path's final answer is graded like a greedy solution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from openrlhf_psr.data.problems import Problem
from openrlhf_psr.io import ShardStore
from openrlhf_psr.records import Trajectory, read_records
from openrlhf_psr.search import SearchConfig, StepSearch


def run_test_time_scaling(
    engine, judge, problems: Sequence[Problem], out_dir: str | Path, config: SearchConfig
) -> dict:
    """Run (or resume) the search on evaluation problems; return metrics comparable to greedy's."""
    from openrlhf_psr.grading.graders import grade_all

    StepSearch(engine, judge, config).run(problems, out_dir, progress=True)
    by_id = {t.problem_id: t for t in read_records(ShardStore(out_dir).read_located("trajectories"), Trajectory)}
    trajectories = [by_id[p.id] for p in problems]
    answers = [t.final_answer for t in trajectories]
    graded = grade_all(answers, [p.answer for p in problems])
    n = len(problems)
    return {
        "n": n,
        "accuracy": graded["accuracy"]["math_verify"],
        "accuracy_qwen": graded["accuracy"]["qwen"],
        "boxed_rate": sum(a is not None for a in answers) / n if n else 0.0,
        "mean_steps": sum(len(t.steps) for t in trajectories) / n if n else 0.0,
        "width": config.width,
        "temperature": config.temperature,
        "grader_disagreements": len(graded["disagreements"]),
    }
