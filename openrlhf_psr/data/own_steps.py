"""EFT from the model's own candidate steps: on-policy judge training for the built-in task (issue 13).

The built-in EFT corrupts a reference step (a result off by a few), so the judge learns to catch slips the model
does not make; measured on the evidence recipe, its M1 judge is right on 80% of held-out corrupted pairs but picks
the right step on only 60% of its own search's right-versus-wrong pairs, because it repeats the policy's own slips
while checking. These rows are made from what the judge will actually be shown: the candidates a search of the
model sampled (``<search dir>/trajectories``), each labelled by the exact checker
(:func:`openrlhf_psr.judges.oracle.check_step`), never by a model and never by the gold answer alone.

- **Where**: only rounds whose accepted prefix is right step by step (after a wrong step "the better next step"
  is not defined by the problem's quantities); the prefix is replayed from the round log (accepts append,
  rollbacks drop the last step), so it is the prefix the search held at that round.
- **What**: every (right, wrong) pair of distinct candidates of such a round, in the paper's judge prompt, both
  orders, answered as the built-in EFT answers (:func:`~openrlhf_psr.data.sft.checking_rationale`: the right
  step's check, each result marked, the verdict) with the results the checker read. With ``ties`` > 0, also
  pairs of two wrong candidates with different results (answered ``[[C]]``,
  :func:`~openrlhf_psr.data.sft.tie_rationale`, checked against a right candidate of the same round) and every
  row in the tie prompt, as ``builtin:arith?ties=N`` does.
- Steps are shown as the search shows them to its judge (:func:`openrlhf_psr.steps.normalize_candidate`:
  numbered by position), so the training prompt is the prompt the judge will read.

A source is ``search:DIR[?limit=N&ties=T]`` (:mod:`openrlhf_psr.data.sources`): DIR is a search stage's output
folder, e.g. an oracle arm's ``iter_1/search`` run on prompts unlike the ones the self arm will search. Pure
module: no heavy imports.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from openrlhf_psr.errors import DataError
from openrlhf_psr.io import read_jsonl
from openrlhf_psr.judges.oracle import check_step, step_result
from openrlhf_psr.prompts import render_judge_prompt
from openrlhf_psr.records import JudgedStepPair, Trajectory, read_records
from openrlhf_psr.steps import normalize_candidate

_ACCEPTS = ("accept", "accept_unanimous")


@dataclass(frozen=True)
class LabelledRound:
    """One search round after a right prefix: its candidates as the judge saw them, split by the checker.

    ``right`` / ``wrong``: ``(step, result)`` of each distinct candidate labelled so (``unknown`` ones are left out:
    nothing to teach); ``source``: ``problem_id/roundN``, for messages.
    """

    question: str
    previous_steps: tuple[str, ...]
    right: tuple[tuple[str, str], ...]
    wrong: tuple[tuple[str, str], ...]
    source: str


def read_trajectories(folder: str | Path) -> list[Trajectory]:
    """Every trajectory a search folder committed (``trajectories/shard-*.jsonl``), read without touching the
    folder (a search store recovers orphans when opened; a data source must not write)."""
    root = Path(folder).expanduser()
    shards = sorted((root / "trajectories").glob("shard-*.jsonl"))
    if not shards:
        what = "a folder" if root.is_dir() else "nothing"
        raise DataError(f"{root}: expected a search output folder with trajectories/shard-*.jsonl, found {what}")
    return list(read_records(((f"{path}: record {n}", row) for path in shards
                              for n, row in enumerate(read_jsonl(path), 1)), Trajectory))  # fmt: skip


def replay(trajectory: Trajectory) -> Iterator[tuple[list[str], dict]]:
    """``(prefix texts, round)`` of each round of a step-wise search, the prefix as the search held it then.

    >>> t = Trajectory("p", rounds=[
    ...     {"prefix_steps": 0, "candidates": [{"text": "a"}], "action": "accept_unanimous", "chosen": 0},
    ...     {"prefix_steps": 1, "candidates": [{"text": "b"}, {"text": "c"}], "action": "rollback"},
    ...     {"prefix_steps": 0, "candidates": [{"text": "d"}, {"text": "e"}], "action": "accept", "chosen": 1}])
    >>> [prefix for prefix, _ in replay(t)]
    [[], ['a'], []]
    """
    prefix: list[str] = []
    for k, r in enumerate(trajectory.rounds):
        if r.get("prefix_steps", len(prefix)) != len(prefix):  # a log the replay cannot follow: say so, not guess
            raise DataError(f"problem {trajectory.problem_id}: round {k} records {r['prefix_steps']} prefix "
                            f"steps, the replay of its accepts and rollbacks gives {len(prefix)}")  # fmt: skip
        yield list(prefix), r
        if r["action"] in _ACCEPTS:
            prefix.append(r["candidates"][r["chosen"]]["text"])
        elif r["action"] == "rollback" and prefix:
            prefix.pop()


def _result(step: str, checked: Fraction | None) -> str | None:
    """The result a rationale names: the checker's, else the step's own (a false claim's stated side, a boxed
    answer), as an integer where it is one."""
    value = checked if checked is not None else step_result(step)
    if value is None:
        return None
    return str(value.numerator) if isinstance(value, Fraction) and value.denominator == 1 else str(float(value))


def labelled_rounds(trajectories: Iterable[Trajectory]) -> Iterator[LabelledRound]:
    """The rounds of step-wise searches whose prefix the checker finds right, candidates labelled (see module)."""
    for t in trajectories:
        if t.method != "psr" or not t.question:
            continue
        for k, (prefix, r) in enumerate(replay(t)):
            shown = tuple(normalize_candidate(s, n) for n, s in enumerate(prefix, 1))
            if any(check_step(t.question, shown[:i], s, t.gold).label != "right" for i, s in enumerate(shown)):
                continue
            right: dict[str, str] = {}
            wrong: dict[str, str] = {}
            for c in r["candidates"]:
                step = normalize_candidate(c["text"], len(shown) + 1)
                if step in right or step in wrong or not step.split(":", 1)[1].strip():
                    continue
                try:
                    check = check_step(t.question, shown, step, t.gold)
                except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
                    continue  # unreadable numbers in model text: not a label anyone can trust
                result = _result(step, check.result)
                if result is not None and check.label in ("right", "wrong"):
                    (right if check.label == "right" else wrong)[step] = result
            if right or len(wrong) > 1:
                yield LabelledRound(t.question, shown, tuple(right.items()), tuple(wrong.items()),
                                    f"{t.problem_id}/round{k}")  # fmt: skip


def own_step_pairs(rounds: Sequence[LabelledRound]) -> tuple[list[tuple], list[tuple]]:
    """``(right_vs_wrong, ties)``: ``(round, right, wrong)`` for every right/wrong candidate pair, and
    ``(round, right, wrong_a, wrong_b)`` for every two wrong candidates with different results (``right``: the
    round's first right candidate, whose check opens a tie answer; None where every candidate is wrong). A pair
    sampled again after a rollback (same question, prefix and two steps) is counted once."""
    pairs, ties, seen = [], [], set()

    def new(r: LabelledRound, a: str, b: str) -> bool:
        key = (r.question, r.previous_steps, *sorted((a, b)))
        return key not in seen and not seen.add(key)

    for r in rounds:
        pairs += [(r, good, bad) for good in r.right for bad in r.wrong if new(r, good[0], bad[0])]
        first = r.right[0] if r.right else None
        ties += [(r, first, a, b) for i, a in enumerate(r.wrong) for b in r.wrong[i + 1 :]
                 if a[1] != b[1] and new(r, a[0], b[0])]  # fmt: skip
    return pairs, ties


def own_step_eft(trajectories: Iterable[Trajectory], *, limit: int | None = None, ties: int = 0,
                 seed: int = 0) -> list[dict]:  # fmt: skip
    """EFT records (``input``, ``output``, ``kind="eft"``) from a search's own candidates: ``limit`` right/wrong
    pairs (a seeded random subset; all by default) and ``ties`` tie pairs, both orders each (see module)."""
    from openrlhf_psr.data.sft import checking_rationale, tie_rationale

    pairs, tie_pairs = own_step_pairs(list(labelled_rounds(trajectories)))
    tie_pairs = [t for t in tie_pairs if t[1] is not None]  # a tie answer opens with a right step's check
    rng = random.Random(seed)
    if limit is not None and limit < len(pairs):
        pairs = rng.sample(pairs, limit)
    tie_pairs = rng.sample(tie_pairs, min(ties, len(tie_pairs)))
    tie = ties > 0
    out = []
    for r, (good, good_result), (bad, bad_result) in pairs:
        for better_is_a in (True, False):
            a, b = (good, bad) if better_is_a else (bad, good)
            results = (good_result, bad_result)
            out.append({"input": render_judge_prompt(r.question, list(r.previous_steps), a, b, tie=tie),
                        "output": checking_rationale(good, bad, better_is_a, results), "kind": "eft",
                        "source": r.source})  # fmt: skip
    for r, (good, _), (a, a_result), (b, b_result) in tie_pairs:
        for (x, x_result), (y, y_result) in (((a, a_result), (b, b_result)), ((b, b_result), (a, a_result))):
            out.append({"input": render_judge_prompt(r.question, list(r.previous_steps), x, y, tie=True),
                        "output": tie_rationale(good, x, y, (x_result, y_result)), "kind": "eft",
                        "source": r.source})  # fmt: skip
    return out


def search_source_eft(folder: str | Path, *, limit: int | None = None, ties: int = 0, seed: int = 0) -> list[dict]:
    """:func:`own_step_eft` of a search output folder; a folder with no usable round is an error naming it."""
    records = own_step_eft(read_trajectories(folder), limit=limit, ties=ties, seed=seed)
    if not records:
        raise DataError(f"{folder}: no round of its step-wise search has a right prefix and a right and a wrong "
                        "candidate the exact checker can label (built-in task problems only)")  # fmt: skip
    return records


def own_step_judge_pairs(folder: str | Path, limit: int | None = None, seed: int = 0, *,
                         ties: bool = False) -> list[JudgedStepPair]:  # fmt: skip
    """A judge set of the model's own candidates (evaluation, ``data.eval.judge_sets: [search:DIR?limit=N]``):
    right-vs-wrong pairs after a right prefix, as the search's judge saw them, ``limit`` of them (a seeded random
    subset); ``ties``: the two-wrong pairs instead (``better``/``worse`` are only positions), where a judge offered
    a tie should call one. Held out only if DIR's prompts were not an EFT source's."""
    pairs, tie_pairs = own_step_pairs(list(labelled_rounds(read_trajectories(folder))))
    if ties:
        rows = [JudgedStepPair(r.question, r.previous_steps, a, b, source=f"{r.source}#tie")
                for r, _, (a, _), (b, _) in tie_pairs]  # fmt: skip
    else:
        rows = [JudgedStepPair(r.question, r.previous_steps, good, bad, is_final="\\boxed" in good, source=r.source)
                for r, (good, _), (bad, _) in pairs]  # fmt: skip
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows
