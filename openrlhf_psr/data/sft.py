"""SFT data for M0 -> M1 (SPEC "The loop"): IFT (reasoning in ``Step n:`` form) and EFT (step-wise judging).

Records are built as ``{"input": user prompt, "output": assistant answer, "kind"}`` (readable, model-free), then
:func:`render_records` adds ``prompt`` / ``response``: the same example rendered for one model exactly as the
search and evaluation render prompts (:func:`openrlhf_psr.prompts.render_prompt`, chat or raw format). Upstream
``openrlhf.cli.train_sft`` trains on those with ``--data.input_key prompt --data.output_key response
--data.input_template {}`` (identity template, no ``--data.apply_chat_template``), so the SFT prompt ids equal the
ids the later stages send; its default template ``"User: {}\nAssistant: "`` would otherwise wrap every raw example.

- IFT from GSM8K train (its solutions are already one step per line: annotations ``<<...>>`` are removed, the
  ``#### n`` line becomes ``The answer is \\boxed{n}.`` in the last step), from the built-in task, or from any
  solution segmented by a model with the paper's segmentation prompt (:func:`segment_solutions`).
- SRLM scoring EFT (the baseline's own judging task, :func:`srlm_source`): whole solutions graded 0..5 under the
  additive rubric by construction (reference, a repeated step, a calculation error, cut short, another problem's).
- EFT from human-labelled step pairs (PRM800K train): the paper's judge prompt, both orders of every pair, so "A"
  and "B" are exactly balanced; the answer is an optional one-line rationale and the verdict ``[[A]]``/``[[B]]``.
  Also from the built-in task, by corrupting one step of a correct solution (ground truth known).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from openrlhf_psr.prompts import render_judge_prompt, render_segment_prompt, render_step_prompt
from openrlhf_psr.records import JudgedStepPair
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


def prose_answer(pair: JudgedStepPair, better_is_a: bool) -> str:
    """The paper-style EFT answer: the pair's rationale, if any, then the verdict."""
    letter, other = ("A", "B") if better_is_a else ("B", "A")
    reason = f"Assistant {other}'s step is wrong: {pair.rationale.strip()} " if pair.rationale else ""
    return f"{reason}Assistant {letter}'s step is the better next step. [[{letter}]]"


def eft_records(pair: JudgedStepPair, answer=prose_answer, *, tie: bool = False) -> list[dict]:
    """Both orders of one judged pair: better shown as A (verdict [[A]]) and as B (verdict [[B]]), each answered
    by ``answer(pair, better_is_a)``; ``tie``: in the judge prompt that also offers ``[[C]]``."""
    out = []
    for better_is_a in (True, False):
        a, b = (pair.better, pair.worse) if better_is_a else (pair.worse, pair.better)
        prompt = render_judge_prompt(pair.question, list(pair.previous_steps), a, b, tie=tie)
        out.append({"input": prompt, "output": answer(pair, better_is_a), "kind": "eft"})
    return out


_EQUATION = re.compile(r"\d+(?:\s*[-+*/]\s*\d+)+\s*=\s*\d+")
_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def checking_rationale(better: str, worse: str, better_is_a: bool, results: tuple[str, str] | None = None) -> str:
    """A built-in EFT answer that checks before it decides: the better step's last equation recomputed, then each
    assistant's result (its step's last number) marked right or wrong against that check, then the verdict. Each
    decision sits next to what decides it (a number against the check just written; the letter marked right), so a
    small model can learn it with the arithmetic IFT teaches; the paper's EFT rationales (PRM800K) explain in prose.

    >>> print(checking_rationale("Step 2: So 3 + 4 = 7 apples.", "Step 2: So 3 + 4 = 8 apples.", better_is_a=False))
    Check: 3 + 4 = 7. Assistant A's result is 8: wrong. Assistant B's result is 7: right. Assistant B's step is the \
better next step. [[B]]

    ``results`` (better's, worse's) replaces the steps' last numbers where a checker read them (the model's own
    steps, :mod:`openrlhf_psr.data.own_steps`).
    """
    correct, wrong = results or (_LAST_NUMBER.search(better).group(1), _LAST_NUMBER.search(worse).group(1))
    check = _check(better)
    a, b = (f"{correct}: right", f"{wrong}: wrong") if better_is_a else (f"{wrong}: wrong", f"{correct}: right")
    letter = "A" if better_is_a else "B"
    return (
        f"{check}Assistant A's result is {a}. Assistant B's result is {b}. Assistant {letter}'s step is the "
        f"better next step. [[{letter}]]"
    )


def _check(right_step: str) -> str:
    """The check a built-in EFT answer opens with: the right step's last equation, or its result."""
    equations = _EQUATION.findall(right_step.split(":", 1)[-1])
    if equations:
        return f"Check: {equations[-1]}. "
    return f"Check: the result is {_LAST_NUMBER.search(right_step).group(1)}. "


def tie_rationale(right: str, step_a: str, step_b: str, results: tuple[str, str] | None = None) -> str:
    """The built-in EFT answer for two wrong steps, in the tie prompt: the right step's check, both results marked
    wrong, and the tie verdict ``[[C]]`` (neither is better, so no pair should be made of them).

    >>> print(tie_rationale("Step 2: So 3 + 4 = 7 apples.", "Step 2: So 3 + 4 = 8 apples.", "Step 2: So 3 + 4 = 5."))
    Check: 3 + 4 = 7. Assistant A's result is 8: wrong. Assistant B's result is 5: wrong. Neither step is better: \
a tie. [[C]]
    """
    a, b = results or tuple(_LAST_NUMBER.search(step).group(1) for step in (step_a, step_b))
    return (
        f"{_check(right)}Assistant A's result is {a}: wrong. Assistant B's result is {b}: wrong. Neither step is "
        "better: a tie. [[C]]"
    )


def builtin_tie_steps(n: int, seed: int, difficulty=None):
    """``n`` (problem, step index, wrong step, other wrong step) of the built-in task: the triples of
    :func:`builtin_corrupted_steps` (same problems and steps for the same seed) with a second, different wrong
    result of the same step: two steps neither of which is better."""
    rng = random.Random(seed + 1)
    for p, k, wrong in builtin_corrupted_steps(n, seed, difficulty):
        other = next((x for x in (corrupt_step(p.steps[k], rng) for _ in range(16)) if x not in (None, wrong)), None)
        yield p, k, wrong, other if other is not None else corrupt_step(wrong, rng)  # a wrong result changed: wrong


def builtin_tie_records(n: int, seed: int, difficulty=None) -> list[dict]:
    """EFT rows for ``n`` tie pairs of the built-in task (:func:`builtin_tie_steps`), both orders, in the tie
    prompt, answered by :func:`tie_rationale`.

    >>> rows = builtin_tie_records(2, seed=3)
    >>> len(rows), [r["output"][-5:] for r in rows], '"[[C]]" for a tie' in rows[0]["input"]
    (4, ['[[C]]', '[[C]]', '[[C]]', '[[C]]'], True)
    """
    out = []
    for p, k, wrong, other in builtin_tie_steps(n, seed, difficulty):
        for a, b in ((wrong, other), (other, wrong)):
            prompt = render_judge_prompt(p.question, list(p.steps[:k]), a, b, tie=True)
            out.append({"input": prompt, "output": tie_rationale(p.steps[k], a, b), "kind": "eft"})
    return out


def checking_answer(pair: JudgedStepPair, better_is_a: bool) -> str:
    """The built-in task's EFT answer for :func:`eft_records`: :func:`checking_rationale` of the pair."""
    return checking_rationale(pair.better, pair.worse, better_is_a)


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


def builtin_corrupted_steps(n: int, seed: int, difficulty=None):
    """``n`` (problem, step index, wrong step) triples from the built-in task: one step of a correct reference
    solution with its result changed, so which step is better is known. ``difficulty`` (an
    :class:`~openrlhf_psr.data.arith.Difficulty`; None = the defaults) shapes the problems as the prompts' are."""
    from openrlhf_psr.data.arith import DEFAULT, make_problem

    rng, index, made = random.Random(seed), 0, 0
    while made < n:
        p = make_problem(seed, index, difficulty=difficulty or DEFAULT)
        index += 1
        k = rng.randrange(len(p.steps))
        wrong = corrupt_step(p.steps[k], rng)
        if wrong is not None:
            made += 1
            yield p, k, wrong


def builtin_sft(n_ift: int = 64, n_eft: int = 64, seed: int = 0, difficulty=None, ties: int = 0) -> list[dict]:
    """IFT and EFT records from the built-in arithmetic task (different problems for each), at ``difficulty`` (an
    :class:`~openrlhf_psr.data.arith.Difficulty`; None = the defaults), so M1 learns the task it will be asked.
    ``ties`` > 0 adds that many tie pairs (:func:`builtin_tie_records`, problems unlike the others) and puts every
    EFT row in the tie prompt, the one a judge with ``tie: true`` reads.

    >>> from openrlhf_psr.data.arith import Difficulty
    >>> easy = builtin_sft(4, 0, difficulty=Difficulty(min_ops=1, max_ops=1))
    >>> [r["output"].count("Step ") for r in easy]
    [1, 1, 1, 1]
    """
    from openrlhf_psr.data.arith import DEFAULT, make_problem

    d = difficulty or DEFAULT
    records = [ift_record(p.question, p.steps) for p in (make_problem(seed, i, difficulty=d) for i in range(n_ift))]
    for p, k, wrong in builtin_corrupted_steps(n_eft, seed + 7919, d):  # another seed: problems unlike the IFT ones
        records += eft_records(builtin_judged_pair(p, k, wrong), answer=checking_answer, tie=ties > 0)
    if ties:
        records += builtin_tie_records(ties, seed + 2 * 7919, d)
    return records


def builtin_judged_pair(problem, k: int, wrong: str) -> JudgedStepPair:
    """Step ``k`` of a built-in problem's reference solution against ``wrong``, the same step with a wrong result
    (a triple of :func:`builtin_corrupted_steps`)."""
    return JudgedStepPair(problem.question, tuple(problem.steps[:k]), problem.steps[k], wrong,
                          rationale="its arithmetic result is incorrect.", is_final=k == len(problem.steps) - 1,
                          source=f"{problem.id}#step{k + 1}")  # fmt: skip


def builtin_step_pairs(n: int, seed: int = 0, difficulty=None) -> list[dict]:
    """Plain step-pair rows (:class:`~openrlhf_psr.records.JudgedStepPair` JSON: ``prompt, prefix_steps, chosen,
    rejected, is_final``, ...) from the built-in task: the reference step against the same step with a wrong result;
    a non-final step keeps its "\\n" separator."""
    rows = []
    for p, k, wrong in builtin_corrupted_steps(n, seed, difficulty):
        pair = builtin_judged_pair(p, k, wrong)
        sep = "" if pair.is_final else "\n"
        rows.append(replace(pair, better=pair.better + sep, worse=pair.worse + sep).to_json())
    return rows


def gsm8k_ift(rows: Iterable[dict], source: str = "gsm8k rows") -> list[dict]:
    """IFT records from GSM8K-style rows (``question``, ``answer`` ending ``#### <n>``).

    A row without a question is an error naming the source and row (it would train on the text "None"); a row
    whose answer has no ``####`` final answer cannot be segmented: it is skipped and counted on stderr.
    """
    import sys

    from openrlhf_psr.errors import DataError

    out, skipped = [], 0
    for k, row in enumerate(rows, 1):
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{source}: row {k}: expected a non-empty 'question' string, found {question!r}")
        answer = row.get("answer")
        steps = gsm8k_steps(answer) if isinstance(answer, str) else None
        if steps:
            out.append(ift_record(question, steps))
        else:
            skipped += 1
    if skipped:
        print(f"{source}: skipped {skipped} of {k} rows whose 'answer' has no '#### <final answer>'", file=sys.stderr)
    return out


def prm800k_eft(path: str | Path, limit: int | None = None, seed: int = 0, rationale: bool = True) -> list[dict]:
    from openrlhf_psr.data.prm800k import human_step_pairs

    pairs = human_step_pairs(path)
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return [r for p in pairs for r in eft_records(p if rationale else replace(p, rationale=None))]


# -- SRLM scoring EFT -------------------------------------------------------------------------------------------
# The SRLM baseline judges whole solutions with the additive 5-point prompt (prompts.SRLM_SCORE_PROMPT), so its M1
# is trained on that task: whole solutions whose grade under the rubric is known by construction, from a correct
# reference solution. One problem gives six solutions, one per grade, so the grades are exactly balanced.
SRLM_GRADES = {
    0: "The solution does not address this problem (it solves a different one), so it earns no point.",
    1: "The solution is relevant and makes some progress, but it contains an error and stops before a final answer.",
    2: "The solution sets the problem up correctly and carries out a substantial part of the work with correct "
    "steps, but it stops before reaching a final answer.",
    3: "The solution reaches a final answer by a mostly sound method, but one step contains a calculation error, so "
    "not every step is correct.",
    4: "Every step is correct and the final answer is correct and boxed, but the solution repeats a step it already "
    "made, an unnecessary detour.",
    5: "Every step is correct and justified, the final answer is correct and boxed, and the solution is clear and "
    "concise with no detours.",
}


def srlm_score_record(question: str, solution: str, grade: int) -> dict:
    """One scoring example: the SRLM prompt, and a one-line rationale ending with ``Score: <grade>``."""
    from openrlhf_psr.prompts import render_srlm_prompt

    return {"input": render_srlm_prompt(question, solution), "output": f"{SRLM_GRADES[grade]}\nScore: {grade}",
            "kind": "eft"}  # fmt: skip


def srlm_graded_solutions(steps: Sequence[str], other: Sequence[str], rng: random.Random) -> dict[int, list[str]]:
    """Whole solutions of one problem with their rubric grade, made from its correct ``Step n:`` reference
    ``steps`` (>= 2) and another problem's reference ``other``; a grade is missing when it cannot be made (no number
    to corrupt).

    >>> graded = srlm_graded_solutions(["Step 1: 2 + 3 = 5.", "Step 2: 5 * 2 = 10. \\\\boxed{10}"],
    ...                                ["Step 1: 7 - 1 = 6. \\\\boxed{6}"], random.Random(0))
    >>> sorted(graded), graded[5] == ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 2 = 10. \\\\boxed{10}"], graded[2]
    ([0, 1, 2, 3, 4, 5], True, ['Step 1: 2 + 3 = 5.'])
    """
    from openrlhf_psr.steps import strip_marker

    steps, bodies = list(steps), [strip_marker(x) for x in steps]
    renumber = lambda xs: [format_step(n, x) for n, x in enumerate(xs, 1)]  # noqa: E731
    out: dict[int, list[str]] = {5: steps, 0: list(other)}
    repeat = rng.randrange(len(steps) - 1)  # a step repeated verbatim before the next one: correct, a detour
    out[4] = renumber(bodies[: repeat + 1] + [bodies[repeat]] + bodies[repeat + 1 :])
    cut = rng.randrange(1, len(steps))  # correct steps, no final answer
    out[2] = steps[:cut]
    wrong = corrupt_step(steps[-1], rng) if rng.random() < 0.5 else None
    k = len(steps) - 1 if wrong is not None else rng.randrange(len(steps))
    wrong = wrong or corrupt_step(steps[k], rng)
    if wrong is not None:
        out[3] = steps[:k] + [wrong] + steps[k + 1 :]  # a calculation error, the solution still ends
        if k < cut:
            out[1] = steps[:k] + [wrong] + steps[k + 1 : cut]  # an error, and no final answer
        elif (bad := corrupt_step(steps[cut - 1], rng)) is not None:
            out[1] = steps[: cut - 1] + [bad]
    return out


def srlm_scoring_eft(solutions: Sequence[tuple[str, Sequence[str]]], seed: int = 0) -> list[dict]:
    """SRLM scoring examples from (question, reference steps) items: each item's graded solutions (see
    :func:`srlm_graded_solutions`; the grade-0 solution is the next item's reference). Items with fewer than two
    steps cannot be graded finely: they are skipped, counted on stderr."""
    import sys

    rng = random.Random(seed)
    solutions = list(solutions)
    usable = [(q, list(steps)) for q, steps in solutions if len(steps) >= 2]
    if len(usable) < len(solutions):
        print(f"SRLM scoring EFT: skipped {len(solutions) - len(usable)} of {len(solutions)} problems whose reference "
              "has fewer than 2 steps", file=sys.stderr)  # fmt: skip
    records = []
    for k, (question, steps) in enumerate(usable):
        other = usable[(k + 1) % len(usable)][1] if len(usable) > 1 else ["Step 1: The answer is \\boxed{0}."]
        for grade, solution in sorted(srlm_graded_solutions(steps, other, rng).items()):
            records.append(srlm_score_record(question, render_solution(solution), grade))
    return records


def srlm_source(source, seed: int = 0) -> list[dict]:
    """``srlm-builtin:arith?n=N`` (N built-in problems, default 64, at the source's difficulty) or
    ``srlm-gsm8k:PATH[?limit=N]`` (N GSM8K train problems), a parsed :class:`~openrlhf_psr.data.sources.Source`:
    six graded whole solutions per problem (the grades 0..5) with the SRLM scoring prompt."""
    if source.kind == "srlm-builtin":
        from openrlhf_psr.data.arith import make_problem

        base, difficulty = source.get("seed", seed), source.difficulty()
        made = (make_problem(base + 104729, i, difficulty=difficulty) for i in range(source.get("n", 64)))
        return srlm_scoring_eft([(p.question, p.steps) for p in made], seed)  # problems unlike the IFT ones
    if source.kind == "srlm-gsm8k":
        from openrlhf_psr.io import read_jsonl

        path, limit = source.path, source.get("limit")
        items, unreadable = [], []
        for line, row in enumerate(read_jsonl(path), 1):
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{path}:{line}: field {key!r} is missing or not text (srlm-gsm8k)")
            steps = gsm8k_steps(row["answer"])
            if steps:
                items.append((row["question"], steps))
            else:
                unreadable.append(line)
        if unreadable:
            import sys

            print(f"{path}: skipped {len(unreadable)} rows whose answer has no '#### <number>' final line "
                  f"(lines {unreadable[:5]})", file=sys.stderr)  # fmt: skip
        if limit is not None and limit < len(items):
            items = random.Random(seed).sample(items, limit)
        return srlm_scoring_eft(items, seed)
    raise ValueError(f"{source}: expected an srlm-builtin or srlm-gsm8k source")


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


def render_records(records: Iterable[dict], tokenizer, *, chat_template: bool) -> list[dict]:
    """Each record with ``prompt`` / ``response`` added: its ``input`` / ``output`` rendered for ``tokenizer``'s model
    in the recipe's format (:func:`openrlhf_psr.prompts.render_sft_row`)."""
    from openrlhf_psr.prompts import render_sft_row

    return [{**r, **render_sft_row(tokenizer, r["input"], r["output"], chat_template=chat_template)} for r in records]


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    from openrlhf_psr.io import atomic_write_text

    records = list(records)
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)
