"""The records where the stages meet, one typed definition each, with a version and a JSON round trip.

Every stage that writes or reads one of these goes through this module, so a field is named, typed and documented
once (``docs/architecture.md`` "Records" describes the files):

- :class:`Verdict` (with :data:`Winner`) is the judge's answer to one ordered comparison; :class:`Judgment` is a
  verdict with the judge's raw text (what :class:`~openrlhf_psr.judges.base.PairwiseJudge` returns);
  :func:`aggregate_pair` is the one both-order aggregation (tournament, judge accuracy and the reward file), and
  :class:`PairOutcome` its result.
- :class:`PairRecord`: one step preference pair (``<search>/pairs/shard-*.jsonl``), written by the step-wise
  search and by SRLM.
- :class:`Trajectory` (with :class:`Step`): one problem's search (``<search>/trajectories/shard-*.jsonl``),
  ``method`` ``"psr"`` or ``"srlm"``; both kinds are summarised by ``search.summarize``.
- :class:`JudgedStepPair`: a step pair whose better step is known (PRM800K, the built-in task), used for EFT, judge
  accuracy and as a plain step-pair row of the step-DPO dataset.
- :class:`Problem`: a problem with its gold answer.

A JSON row without ``version`` is version 1 (records before versions were written everywhere); a newer version than
this module knows, a missing required field or a field of the wrong type is a one-line
:class:`~openrlhf_psr.errors.DataError` (:class:`~openrlhf_psr.errors.MissingField` for a missing one) naming where
the row came from and the field. Pure module: stdlib only (no torch, vLLM, Ray or DeepSpeed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from openrlhf_psr.errors import DataError, MissingField

__all__ = [
    "Aggregate",
    "JudgedStepPair",
    "Judgment",
    "PairOutcome",
    "PairRecord",
    "Problem",
    "Step",
    "Trajectory",
    "Verdict",
    "Winner",
    "aggregate_pair",
]

Winner = Literal["A", "B"]
Aggregate = Literal["verdict", "prob"]
Method = Literal["psr", "srlm"]
_EPS = 1e-9


# -- field checks ------------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# kind -> (test, what the message says was expected)
_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "num": (_is_num, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "id": (lambda v: isinstance(v, str) or _is_int(v), "a string or an integer"),
    "ids": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of token ids (integers)"),
    "strs": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "nums": (lambda v: isinstance(v, list) and all(x is None or _is_num(x) for x in v), "a list of numbers or nulls"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "winner": (lambda v: v in ("A", "B"), "'A', 'B' or null"),
    "method": (lambda v: v in ("psr", "srlm"), "'psr' or 'srlm'"),
}


_ITEMS = {"ids": _is_int, "strs": lambda x: isinstance(x, str), "nums": lambda x: x is None or _is_num(x)}


def _found(value) -> str:
    names = {list: "a list", dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}  # fmt: skip
    text = names.get(type(value), type(value).__name__)
    return f"{text} {value!r}" if isinstance(value, str | int | float) and len(repr(value)) <= 40 else text


def _fields(row, where: str, what: str, spec: Mapping[str, tuple[str, bool]], version: int) -> dict:
    """Check ``row`` against ``spec`` (field -> (kind, required); a kind ending in ``?`` also allows null) and return
    the fields present. ``what`` names the record in messages, ``version`` is the newest this module reads."""
    at = f"{where}: " if where else ""
    if not isinstance(row, dict):
        raise DataError(f"{at}expected {what} (a JSON object), found {_found(row)}")
    found_version = row.get("version", 1)
    if not _is_int(found_version) or not 1 <= found_version <= version:
        raise DataError(f"{at}field 'version': expected {what} of version 1..{version}, found {found_version!r}")
    out = {}
    for name, (kind, required) in spec.items():
        if name not in row:
            if required:
                raise MissingField(f"{at}missing field {name!r} ({what}; fields: {sorted(row)})")
            continue
        value = row[name]
        nullable = kind.endswith("?")
        test, expected = _KINDS[kind.rstrip("?")]
        if value is None and nullable:
            out[name] = None
            continue
        if not test(value):
            expected = f"{expected} or null" if nullable and "null" not in expected else expected
            found = _found(value)
            if kind.rstrip("?") in _ITEMS and isinstance(value, list):  # name the first bad item
                k = next(k for k, x in enumerate(value) if not _ITEMS[kind.rstrip("?")](x))
                found = f"a list holding {_found(value[k])} at index {k}"
            raise DataError(f"{at}field {name!r}: expected {expected}, found {found} ({what})")
        out[name] = value
    return out


def _nested(where: str, name: str, k: int) -> str:
    return f"{where}: {name}[{k}]" if where else f"{name}[{k}]"


# -- verdicts ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The judge's answer to one ordered comparison: one candidate shown as A, the other as B.

    Attributes:
        winner: ``"A"``, ``"B"``, or ``None`` for an abstention (no parseable verdict).
        p_a: the judge's probability that A is better (logit judges), or ``None``. A NaN is kept but treated as
            missing by :func:`aggregate_pair`, so one bad forward pass cannot stop a search.

    >>> Verdict.from_json(Verdict("B", 0.25).to_json())
    Verdict(winner='B', p_a=0.25)
    """

    winner: Winner | None
    p_a: float | None = None

    VERSION = 1

    def __post_init__(self) -> None:
        if self.winner not in ("A", "B", None):
            raise ValueError(f"winner must be 'A', 'B' or None, got {self.winner!r}")
        if self.p_a is not None and not math.isnan(self.p_a) and not 0.0 <= self.p_a <= 1.0:
            raise ValueError(f"p_a must be a probability, got {self.p_a!r}")

    def to_json(self) -> dict:
        return {"version": self.VERSION, "winner": self.winner, "p_a": self.p_a}

    @classmethod
    def from_json(cls, row, where: str = "") -> Verdict:
        f = _fields(row, where, "a verdict", {"winner": ("winner?", True), "p_a": ("num?", False)}, cls.VERSION)
        p_a = f.get("p_a")
        if p_a is not None and not (math.isnan(p_a) or 0.0 <= p_a <= 1.0):
            raise DataError(f"{where + ': ' if where else ''}field 'p_a': expected a probability, found {p_a!r}")
        return cls(f["winner"], None if p_a is None else float(p_a))


@dataclass(frozen=True)
class Judgment:
    """A verdict plus what produced it (the judge's raw text, or nothing for a logit judge): what a judge returns
    for each comparison. Its JSON is the verdict's fields plus ``raw`` (a trajectory's ``judge_calls`` entries add
    the candidate indices ``a`` and ``b``).

    >>> Judgment.from_json({"winner": "A", "p_a": None, "raw": "... [[A]]"})
    Judgment(verdict=Verdict(winner='A', p_a=None), raw='... [[A]]')
    """

    verdict: Verdict
    raw: str | None = None

    VERSION = 1

    def to_json(self) -> dict:
        return {**self.verdict.to_json(), "raw": self.raw}

    @classmethod
    def from_json(cls, row, where: str = "") -> Judgment:
        f = _fields(row, where, "a judgment", {"raw": ("str?", False)}, cls.VERSION)
        return cls(Verdict.from_json(row, where), f.get("raw"))


@dataclass(frozen=True)
class PairOutcome:
    """The result of the unordered pair {i, j} after its comparisons (usually both orders).

    Attributes:
        i, j: the candidates; ``(i, j)`` was the order with i shown as A.
        score_i, score_j: their wins from this pair (1/0, 0/1 or 0.5/0.5).
        consistent: both orders gave a verdict and named the same candidate.
        decided_both: both orders gave a verdict, so the pair counts in the position-consistency rate.
        n_abstentions: comparisons of this pair that contributed nothing (no verdict, and no probability used).
        p_i: mean P(i better) over the orders when ``aggregate="prob"`` and every order gave a usable probability,
            else ``None``.
        votes_i, votes_j: orders whose verdict named i / j (per-order accuracy of a judge, whatever decided).
    """

    i: int
    j: int
    score_i: float
    score_j: float
    consistent: bool
    decided_both: bool
    n_abstentions: int
    p_i: float | None = None
    votes_i: int = 0
    votes_j: int = 0

    @property
    def is_draw(self) -> bool:
        return abs(self.score_i - self.score_j) <= _EPS


def _usable(p: float | None) -> bool:
    return p is not None and not math.isnan(p)


def aggregate_pair(
    i: int, j: int, ij: Verdict, ji: Verdict | None = None, *, aggregate: Aggregate = "verdict"
) -> PairOutcome:
    """The one both-order aggregation: combine the verdicts of pair {i, j}, ``ij`` with i shown as A and ``ji``
    (optional) with j shown as A.

    ``verdict``: agreement gives the winner 1 and the loser 0, disagreement 0.5 each (so a judge with a pure position
    bias produces only draws); if one order abstains the other decides alone; if both do, 0.5 each. ``prob``: when
    every order has a usable P(A), the candidate whose mean P(better) exceeds 0.5 wins the pair (``p_i`` holds the
    mean); otherwise as ``verdict``.

    >>> aggregate_pair(0, 1, Verdict("A"), Verdict("B"))  # both orders prefer 0
    PairOutcome(i=0, j=1, score_i=1.0, score_j=0.0, consistent=True, decided_both=True, n_abstentions=0, p_i=None, \
votes_i=2, votes_j=0)
    >>> o = aggregate_pair(0, 1, Verdict("A"), Verdict("A"))  # position bias: each order says "A"
    >>> o.score_i, o.score_j, o.consistent
    (0.5, 0.5, False)
    >>> o = aggregate_pair(0, 1, Verdict(None), Verdict("A"))  # one abstention: the other order decides
    >>> o.score_i, o.score_j, o.n_abstentions
    (0.0, 1.0, 1)
    >>> o = aggregate_pair(0, 1, Verdict("A", p_a=0.6), Verdict("A", p_a=0.55), aggregate="prob")
    >>> o.score_i, round(o.p_i, 3)  # mean P(0 better) = (0.6 + 0.45) / 2 > 0.5
    (1.0, 0.525)
    """
    if aggregate not in ("verdict", "prob"):
        raise ValueError(f"aggregate must be 'verdict' or 'prob', got {aggregate!r}")
    # Each order's vote, as a candidate index.
    vote_ij = {"A": i, "B": j}.get(ij.winner) if ij.winner else None
    vote_ji = {"A": j, "B": i}.get(ji.winner) if ji is not None and ji.winner else None
    decided_both = ji is not None and vote_ij is not None and vote_ji is not None
    consistent = decided_both and vote_ij == vote_ji
    votes = [v for v in (vote_ij, vote_ji) if v is not None]
    votes_i, votes_j = votes.count(i), votes.count(j)

    if aggregate == "prob" and _usable(ij.p_a) and (ji is None or _usable(ji.p_a)):
        probs = [ij.p_a] if ji is None else [ij.p_a, 1.0 - ji.p_a]  # type: ignore[operator]
        p_i = sum(probs) / len(probs)  # type: ignore[arg-type]
        if p_i > 0.5 + _EPS:
            s_i = 1.0
        elif p_i < 0.5 - _EPS:
            s_i = 0.0
        else:
            s_i = 0.5
        return PairOutcome(i, j, s_i, 1.0 - s_i, consistent, decided_both, 0, p_i, votes_i, votes_j)

    n_abstentions = (vote_ij is None) + (ji is not None and vote_ji is None)
    if not votes or (len(votes) == 2 and votes[0] != votes[1]):
        s_i = 0.5  # no information, or the two orders contradict each other
    else:
        s_i = 1.0 if votes[0] == i else 0.0
    return PairOutcome(i, j, s_i, 1.0 - s_i, consistent, decided_both, n_abstentions, None, votes_i, votes_j)


# -- the step preference pair ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairRecord:
    """One accepted step that had a preference (``<search>/pairs/shard-*.jsonl``), from the search or SRLM.

    Attributes:
        problem_id, round, step_index: where it comes from (``step_index``: 0-based index of the step in the
            accepted path; SRLM: round 0, step 0).
        prompt_ids: the problem prompt's ids (chat template included) + every accepted step's ids: exactly what the
            policy was conditioned on.
        chosen_ids, rejected_ids: the two steps as generated; a non-final step keeps its trailing separator and has
            no EOS, a final step ends with EOS (an SRLM whole solution is one final step).
        question, prefix_steps, chosen, rejected: the same as text. ``chosen_is_final``/``rejected_is_final``.
        scores: (best, worst) tournament scores (SRLM: mean rubric scores); ``margin`` best minus worst.
        model_id: the policy that generated it.

    Required in a JSON row: ``problem_id``, ``step_index``, ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (what
    the step-DPO dataset needs); the rest default when absent (hand-written shards).

    >>> p = PairRecord("p1", 0, 1, [1, 2], [3], [4], question="q", prefix_steps=["Step 1: a\\n"], scores=[2.0, 0.0])
    >>> PairRecord.from_json(p.to_json()) == p, p.to_json()["version"]
    (True, 1)
    """

    problem_id: str | int
    round: int
    step_index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    question: str = ""
    prefix_steps: list[str] = field(default_factory=list)
    chosen: str = ""
    rejected: str = ""
    chosen_is_final: bool = False
    rejected_is_final: bool = False
    scores: list[float] = field(default_factory=list)
    margin: float = 0.0
    model_id: str = ""

    VERSION = 1
    _SPEC = {
        "problem_id": ("id", True),
        "round": ("int", False),
        "step_index": ("int", True),
        "prompt_ids": ("ids", True),
        "chosen_ids": ("ids", True),
        "rejected_ids": ("ids", True),
        "question": ("str", False),
        "prefix_steps": ("strs", False),
        "chosen": ("str", False),
        "rejected": ("str", False),
        "chosen_is_final": ("bool", False),
        "rejected_is_final": ("bool", False),
        "scores": ("nums", False),
        "margin": ("num", False),
        "model_id": ("str", False),
    }

    def to_json(self) -> dict:
        return {"version": self.VERSION, **{name: getattr(self, name) for name in self._SPEC}}

    @classmethod
    def from_json(cls, row, where: str = "") -> PairRecord:
        f = _fields(row, where, "a pair record", cls._SPEC, cls.VERSION)
        return cls(**{"round": 0, **f})

    @property
    def source(self) -> str:
        """``problem_id/stepN``, for messages."""
        return f"{self.problem_id}/step{self.step_index}"


# -- the trajectory ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One accepted step as generated: its token ids, their text, why it ended (``step``/``eos``/``length``) and
    whether it is a solution's final step.

    >>> Step.from_json({"token_ids": [5, 0], "text": "x", "finish": "eos", "final": True})
    Step(token_ids=[5, 0], text='x', finish='eos', final=True)
    """

    token_ids: list[int]
    text: str
    finish: str
    final: bool

    _SPEC = {"token_ids": ("ids", True), "text": ("str", True), "finish": ("str", True), "final": ("bool", True)}

    def to_json(self) -> dict:
        return {"token_ids": self.token_ids, "text": self.text, "finish": self.finish, "final": self.final}

    @classmethod
    def from_json(cls, row, where: str = "") -> Step:
        return cls(**_fields(row, where, "a step", cls._SPEC, 1))


# What a trajectory's ``rounds`` entry must hold for the search summary (the rest is the log, see docs).
_ROUND_SPEC = {
    "action": ("str", True),
    "judge_calls": ("list", True),
    "n_abstentions": ("int", True),
    "n_consistent": ("int", True),
    "n_pairs_both_orders": ("int", True),
    "flags": ("list", False),
}


@dataclass(frozen=True)
class Trajectory:
    """One problem's search (``<search>/trajectories/shard-*.jsonl``); its shard is the commit record.

    Attributes:
        method: ``"psr"`` (the step-wise search) or ``"srlm"`` (the Self-Rewarding LM baseline: whole solutions).
        problem_id, question, gold (None without a gold answer), prompt_ids (the problem prompt's ids).
        steps: the accepted path (PSR; SRLM: empty, its solutions are in ``solutions``).
        final_answer: the boxed answer of the accepted path (SRLM: of the first solution, an unbiased sample);
            ``correct``: graded against ``gold`` (None without gold).
        finish: ``final`` / ``max_rounds`` / ``repetition`` / ``context`` (PSR); ``final`` / ``length`` (SRLM: how
            the first solution ended).
        rollbacks, rounds: the tie-rule rollbacks and every round's log (candidates, unique set, judge calls,
            scores, action, flags; see docs/architecture.md). SRLM: 0 and empty.
        model_id, seed, config: what produced it.
        solutions, scores, solution_finish: SRLM only: every sampled solution, its mean rubric score (None when no
            judgment parsed) and its finish reason.
        majority: PSR with ``psr.search.majority_filter`` only (else None): ``answer`` (the majority of the
            sampled solutions' boxed answers, None without one), ``votes`` (every solution's boxed answer, None where
            it boxed none), ``agrees`` (the final answer is that majority: the trajectory's pairs were kept) and
            ``correct`` (the majority graded against ``gold``; None without gold or majority).

    Version 2 added ``method`` and SRLM's fields; a version 1 row is read as PSR, or as SRLM when it holds
    ``solutions`` (then its ``finish`` list is ``solution_finish``).

    >>> t = Trajectory("p", "q", gold="5", steps=[Step([1, 0], "Step 1: \\\\boxed{5}", "eos", True)], finish="final")
    >>> Trajectory.from_json(t.to_json()) == t
    True
    """

    problem_id: str | int
    question: str = ""
    gold: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    correct: bool | None = None
    finish: str | None = None
    rollbacks: int = 0
    rounds: list[dict] = field(default_factory=list)
    model_id: str = ""
    seed: int | None = None
    config: dict = field(default_factory=dict)
    method: Method = "psr"
    solutions: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    solution_finish: list[str | None] = field(default_factory=list)
    majority: dict | None = None

    VERSION = 2
    _SPEC = {
        "method": ("method", False),
        "problem_id": ("id", True),
        "question": ("str", False),
        "gold": ("str?", False),
        "prompt_ids": ("ids", False),
        "steps": ("list", False),
        "final_answer": ("str?", False),
        "correct": ("bool?", False),
        "finish": ("str?", False),
        "rollbacks": ("int", False),
        "rounds": ("list", False),
        "model_id": ("str", False),
        "seed": ("int?", False),
        "config": ("dict", False),
        "solutions": ("strs", False),
        "scores": ("nums", False),
        "solution_finish": ("list", False),
        "majority": ("dict?", False),
    }

    def __post_init__(self) -> None:
        if self.method not in ("psr", "srlm"):
            raise ValueError(f"method must be 'psr' or 'srlm', got {self.method!r}")

    def to_json(self) -> dict:
        row = {"version": self.VERSION, **{name: getattr(self, name) for name in self._SPEC}}
        row["steps"] = [s.to_json() for s in self.steps]
        if self.method == "psr":  # SRLM's fields stay out of PSR rows
            for name in ("solutions", "scores", "solution_finish"):
                del row[name]
        if self.majority is None:  # rows of searches without the majority filter stay as they were
            del row["majority"]
        return row

    @classmethod
    def from_json(cls, row, where: str = "") -> Trajectory:
        if isinstance(row, dict) and row.get("version", 1) == 1 and "solutions" in row and "method" not in row:
            # version 1 SRLM rows: no method, ``finish`` was the list of the solutions' finish reasons
            row = {**row, "method": "srlm", "solution_finish": row.get("finish") or [], "finish": None}
        f = _fields(row, where, "a trajectory", cls._SPEC, cls.VERSION)
        f["steps"] = [Step.from_json(s, _nested(where, "steps", k)) for k, s in enumerate(f.get("steps", []))]
        for k, r in enumerate(f.get("rounds", [])):
            _fields(r, _nested(where, "rounds", k), "a search round", _ROUND_SPEC, cls.VERSION)
        return cls(**f)

    @property
    def accepted(self) -> int:
        """Rounds that accepted a step."""
        return sum(1 for r in self.rounds if r["action"] in ("accept", "accept_unanimous"))


# -- the judged step pair ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgedStepPair:
    """A step pair whose better step is known: for EFT (judge training), judge accuracy and step DPO.

    Steps are the texts as a judge is shown them (``Step n: ...``, numbered by position). Its JSON is the plain
    step-pair row the step-DPO dataset reads (``prompt``, ``prefix_steps``, ``chosen``, ``rejected``,
    ``is_final``), plus ``rationale`` and ``source`` when set.

    Attributes:
        question: the problem; previous_steps: the accepted steps before the pair; better / worse: the two next
            steps; rationale: why the worse one is wrong (PRM800K's reason), or None; is_final: whether the steps
            end the solution (None: unknown, the dataset then looks for a ``\\boxed{}``); source: provenance
            (``file#row``), for messages.

    >>> p = JudgedStepPair("2 + 3 * 4?", ("Step 1: 3 * 4 = 12.",), "Step 2: 2 + 12 = 14.", "Step 2: 2 + 12 = 15.")
    >>> sorted(p.to_json()), JudgedStepPair.from_json(p.to_json()) == p
    (['chosen', 'prefix_steps', 'prompt', 'rejected', 'version'], True)
    """

    question: str
    previous_steps: tuple[str, ...]
    better: str
    worse: str
    rationale: str | None = None
    is_final: bool | None = None
    source: str = ""

    VERSION = 1
    # attribute -> (JSON key, kind, required): the JSON keys are the plain step-pair row's
    _KEYS = {
        "question": ("prompt", "str", True),
        "previous_steps": ("prefix_steps", "strs", False),
        "better": ("chosen", "str", True),
        "worse": ("rejected", "str", True),
        "rationale": ("rationale", "str?", False),
        "is_final": ("is_final", "bool?", False),
        "source": ("source", "str", False),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "previous_steps", tuple(self.previous_steps))

    def to_json(self) -> dict:
        row: dict = {"version": self.VERSION, "prompt": self.question, "prefix_steps": list(self.previous_steps),
                     "chosen": self.better, "rejected": self.worse}  # fmt: skip
        for name in ("rationale", "is_final"):
            if getattr(self, name) is not None:
                row[self._KEYS[name][0]] = getattr(self, name)
        if self.source:
            row["source"] = self.source
        return row

    @classmethod
    def from_json(cls, row, where: str = "") -> JudgedStepPair:
        spec = {key: (kind, required) for key, kind, required in cls._KEYS.values()}
        f = _fields(row, where, "a judged step pair", spec, cls.VERSION)
        return cls(**{name: f[key] for name, (key, _, _) in cls._KEYS.items() if key in f})


# -- the problem -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A problem for the search and evaluation.

    Attributes: ``id``; ``question``; ``answer``: the gold final answer, if known; ``reference_steps``: a reference
    solution in ``Step n:`` steps, if known (the built-in task).

    >>> Problem.from_json(Problem("arith-1", "2 + 2?", "4").to_json())
    Problem(id='arith-1', question='2 + 2?', answer='4', reference_steps=())
    """

    id: str
    question: str
    answer: str | None = None
    reference_steps: tuple[str, ...] = ()

    VERSION = 1
    _SPEC = {
        "id": ("id", True),
        "question": ("str", True),
        "answer": ("str?", False),
        "reference_steps": ("strs", False),
    }

    def to_json(self) -> dict:
        row = {"version": self.VERSION, "id": self.id, "question": self.question, "answer": self.answer}
        if self.reference_steps:
            row["reference_steps"] = list(self.reference_steps)
        return row

    @classmethod
    def from_json(cls, row, where: str = "") -> Problem:
        f = _fields(row, where, "a problem", cls._SPEC, cls.VERSION)
        return cls(str(f["id"]), f["question"], f.get("answer"), tuple(f.get("reference_steps", ())))


def read_records(rows: Iterable[tuple[str, dict]], cls) -> Iterator:
    """``cls.from_json`` over ``(where, row)`` pairs (e.g. :meth:`~openrlhf_psr.io.ShardStore.read_located`)."""
    for where, row in rows:
        yield cls.from_json(row, where)
