"""The oracle judge: prefers the candidate step whose arithmetic is right, checked exactly, not by a model.

It is the honest upper bound of the judge arms (issue 13) and a rule-based verifier a user can reuse:

- **Claims.** Every ``a + b = c`` in a step (operators ``+ - * / × ÷ ·`` and LaTeX ``\\times \\cdot \\div``, chains
  such as ``2 * 3 + 4 = 10``, thousands separators, decimals) is checked exactly with fractions; a decimal
  right-hand side may be the left side rounded to its shown digits. Anything else (parentheses, words, units
  between numbers) is not a claim and is ignored, never guessed at. The step's text is only matched by regular
  expressions: never evaluated.
- **State** (built-in task, :func:`openrlhf_psr.data.arith.trace_question`): the question is recomputed, and the
  step's result (its last claim's value, or its ``\\boxed{}``) must be a running total the solution has not
  reached yet. A correct equation on the wrong numbers gives a value that is none of the problem's quantities; a
  running total reached from numbers the problem does not hold is a coincidence, not checked (``unknown``).
- **Answer.** A ``\\boxed{}`` must equal the gold answer (the comparison's ``gold``, else the recomputed answer).

Each candidate is labelled ``right`` (checked and consistent), ``wrong`` (a false claim, a wrong answer, or a
result that is none of the problem's quantities) or ``unknown`` (nothing to check). Right beats unknown beats wrong;
equal labels abstain (``p_a`` 0.5). Outside the built-in task "right" only means "its equations hold", which says
little about a step (on 237 human-labelled PRM800K pairs, right-versus-unknown verdicts were right 60% of the time,
right-versus-wrong ones 100%), so there, by default, only right-versus-wrong pairs are decided.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from openrlhf_psr.judges.base import Comparison, Judgment, PairwiseJudge
from openrlhf_psr.records import Verdict
from openrlhf_psr.steps import extract_boxed, strip_marker

Label = Literal["right", "unknown", "wrong"]
_RANK = {"wrong": 0, "unknown": 1, "right": 2}

# Numbers are capped at 300 digits and never start inside a longer run of digits: model text is untrusted, and
# Fraction() of a 5,000-digit string raises (Python's int-string limit) while "1e30000000" would take minutes.
_NUM = r"(?<![\d.,])\$?(?:\d{1,3}(?:,\d{3}){1,100}(?!\d)|\d{1,300}(?!\d))(?:\.\d{1,300}(?!\d))?"
_OP = r"(?:[-+*/×÷·−]|\\times|\\cdot|\\div|\bx\b)"
_CLAIM = re.compile(rf"(?P<lhs>{_NUM}(?:\s*{_OP}\s*{_NUM})+)\s*=\s*(?P<rhs>-?{_NUM})")
_TOKEN = re.compile(rf"{_NUM}|{_OP}")
_CANONICAL_OP = {"×": "*", "·": "*", "x": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/", "−": "-"}


@dataclass(frozen=True)
class Claim:
    text: str
    value: Fraction  # the left side, computed exactly
    stated: Fraction  # the right side as written
    holds: bool
    operands: tuple[Fraction, ...] = ()
    operators: tuple[str, ...] = ()  # each written as + - * /, in order


@dataclass(frozen=True)
class StepCheck:
    label: Label
    reason: str
    result: Fraction | None = None  # the step's result: its last claim's right side, else its boxed answer


def _number(text: str) -> Fraction:
    return Fraction(text.replace("$", "").replace(",", ""))


def _evaluate(tokens: list[str]) -> Fraction | None:
    """``n (op n)*`` with * and / before + and -; None on division by zero."""
    terms: list[Fraction] = []
    signs: list[int] = []
    current, sign = _number(tokens[0]), 1
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        value = _number(operand)
        if op in ("*", "×", "·", "x", "\\times", "\\cdot"):
            current *= value
        elif op in ("/", "÷", "\\div"):
            if value == 0:
                return None
            current /= value
        else:
            terms.append(current)
            signs.append(sign)
            current, sign = value, (1 if op == "+" else -1)
    terms.append(current)
    signs.append(sign)
    return sum((s * t for s, t in zip(signs, terms, strict=True)), Fraction(0))


def _holds(value: Fraction, stated_text: str) -> bool:
    stated = _number(stated_text.lstrip("-")) * (-1 if stated_text.startswith("-") else 1)
    if value == stated:
        return True
    digits = len(stated_text.partition(".")[2]) if "." in stated_text else 0
    return digits > 0 and round(value, digits) == stated  # a rounded decimal result


def arithmetic_claims(text: str) -> list[Claim]:
    """The checkable equations of a step, each computed exactly.

    >>> [(c.text, c.holds) for c in arithmetic_claims("Step 2: 3 * 4 = 12, so 10 + 12 = 23 apples.")]
    [('3 * 4 = 12', True), ('10 + 12 = 23', False)]
    >>> [c.holds for c in arithmetic_claims("Then 2 + 3 * 4 = 14 and 1,000 / 8 = 125 and 10 / 3 = 3.33.")]
    [True, True, True]
    >>> [c.holds for c in arithmetic_claims("$4 \\\\times 6 = 24$, $24 \\\\div 5 = 4.8$, \\\\frac{1}{2} + 1 = 9")]
    [True, True]
    >>> arithmetic_claims("Ava has (3 + 4) = 7 and -2 + 5 = 3 and x = 4")  # not claims we can read exactly
    []
    """
    body = strip_marker(text)
    claims = []
    for m in _CLAIM.finditer(body):
        before = body[: m.start()]
        after = body[m.end() :]
        if before.rstrip().endswith(("(", ")", "{", "}", "-", "−", "+", "*", "/", "×", "÷", "·", "^", "=")) or (
            before[-1:].isalnum() or before[-1:] in (".", ",", "_", "\\")
        ):
            continue  # the expression starts earlier than we can read (a sign, a bracket, a variable)
        if re.match(r"\s*(?:[-+*/×÷·^(%]|\.\d|/\d|\d)", after) or re.match(r"\s*\)", after):
            continue  # the right side goes on (an expression, a fraction, a percentage)
        tokens = [t.replace("−", "-") for t in _TOKEN.findall(m.group("lhs"))]
        value = _evaluate(tokens)
        if value is None:
            continue
        stated_text = m.group("rhs").replace("$", "").replace(",", "")
        operands = tuple(_number(t) for t in tokens[::2])
        operators = tuple(_CANONICAL_OP.get(t, t) for t in tokens[1::2])
        claims.append(Claim(m.group(0), value, _signed(stated_text), _holds(value, stated_text), operands, operators))
    return claims


def slips_by_operator(texts: Iterable[str]) -> dict[str, dict[str, int]]:
    """How often each operation a model writes is false: over every readable claim of ``texts`` (one model's
    answers), ``{operator: {"claims": n, "false": k, "high": h}}`` for one-operation claims ``a op b = c``, and
    ``"chain"`` for longer ones; ``high`` counts the false claims whose stated result is above the true one (the rest
    are below). It says where a model's wrong answers come from and which kind of step a training stage fixed or
    broke (a stage that fixes subtractions while breaking additions nets little), and whether a stage taught the
    operation or only moved its bias (additions slipping high before, low after). A text it cannot read (hostile
    numbers) is skipped.

    >>> counts = slips_by_operator(["Step 1: 40 - 37 = 15.", "3 + 4 = 7, 2 × 3 = 6 and 2 * 3 + 1 = 6", "no claim"])
    >>> counts["-"], counts["chain"]
    ({'claims': 1, 'false': 1, 'high': 1}, {'claims': 1, 'false': 1, 'high': 0})
    >>> counts["+"] == counts["*"] == {"claims": 1, "false": 0, "high": 0}
    True
    """
    counts: dict[str, dict[str, int]] = {}
    for text in texts:
        try:
            claims = arithmetic_claims(text)
        except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
            continue
        for claim in claims:
            kind = claim.operators[0] if len(claim.operators) == 1 else "chain"
            cell = counts.setdefault(kind, {"claims": 0, "false": 0, "high": 0})
            cell["claims"] += 1
            cell["false"] += not claim.holds
            cell["high"] += not claim.holds and claim.stated > claim.value
    return counts


def _signed(text: str) -> Fraction:
    return -_number(text[1:]) if text.startswith("-") else _number(text)


_PLAIN_NUMBER = re.compile(r"-?\d{1,300}(?:\.\d{1,300})?(?:/\d{1,300})?")


def _as_number(text: str | None) -> Fraction | None:
    """A boxed answer as an exact number when it is a plain decimal or fraction (no exponent: ``1e30000000``
    would take minutes), else None."""
    if text is None:
        return None
    cleaned = text.strip().strip("$").replace(",", "").replace("\\!", "").strip()
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _same_answer(boxed: str, expected: str) -> bool:
    a, b = _as_number(boxed), _as_number(expected)
    if a is not None and b is not None:
        return a == b
    return boxed.strip().replace(" ", "") == expected.strip().replace(" ", "")


def step_result(text: str) -> Fraction | None:
    """The value a step arrives at: its last claim's right side, else its boxed answer when numeric."""
    claims = arithmetic_claims(text)
    return claims[-1].stated if claims else _as_number(extract_boxed(text))


def check_step(question: str, previous_steps: Sequence[str], step: str, gold: str | None = None) -> StepCheck:
    """Label one candidate next step (see the module docstring).

    >>> from openrlhf_psr.data.arith import make_problem
    >>> p = make_problem(0, 0)
    >>> check_step(p.question, p.steps[:1], p.steps[1]).label
    'right'
    >>> import random
    >>> from openrlhf_psr.data.sft import corrupt_step
    >>> check_step(p.question, p.steps[:1], corrupt_step(p.steps[1], random.Random(0))).label
    'wrong'
    >>> check_step("What is 2 + 2?", (), "Step 1: 2 + 2 = 4. The answer is \\\\boxed{4}.", gold="5").label
    'wrong'
    """
    from openrlhf_psr.data.arith import trace_question

    claims = arithmetic_claims(step)
    for claim in claims:
        if not claim.holds:
            return StepCheck("wrong", f"false claim {claim.text!r} (left side is {claim.value})")
    trace = trace_question(question)
    boxed = extract_boxed(step)
    expected = gold if gold is not None else (str(trace.totals[-1]) if trace else None)
    if boxed is not None and expected is not None and not _same_answer(boxed, expected):
        return StepCheck("wrong", f"boxed answer {boxed!r} is not {expected!r}")
    result = claims[-1].stated if claims else _as_number(boxed)
    if trace is None:
        if claims or (boxed is not None and expected is not None):
            return StepCheck("right", f"{len(claims)} claim(s) hold" + (", answer right" if boxed else ""), result)
        return StepCheck("unknown", "no arithmetic claim to check", result)
    if result is None:
        return StepCheck("unknown", "no result to check", None)
    if result not in trace.values:
        return StepCheck("wrong", f"result {result} is none of the problem's quantities", result)
    reached = _reached(trace.totals, previous_steps)
    if result in trace.totals[reached + 1 :]:
        known = set(trace.values) | {c.stated for step in previous_steps for c in arithmetic_claims(step)}
        for claim in claims:  # a total reached from numbers the problem does not hold is a coincidence
            stray = [x for x in claim.operands if x not in known]
            if stray:
                return StepCheck("unknown", f"{claim.text!r} uses {stray[0]}, not a quantity of the problem", result)
            known.add(claim.stated)
        return StepCheck("right", f"result {result} is a running total not reached before", result)
    return StepCheck("unknown", f"result {result} makes no progress (an amount or an earlier total)", result)


def _reached(totals: Sequence[int], previous_steps: Sequence[str]) -> int:
    """How far the accepted steps got: the index of the latest running total they arrived at, in order."""
    reached = 0
    for step in previous_steps:
        result = step_result(step)
        later = [k for k in range(reached + 1, len(totals)) if totals[k] == result]
        if later:
            reached = later[0]
    return reached


def _safe_check(c: Comparison, step: str) -> StepCheck:
    """:func:`check_step`, with a step it cannot read (hostile numbers) labelled unknown instead of crashing."""
    try:
        return check_step(c.question, c.previous_steps, step, c.gold)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        return StepCheck("unknown", f"unreadable step ({type(exc).__name__})")


class OracleJudge(PairwiseJudge):
    """Decides by :func:`check_step` on both candidates; never calls a model.

    Args:
        decide_unknown: when True a checked-right step beats an uncheckable one and an uncheckable one beats a
            wrong one; when False only right-versus-wrong pairs are decided and the rest abstain. Default (None):
            True for questions of the built-in task (whose state is checked too), False for any other.
    """

    name = "oracle"

    def __init__(self, *, decide_unknown: bool | None = None, chat_template: bool = True):
        self.decide_unknown = decide_unknown  # chat_template: accepted like every judge's, unused (no prompt)

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        out = []
        for c in comparisons:
            a = _safe_check(c, c.step_a)
            b = _safe_check(c, c.step_b)
            loose = self.decide_unknown
            if loose is None:
                from openrlhf_psr.data.arith import trace_question

                loose = trace_question(c.question) is not None
            decided = loose or {a.label, b.label} == {"right", "wrong"}
            winner = None
            if decided and _RANK[a.label] != _RANK[b.label]:
                winner = "A" if _RANK[a.label] > _RANK[b.label] else "B"
            p_a = 1.0 if winner == "A" else 0.0 if winner == "B" else 0.5
            out.append(Judgment(Verdict(winner, p_a=p_a), raw=f"A: {a.label} ({a.reason}); B: {b.label} ({b.reason})"))
        return out
