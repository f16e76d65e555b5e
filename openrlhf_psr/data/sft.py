"""SFT data for M0 -> M1 (SPEC "The loop"): IFT (reasoning in ``Step n:`` form) and EFT (step-wise judging).

Records are ``{"input": user prompt, "output": assistant answer}``, for upstream ``openrlhf.cli.train_sft`` with
``--data.input_key input --data.output_key output --data.apply_chat_template``.

- IFT from GSM8K train (its solutions are already one step per line: annotations ``<<...>>`` are removed, the
  ``#### n`` line becomes ``The answer is \\boxed{n}.`` in the last step), from the built-in task, or from any
  solution segmented by a model with the paper's segmentation prompt (:func:`segment_solutions`).
- EFT from human-labelled step pairs (PRM800K train): the paper's judge prompt, both orders of every pair, so "A"
  and "B" are exactly balanced; the answer is an optional one-line rationale and the verdict ``[[A]]``/``[[B]]``.
  Also from the built-in task, by corrupting one step of a correct solution (ground truth known).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from openrlhf_psr.prompts import render_judge_prompt, render_segment_prompt, render_step_prompt
from openrlhf_psr.steps import format_step, parse_steps, render_solution

_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_steps(answer: str) -> list[str] | None:
    """GSM8K reference solution -> ``Step n:`` steps (None when it has no ``####`` final answer).

    >>> gsm8k_steps("He buys 2*3=<<2*3=6>>6 eggs.\\nHe eats 1, so 6-1=<<6-1=5>>5 remain.\\n#### 5")
    ['Step 1: He buys 2*3=6 eggs.', 'Step 2: He eats 1, so 6-1=5 remain. The answer is \\\\boxed{5}.']
    """
    if "####" not in answer:
        return None
    body, final = answer.rsplit("####", 1)
    lines = [_CALC.sub("", line).strip() for line in body.strip().splitlines() if line.strip()]
    final = final.strip().replace(",", "")
    if not lines:
        lines = [f"The answer is {final}."]
    lines[-1] = f"{lines[-1]} The answer is \\boxed{{{final}}}."
    return [format_step(n, line) for n, line in enumerate(lines, 1)]


def ift_record(question: str, steps: Sequence[str]) -> dict:
    return {"input": render_step_prompt(question), "output": render_solution(steps), "kind": "ift"}


def eft_records(
    question: str, previous: Sequence[str], better: str, worse: str, rationale: str | None = None
) -> list[dict]:
    """Both orders of one judged pair: better shown as A (verdict [[A]]) and as B (verdict [[B]])."""
    out = []
    for better_is_a in (True, False):
        a, b = (better, worse) if better_is_a else (worse, better)
        letter, other = ("A", "B") if better_is_a else ("B", "A")
        reason = f"Assistant {other}'s step is wrong: {rationale.strip()} " if rationale else ""
        output = f"{reason}Assistant {letter}'s step is the better next step. [[{letter}]]"
        out.append({"input": render_judge_prompt(question, list(previous), a, b), "output": output, "kind": "eft"})
    return out


def corrupt_step(step: str, rng: random.Random) -> str | None:
    """Change the last number of a step (its result) to a wrong one; None if it has no number besides its marker."""
    marker = re.match(r"\s*Step\s+\d+\s*:", step)
    start = marker.end() if marker else 0
    numbers = list(re.finditer(r"\d+", step[start:]))
    if not numbers:
        return None
    last = numbers[-1]
    last_start, last_end = start + last.start(), start + last.end()
    value = int(last.group())
    wrong = value + rng.choice([-3, -2, -1, 1, 2, 3, 10])
    wrong = wrong if wrong >= 0 and wrong != value else value + 7
    return step[:last_start] + str(wrong) + step[last_end:]


def builtin_corrupted_steps(n: int, seed: int):
    """``n`` (problem, step index, wrong step) triples from the built-in task: one step of a correct reference
    solution with its result changed, so which step is better is known."""
    from openrlhf_psr.data.arith import make_problem

    rng, index, made = random.Random(seed), 0, 0
    while made < n:
        p = make_problem(seed, index)
        index += 1
        k = rng.randrange(len(p.steps))
        wrong = corrupt_step(p.steps[k], rng)
        if wrong is not None:
            made += 1
            yield p, k, wrong


def builtin_sft(n_ift: int = 64, n_eft: int = 64, seed: int = 0) -> list[dict]:
    """IFT and EFT records from the built-in arithmetic task (different problems for each)."""
    from openrlhf_psr.data.arith import make_problem

    records = [ift_record(p.question, p.steps) for p in (make_problem(seed, i) for i in range(n_ift))]
    for p, k, wrong in builtin_corrupted_steps(n_eft, seed + 7919):  # another seed: problems unlike the IFT ones
        records += eft_records(p.question, p.steps[:k], p.steps[k], wrong, "its arithmetic result is incorrect.")
    return records


def builtin_step_pairs(n: int, seed: int = 0) -> list[dict]:
    """Plain step-pair rows (``prompt, prefix_steps, chosen, rejected, is_final``) from the built-in task: the
    reference step against the same step with a wrong result; a non-final step keeps its "\\n" separator."""
    rows = []
    for p, k, wrong in builtin_corrupted_steps(n, seed):
        final = k == len(p.steps) - 1
        sep = "" if final else "\n"
        rows.append({"prompt": p.question, "prefix_steps": list(p.steps[:k]), "chosen": p.steps[k] + sep,
                     "rejected": wrong + sep, "is_final": final})  # fmt: skip
    return rows


def gsm8k_ift(rows: Iterable[dict]) -> list[dict]:
    out = []
    for row in rows:
        steps = gsm8k_steps(str(row.get("answer", "")))
        if steps:
            out.append(ift_record(str(row["question"]), steps))
    return out


def prm800k_eft(path: str | Path, limit: int | None = None, seed: int = 0, rationale: bool = True) -> list[dict]:
    from openrlhf_psr.data.prm800k import human_step_pairs

    pairs = human_step_pairs(path)
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    out = []
    for p in pairs:
        previous = [format_step(n, s) for n, s in enumerate(p.previous_steps, 1)]
        step_no = len(previous) + 1
        out += eft_records(
            p.question,
            previous,
            format_step(step_no, p.chosen),
            format_step(step_no, p.rejected),
            p.rejected_reason if rationale else None,
        )
    return out


def segment_solutions(engine, items: Sequence[tuple[str, str]], *, max_tokens: int = 1024, chat_template=True):
    """Segment (question, solution) pairs into ``Step n:`` steps with the paper's segmentation prompt (one batched
    engine call, greedy). Returns steps per item, or None where the output has no step or lost the boxed answer."""
    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.prompts import prompt_token_ids
    from openrlhf_psr.steps import extract_boxed

    requests = [
        SampleRequest(
            tuple(prompt_token_ids(engine.tokenizer, render_segment_prompt(q, s), chat_template=chat_template)),
            n=1,
            temperature=0.0,
            max_tokens=max_tokens,
        )
        for q, s in items
    ]
    out = []
    for (_, solution), samples in zip(items, engine.generate(requests), strict=True):
        steps = parse_steps(samples[0].text)
        keeps_answer = extract_boxed(solution) is None or extract_boxed(render_solution(steps)) is not None
        out.append([format_step(n, s) for n, s in enumerate(steps, 1)] if steps and keeps_answer else None)
    return out


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    from openrlhf_psr.shards import atomic_write_text

    records = list(records)
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)
