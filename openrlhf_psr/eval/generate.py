"""Greedy evaluation through any engine (vLLM batched), graded, with format-following and step statistics."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from openrlhf_psr.data.problems import Problem
from openrlhf_psr.engines.base import Engine, SampleRequest
from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt
from openrlhf_psr.steps import extract_boxed, parse_steps

QWEN_COT_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
PROMPTS = {"step": render_step_prompt, "qwen_cot": lambda problem: QWEN_COT_PROMPT.format(problem=problem.strip())}


def has_step_markers(text: str) -> bool:
    """True when the solution writes the literal ``Step 1:`` marker the paper's prompt asks for."""
    return "Step 1:" in text or "Step 1 :" in text


def fewshot_prefix(shots: int, seed: int = 12345) -> str:
    """``shots`` worked examples in the ``Step n:`` format (built-in task, disjoint seed), for base models that
    follow a pattern better than an instruction.

    >>> fewshot_prefix(1).count("Problem:"), "boxed{" in fewshot_prefix(1)
    (1, True)
    """
    from openrlhf_psr.data.arith import make_problems

    return "".join(f"Problem: {p.question}\n{p.solution}\n\n" for p in make_problems(shots, seed=seed))


def greedy_solutions(
    engine: Engine,
    problems: Sequence[Problem],
    *,
    prompt: str = "step",
    max_tokens: int = 1024,
    chat_template: bool = True,
    fewshot: int = 0,
) -> list[str]:
    """One greedy solution per problem, all in one batched engine call (``fewshot`` examples prepended)."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt {prompt!r}: expected one of {sorted(PROMPTS)}")
    prefix = fewshot_prefix(fewshot) if fewshot else ""
    requests = [
        SampleRequest(
            tuple(
                prompt_token_ids(engine.tokenizer, prefix + PROMPTS[prompt](p.question), chat_template=chat_template)
            ),
            n=1,
            temperature=0.0,
            max_tokens=max_tokens,
        )
        for p in problems
    ]
    return [samples[0].text for samples in engine.generate(requests)]


def score_solutions(
    problems: Sequence[Problem],
    texts: Sequence[str],
    tokenizer=None,
    grader=None,
    *,
    headline: str = "math_verify",
    deadline_s: float | None = None,
    progress: bool = False,
) -> dict:
    """Per-problem records and the metrics people compare: accuracy (math-verify, and the Qwen-style grader, with
    their disagreements), format-following, step statistics. ``grader(pred, gold)`` replaces both (tests).

    Each record keeps every grader's own verdict and timeouts (``grades``); ``correct`` is the ``headline`` grader's
    verdict (a timeout is wrong) and ``metrics["accuracy_grader"]`` names that grader. ``deadline_s`` bounds each
    grader on each answer (default: :data:`openrlhf_psr.grading.DEADLINE_S`)."""
    answers = [extract_boxed(t) for t in texts]
    golds = [p.answer for p in problems]
    if grader is None:
        from openrlhf_psr.grading.graders import GRADERS, TIME_LIMIT_S, grade_all

        if headline not in GRADERS:
            raise ValueError(f"headline grader {headline!r}: expected one of {', '.join(GRADERS)}")
        deadline_s = deadline_s or TIME_LIMIT_S
        graded_all = grade_all(answers, golds, time_limit_s=deadline_s, progress=progress)
        names = GRADERS
    else:
        headline, names = "custom", ("custom",)
        verdicts = [bool(grader(a, g)) if g is not None else None for a, g in zip(answers, golds, strict=True)]
        grades = [{"custom": v, "timeouts": []} for v in verdicts]
        graded_all = {"grades": grades, "disagreements": [], "timeouts": {"custom": 0}}
    records = []
    for p, text, answer, grades in zip(problems, texts, answers, graded_all["grades"], strict=True):
        steps = parse_steps(text)
        step_tokens = [len(tokenizer.encode(s, add_special_tokens=False)) for s in steps] if tokenizer else []
        records.append(
            {
                "id": p.id,
                "gold": p.answer,
                "answer": answer,
                "correct": grades[headline] is True if p.answer is not None else None,
                "correct_qwen": grades["qwen"] is True if p.answer is not None and "qwen" in grades else None,
                "grades": grades,
                "step_markers": has_step_markers(text),
                "steps": len(steps),
                "step_tokens": step_tokens,
                "text": text,
            }
        )
    graded = [r["correct"] for r in records if r["correct"] is not None]

    def accuracy(name: str) -> float | None:  # a timeout (None) counts as wrong
        right = sum(r["grades"][name] is True for r in records if r["gold"] is not None)
        return right / len(graded) if graded else None

    all_step_tokens = [t for r in records for t in r["step_tokens"]]
    metrics = {
        "n": len(records),
        "accuracy": sum(graded) / len(graded) if graded else None,  # the headline grader's
        "accuracy_grader": headline,
        **{f"accuracy_{name}": accuracy(name) for name in names},
        "grader_disagreements": len(graded_all["disagreements"]),
        "grading_timeouts": graded_all["timeouts"],  # per grader: answers it gave no verdict for in time
        "grading_deadline_s": deadline_s,
        "boxed_rate": sum(r["answer"] is not None for r in records) / len(records) if records else 0.0,
        "step_marker_rate": sum(r["step_markers"] for r in records) / len(records) if records else 0.0,
        "mean_steps": statistics.fmean(r["steps"] for r in records) if records else 0.0,
        "mean_step_tokens": statistics.fmean(all_step_tokens) if all_step_tokens else None,
    }
    return {"metrics": metrics, "records": records, "disagreements": graded_all["disagreements"]}
