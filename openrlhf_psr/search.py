"""The batched step-wise search with self-judging (SPEC "Step-wise search with self-judging").

All active problems advance together, one step per round:
1. one engine call samples ``width`` candidate next steps for every active problem (token ids in, token ids out);
2. each problem's candidates are deduplicated and enter a tournament (round robin by default); the pending
   comparisons of *all* problems go to the judge in one batch per tournament round, in both orders;
3. the best candidate becomes the accepted step and the (best, worst) pair a DPO pair; when all scores are equal
   the previous step and its pair are discarded and the problem regenerates from one step earlier (rollback);
4. a problem ends when its accepted step is final (``\\boxed{}`` or EOS), or after ``max_rounds`` rounds.

Finished problems are committed after every round as one atomic shard of pairs and trajectories
(:class:`~openrlhf_psr.io.ShardStore`); a rerun skips every committed problem, so a killed run loses at most
the rounds of problems still in flight and never duplicates a pair.

Token handling: a step is its token ids exactly as generated. A step that ended because the next step's marker
began keeps the separator before the marker (``"\\n"``) and nothing after it; a final step ends with EOS; a
non-final step never does. The pair's prompt ids are the problem's prompt ids plus the accepted steps' ids.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import Field

from openrlhf_psr.data.problems import Problem
from openrlhf_psr.engines.base import Engine, Sample, SampleRequest
from openrlhf_psr.io import ShardStore
from openrlhf_psr.judges.base import Comparison, Judgment, PairwiseJudge
from openrlhf_psr.judges.guard import candidate_flags, control_strings, special_token_ids
from openrlhf_psr.pause import pause_at
from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt
from openrlhf_psr.recipe import CHAT_TEMPLATE_DOC, SearchSpec
from openrlhf_psr.records import PairRecord, Step, Trajectory, read_records
from openrlhf_psr.steps import (
    FinishReason,
    classify_finish,
    detect_repetition,
    extract_boxed,
    is_final_step,
    normalize_candidate,
    step_stop_strings,
    strip_marker,
)
from openrlhf_psr.tournament import TournamentResult, TournamentState, make_state

log = logging.getLogger(__name__)


class SearchConfig(SearchSpec):
    """The search settings (``psr.search``, each documented once in :class:`openrlhf_psr.recipe.SearchSpec`) plus
    the prompt format and the seed, which a recipe holds once for all its stages (``psr.chat_template``, ``seed``).
    A bad value is a ``pydantic.ValidationError`` (a ``ValueError``) naming the setting."""

    chat_template: bool = Field(True, description=CHAT_TEMPLATE_DOC)
    seed: int = Field(0, description="base seed; round r of a problem samples with a seed of (seed, problem id, r)")


@dataclass
class _Problem:
    """A problem in flight."""

    problem: Problem
    prompt_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    pairs: list[PairRecord | None] = field(default_factory=list)  # pairs[k] is the pair that accepted steps[k]
    rounds: list[dict] = field(default_factory=list)
    rollbacks: int = 0
    finish: str | None = None
    votes: list[str | None] | None = None  # majority_filter: the sampled solutions' boxed answers

    def prefix_ids(self) -> list[int]:
        return self.prompt_ids + [t for s in self.steps for t in s.token_ids]


def derive_seed(seed: int, problem_id: str, round_no: int) -> int:
    """A per-(problem, round) seed, independent of how problems are batched (round -1: the majority votes)."""
    return zlib.crc32(f"{seed}:{problem_id}:{round_no}".encode())


def majority_answer(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> str | None:
    """The answer most of ``answers`` agree on, or None without a clear one (fewer than two votes for the most
    common answer, or a tie for the most). Answers that ``same`` calls equal vote together; None does not vote.

    >>> same = lambda a, b: a.strip() == b.strip()
    >>> majority_answer(["5", "4", " 5", None], same), majority_answer(["5", "4", None, None], same)
    ('5', None)
    >>> majority_answer(["5", "4", "4", "5"], same) is None  # a tie
    True
    """
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        group = next((g for g in groups if same(answer, g[0])), None)
        if group is None:
            groups.append([answer])
        else:
            group.append(answer)
    groups.sort(key=len, reverse=True)
    if not groups or len(groups[0]) < 2 or (len(groups) > 1 and len(groups[1]) == len(groups[0])):
        return None
    return groups[0][0]


def trim_step(tokenizer, sample: Sample) -> Step:
    """Turn one sampled continuation into a step whose token ids and text agree exactly.

    A step that ended at the next step's marker keeps the whitespace separator before the marker (``"\\n"``) and
    nothing of the marker itself. vLLM's token ids run up to the token that completed the stop string, so the ids
    are cut at the last token boundary at or before the separator's end: with a BPE tokenizer an inline marker
    ``" Step 2:"`` starts with the token ``" Step"``, and the step then ends at the text before it (without the
    space, which belongs to that token), never with a dangling ``" Step"``.
    """
    finish = classify_finish(sample.finish_reason, sample.stop_reason)
    ids = list(sample.token_ids)
    eos = tokenizer.eos_token_id
    if finish == FinishReason.STEP:
        stop = str(sample.stop_reason)
        keep = sample.text + stop[: len(stop) - len(stop.lstrip())]  # keep the separator before the next marker
        final = is_final_step(sample.text, finish)
        if final:
            keep = sample.text
        ids = ids[: _prefix_len_within(tokenizer, ids, len(keep))]
    else:
        final = is_final_step(sample.text, finish)
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if final and eos is not None:
        ids = ids + [eos]  # only a solution's final step ends with EOS
    return Step(ids, text, str(finish), final)


def _prefix_len_within(tokenizer, ids: list[int], n_chars: int) -> int:
    """The most leading tokens whose text has at most ``n_chars`` characters (binary search; decoded length grows
    with the number of tokens)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) <= n_chars:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _with_retries(fn: Callable, retries: int, what: str):
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - reported, retried, then re-raised
            if attempt == retries:
                raise
            log.warning("%s failed (%s); retrying (%d/%d)", what, exc, attempt + 1, retries)


class StepSearch:
    """Runs the search over many problems and writes ``out_dir/{pairs,trajectories}/shard-*.jsonl``."""

    def __init__(
        self,
        engine: Engine,
        judge: PairwiseJudge,
        config: SearchConfig | None = None,
        *,
        model_id: str = "",
        grader: Callable[[str | None, str | None], bool | None] | None = None,
    ):
        self.engine = engine
        self.judge = judge
        self.config = config if config is not None else SearchConfig()
        self.model_id = model_id
        if grader is None:
            from openrlhf_psr.grading import is_correct as grader
        self.grader = grader
        self.stop = tuple(step_stop_strings())
        self.stats = {"engine_calls": 0, "judge_calls": 0, "judge_batches": 0, "generated_tokens": 0,
                      "blank_start_continuations": 0, "majority_samples": 0}  # fmt: skip

    # -- the majority filter's votes -------------------------------------------------------------------------
    def _vote(self, problems: list[_Problem], progress: bool, chunk: int = 64) -> None:
        """Sample ``majority_filter`` whole solutions per problem from the prompt alone and keep their boxed answers
        (``p.votes``). Seeded per problem (round -1), so a resumed search draws the same votes."""
        from tqdm.auto import tqdm

        cfg = self.config
        for start in tqdm(range(0, len(problems), chunk), desc="majority votes", disable=not progress):
            batch = problems[start : start + chunk]
            requests = [
                SampleRequest(
                    tuple(p.prompt_ids),
                    n=cfg.majority_filter,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_tokens=cfg.majority_max_tokens,
                    seed=derive_seed(cfg.seed, p.problem.id, -1),
                    affinity=str(p.problem.id),  # the engine that will search this problem caches its prompt
                )
                for p in batch
            ]
            outputs = _with_retries(lambda r=requests: self.engine.generate(r), cfg.judge_retries, "engine.generate")
            self.stats["engine_calls"] += 1
            self.stats["majority_samples"] += sum(len(out) for out in outputs)
            self.stats["generated_tokens"] += sum(len(s.token_ids) for out in outputs for s in out)
            for p, out in zip(batch, outputs, strict=True):
                p.votes = [extract_boxed(s.text) for s in out]

    def _majority(self, p: _Problem, final_answer: str | None) -> dict | None:
        """The trajectory's ``majority`` record (see :class:`~openrlhf_psr.records.Trajectory`)."""
        if p.votes is None:
            return None
        same = lambda a, b: self.grader(a, b) is True  # noqa: E731 - math-verify equivalence, time-limited
        answer = majority_answer(p.votes, same)
        return {
            "answer": answer,
            "votes": p.votes,
            "agrees": answer is not None and final_answer is not None and same(final_answer, answer),
            "correct": self.grader(answer, p.problem.answer) if answer is not None else None,
        }

    def _keeps_pairs(self, t: Trajectory) -> bool:
        """Whether a finished trajectory's pairs are written (the outcome filters; both off in the paper)."""
        if self.config.filter_wrong and t.correct is False:
            return False
        return not (self.config.majority_filter and not t.majority["agrees"])

    # -- one round -------------------------------------------------------------------------------------------
    def _sample(self, active: list[_Problem]) -> list[list[Step]]:
        cfg = self.config
        requests = [
            SampleRequest(
                tuple(p.prefix_ids()),
                n=cfg.width,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens_per_step,
                stop=self.stop,
                seed=derive_seed(cfg.seed, p.problem.id, len(p.rounds)),
                affinity=str(p.problem.id),  # one engine per problem: its prefix stays cached
            )
            for p in active
        ]
        outputs = _with_retries(lambda: self.engine.generate(requests), cfg.judge_retries, "engine.generate")
        self.stats["engine_calls"] += 1
        self.stats["generated_tokens"] += sum(len(s.token_ids) for out in outputs for s in out)
        outputs = self._continue_blank_starts(requests, outputs)
        return [[trim_step(self.engine.tokenizer, s) for s in out] for out in outputs]

    def _continue_blank_starts(self, requests: list[SampleRequest], outputs: list[list[Sample]]):
        """Continue, once, every candidate that stopped before writing anything but whitespace.

        A model that opens its step with a blank line and its own marker (``"\\nStep 1: ..."``), or continues the
        previous step inline (``" Step 2: ..."``, after a step cut before the ``" Step"`` token), matches a stop
        string at its first character; vLLM then returns an empty text, although the tokens it generated are the
        start of a good step. Those candidates are resumed after their own marker (prompt = prefix + their tokens,
        one more batched engine call) and joined with the continuation, so the step is kept as the model wrote it
        instead of being lost as empty.
        """
        todo = [
            (k, j)
            for k, out in enumerate(outputs)
            for j, s in enumerate(out)
            if not s.text.strip() and classify_finish(s.finish_reason, s.stop_reason) == FinishReason.STEP
        ]
        budget = self.config.max_tokens_per_step
        todo = [(k, j) for k, j in todo if len(outputs[k][j].token_ids) < budget]
        if not todo:
            return outputs
        more = [
            replace(
                requests[k],
                prompt_token_ids=requests[k].prompt_token_ids + tuple(outputs[k][j].token_ids),
                n=1,
                max_tokens=budget - len(outputs[k][j].token_ids),
                seed=None if requests[k].seed is None else requests[k].seed + 1 + j,
            )
            for k, j in todo
        ]
        answers = _with_retries(lambda: self.engine.generate(more), self.config.judge_retries, "engine.generate")
        self.stats["engine_calls"] += 1
        self.stats["blank_start_continuations"] += len(todo)
        self.stats["generated_tokens"] += sum(len(out[0].token_ids) for out in answers)
        outputs = [list(out) for out in outputs]
        decode = self.engine.tokenizer.decode
        for (k, j), answer in zip(todo, answers, strict=True):
            head, tail = outputs[k][j], answer[0]
            if not tail.text.strip():
                continue  # nothing after the marker either: the candidate stays empty
            outputs[k][j] = Sample(
                decode(list(head.token_ids), skip_special_tokens=True) + tail.text,
                tuple(head.token_ids) + tuple(tail.token_ids),
                tail.finish_reason,
                tail.stop_reason,
            )
        return outputs

    def _judge_all(self, problems: list[_Problem], candidates: list[list[Step]]):
        """Tournaments of all problems, advanced together: one judge batch per tournament round."""
        cfg = self.config
        states: list[TournamentState] = []
        uniques: list[list[int]] = []
        calls: list[list[dict]] = [[] for _ in problems]
        for cands in candidates:
            unique = _unique_valid(cands)
            if cfg.drop_flagged:
                unique = [u for u in unique if not self._flags(cands[u])]
            uniques.append(unique)
            states.append(
                make_state(
                    cfg.tournament,
                    len(unique),
                    both_orders=cfg.both_orders,
                    aggregate=cfg.aggregate,
                    min_margin=cfg.min_margin,
                )
            )
        while True:
            batch: list[tuple[int, int, int]] = []  # (problem index, i, j) over unique indices
            for k, state in enumerate(states):
                batch.extend((k, i, j) for i, j in state.pending())
            if not batch:
                break
            comparisons = [
                Comparison(
                    problems[k].problem.question,
                    # the judge sees steps numbered by position, whatever numbers the model wrote
                    tuple(normalize_candidate(s.text, n) for n, s in enumerate(problems[k].steps, 1)),
                    normalize_candidate(candidates[k][uniques[k][i]].text, len(problems[k].steps) + 1),
                    normalize_candidate(candidates[k][uniques[k][j]].text, len(problems[k].steps) + 1),
                    problems[k].problem.answer,
                )
                for k, i, j in batch
            ]
            judgments: list[Judgment] = _with_retries(
                lambda batch_=comparisons: self.judge.judge(batch_), cfg.judge_retries, "judge.judge"
            )
            if len(judgments) != len(comparisons):
                raise RuntimeError(f"judge returned {len(judgments)} judgments for {len(comparisons)} comparisons")
            self.stats["judge_calls"] += len(comparisons)
            self.stats["judge_batches"] += 1
            per_problem: dict[int, list] = {}
            for (k, i, j), judgment in zip(batch, judgments, strict=True):
                per_problem.setdefault(k, []).append(judgment.verdict)
                calls[k].append({"a": uniques[k][i], "b": uniques[k][j], **judgment.to_json()})
            for k, verdicts in per_problem.items():
                states[k].submit(verdicts)
        return [s.result() for s in states], uniques, calls

    def _apply(self, p: _Problem, cands: list[Step], result: TournamentResult, unique: list[int], calls: list[dict]):
        cfg = self.config
        record = {
            "round": len(p.rounds),
            "prefix_steps": len(p.steps),
            "candidates": [c.to_json() for c in cands],
            "flags": [self._flags(c) for c in cands],  # per candidate: what could steer its judge
            "unique": unique,
            "judge_calls": calls,
            "scores": list(result.scores),
            "n_abstentions": result.n_abstentions,
            "n_consistent": result.n_consistent,
            "n_pairs_both_orders": result.n_pairs_both_orders,
        }
        if not unique:  # every candidate empty: nothing to accept; resample (counts as a round)
            record["action"] = "no_valid_candidate"
        elif len(unique) == 1:
            # All candidates say the same thing: accept it, but there is no preference to learn from.
            best = cands[unique[0]]
            p.steps.append(best)
            p.pairs.append(None)
            record["action"] = "accept_unanimous"
            record["chosen"] = unique[0]
        elif result.best is None:
            # No preference (all scores equal) or one weaker than min_margin: the paper's tie rule.
            record["action"] = "rollback"
            record["rollback_reason"] = "below_margin" if result.below_margin else "tie"
            if p.steps:
                p.steps.pop()
                p.pairs.pop()
                p.rollbacks += 1
        else:
            best, worst = cands[unique[result.best]], cands[unique[result.worst]]
            record.update(action="accept", chosen=unique[result.best], rejected=unique[result.worst])
            p.pairs.append(
                PairRecord(
                    problem_id=p.problem.id,
                    round=len(p.rounds),
                    step_index=len(p.steps),
                    prompt_ids=p.prefix_ids(),
                    chosen_ids=best.token_ids,
                    rejected_ids=worst.token_ids,
                    question=p.problem.question,
                    prefix_steps=[s.text for s in p.steps],
                    chosen=best.text,
                    rejected=worst.text,
                    chosen_is_final=best.final,
                    rejected_is_final=worst.final,
                    scores=[result.scores[result.best], result.scores[result.worst]],
                    margin=result.margin,
                    model_id=self.model_id,
                )
            )
            p.steps.append(best)
        p.rounds.append(record)
        if p.steps and p.steps[-1].final:
            p.finish = "final"
        elif len(p.rounds) >= cfg.max_rounds:
            p.finish = "max_rounds"
        elif detect_repetition([s.text for s in p.steps]):
            p.finish = "repetition"
        elif len(p.prefix_ids()) + cfg.max_tokens_per_step > cfg.max_prompt_tokens:
            p.finish = "context"

    @functools.cached_property
    def _guard(self) -> tuple[tuple[str, ...], frozenset[int], int | None]:
        tok = self.engine.tokenizer
        return control_strings(tok), special_token_ids(tok), getattr(tok, "eos_token_id", None)

    def _flags(self, step: Step) -> list[str]:
        control, specials, eos = self._guard
        return candidate_flags(step.text, control, step.token_ids, specials, eos)

    # -- records ---------------------------------------------------------------------------------------------
    def _trajectory(self, p: _Problem) -> Trajectory:
        answer = extract_boxed(p.steps[-1].text) if p.steps else None
        return Trajectory(
            method="psr",
            problem_id=p.problem.id,
            question=p.problem.question,
            gold=p.problem.answer,
            prompt_ids=p.prompt_ids,
            steps=list(p.steps),
            final_answer=answer,
            correct=self.grader(answer, p.problem.answer),
            finish=p.finish,
            rollbacks=p.rollbacks,
            rounds=p.rounds,
            model_id=self.model_id,
            seed=self.config.seed,
            config=self.config.model_dump(),
            majority=self._majority(p, answer),
        )

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self, problems: Sequence[Problem], out_dir: str | Path, *, progress: bool = True) -> dict:
        """Search every problem not already committed under ``out_dir``; returns the summary statistics."""
        from tqdm.auto import tqdm

        store = ShardStore(out_dir)
        done = {r["problem_id"] for r in store.read("trajectories")}
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise ValueError("problem ids must be unique")
        tokenizer = self.engine.tokenizer
        todo = [
            _Problem(
                p,
                prompt_token_ids(tokenizer, render_step_prompt(p.question), chat_template=self.config.chat_template),
            )
            for p in problems
            if p.id not in done
        ]
        start = time.perf_counter()
        if self.config.majority_filter and todo:
            self._vote(todo, progress)
        bar = tqdm(
            total=len(problems), initial=len(problems) - len(todo), desc="step-wise search", disable=not progress
        )
        active = todo
        round_no = 0
        while active:
            # A round is two long engine calls (sample, then judge) over every active problem, and no problem
            # finishes before its last round: on a large batch the bar itself stays still for many minutes, so the
            # postfix names the round and the phase running now, and the steps accepted so far.
            round_no += 1
            status = {"round": round_no, "active": len(active), "steps": sum(len(p.steps) for p in todo)}
            bar.set_postfix(status, phase="sampling")
            candidates = self._sample(active)
            bar.set_postfix(status, phase="judging")
            results, uniques, calls = self._judge_all(active, candidates)
            for p, cands, result, unique, call in zip(active, candidates, results, uniques, calls, strict=True):
                self._apply(p, cands, result, unique, call)
            finished = [p for p in active if p.finish]
            if finished:
                trajectories = [self._trajectory(p) for p in finished]
                pairs = [
                    pair.to_json()
                    for p, t in zip(finished, trajectories, strict=True)
                    if self._keeps_pairs(t)
                    for pair in p.pairs
                    if pair is not None
                ]
                store.commit({"pairs": pairs, "trajectories": [t.to_json() for t in trajectories]})
                pause_at("search-commit")  # kill-and-resume tests only (OPENRLHF_PSR_PAUSE_AT)
                bar.update(len(finished))
            active = [p for p in active if not p.finish]
            bar.set_postfix(round=round_no, active=len(active), judge_calls=self.stats["judge_calls"])
        bar.close()
        elapsed = time.perf_counter() - start
        summary = summarize(store, tokenizer=None)
        summary.update(
            elapsed_s=elapsed,
            searched_now=len(todo),
            problems_per_min=60 * len(todo) / elapsed if elapsed > 0 and todo else None,
            generated_tokens_per_s=self.stats["generated_tokens"] / elapsed if elapsed > 0 else None,
            **{f"run_{k}": v for k, v in self.stats.items()},
        )
        return summary


def _unique_valid(cands: list[Step]) -> list[int]:
    """Indices of the first occurrence of each distinct non-empty candidate.

    Candidates are compared by their content: marker and number removed (:func:`~openrlhf_psr.steps.strip_marker`),
    whitespace normalised. So ``"Step 2: x"`` and ``"Step 3: x"`` are one candidate, and a bare marker is empty.
    """
    seen: dict[str, int] = {}
    for k, c in enumerate(cands):
        key = " ".join(strip_marker(c.text).split())
        if key and key not in seen:
            seen[key] = k
    return list(seen.values())


def summarize(store: ShardStore, tokenizer=None) -> dict:
    """Statistics over everything committed in a search directory (SPEC: pairs, rollbacks, abstentions, ...).

    Step-wise search (``psr``) and SRLM trajectories are both read (:class:`~openrlhf_psr.records.Trajectory`):
    problems, pairs, boxed rate, accuracy and finish reasons count every trajectory; the step, round and judge
    statistics come from the step-wise search's alone and are None when it has none (an SRLM output has no steps
    and no pairwise judge calls). A malformed row is a one-line error naming its shard, record and field.
    """
    trajectories = list(read_records(store.read_located("trajectories"), Trajectory))
    n_pairs = sum(1 for _ in read_records(store.read_located("pairs"), PairRecord))
    psr = [t for t in trajectories if t.method == "psr"]
    steps = [len(t.steps) for t in psr]
    step_tokens = [len(s.token_ids) for t in psr for s in t.steps]
    rounds = [r for t in psr for r in t.rounds]
    calls = sum(len(r["judge_calls"]) for r in rounds)
    both = sum(r["n_pairs_both_orders"] for r in rounds)
    graded = [t.correct for t in trajectories if t.correct is not None]
    accepted = sum(t.accepted for t in psr)
    flags = [f for r in rounds for fl in r.get("flags", ()) for f in fl]  # records before flags had none
    finishes: dict[str, int] = {}
    methods: dict[str, int] = {}
    for t in trajectories:
        finishes[str(t.finish)] = finishes.get(str(t.finish), 0) + 1
        methods[t.method] = methods.get(t.method, 0) + 1
    no_steps = None if trajectories and not psr else 0.0  # SRLM only: no step statistics at all
    return {
        "problems": len(trajectories),
        "methods": methods,
        "pairs": n_pairs,
        "pairs_per_problem": n_pairs / len(trajectories) if trajectories else 0.0,
        "rollbacks": sum(t.rollbacks for t in trajectories),
        "rounds": len(rounds),
        "judge_calls": calls,
        "judge_calls_per_accepted_step": calls / accepted if accepted else None,
        "abstentions": sum(r["n_abstentions"] for r in rounds),
        "abstention_rate": sum(r["n_abstentions"] for r in rounds) / calls if calls else None,
        "position_consistency": sum(r["n_consistent"] for r in rounds) / both if both else None,
        "mean_steps": statistics.fmean(steps) if steps else no_steps,
        "mean_step_tokens": statistics.fmean(step_tokens) if step_tokens else no_steps,
        "boxed_rate": sum(t.final_answer is not None for t in trajectories) / len(trajectories)
        if trajectories
        else 0.0,
        "accuracy": sum(graded) / len(graded) if graded else None,
        "finish": finishes,
        "flagged_candidates": sum(1 for r in rounds for fl in r.get("flags", ()) if fl),
        **_majority_stats([t.majority for t in psr if t.majority is not None]),
        "candidate_flags": {name: flags.count(name) for name in sorted(set(flags))},
    }


def _majority_stats(majorities: list[dict]) -> dict:
    """The majority filter's statistics (empty without it): how often the votes had a majority, how often the
    search's answer agreed with it (its pairs kept), and how often the majority was right where gold is known."""
    if not majorities:
        return {}
    graded = [m["correct"] for m in majorities if m["correct"] is not None]
    return {
        "majority_decided": sum(m["answer"] is not None for m in majorities) / len(majorities),
        "majority_agrees": sum(bool(m["agrees"]) for m in majorities) / len(majorities),
        "majority_accuracy": sum(graded) / len(graded) if graded else None,
    }
