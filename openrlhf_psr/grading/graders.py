"""Two graders, both reported: math-verify, and a grader written here in the manner of the Qwen2.5-Math harness
(last ``\\boxed{}``; normalised string equality; numeric equality with a relative tolerance, percent variants;
element-wise lists, tuples, intervals and sets; symbolic equality with sympy). Disagreements are listed.

Model output is untrusted: it is parsed, never evaluated, and every grading runs in the pool of
:mod:`openrlhf_psr.grading.pool`, each grader under its own deadline, so a hostile answer (a huge power tower,
deeply nested LaTeX) is a recorded timeout of that grader instead of a hung evaluation, and the other grader's
verdict stands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from openrlhf_psr.grading import pool as grading
from openrlhf_psr.grading.pool import GRADERS

TIME_LIMIT_S = grading.DEADLINE_S
REL_TOL = 1e-4

_TEXT = re.compile(r"\\(?:text|textrm|textbf|mathrm|mbox)\{([^{}]*)\}")
# A trailing text group after the value is a unit, whatever its words (the Qwen harness drops a trailing \text{}).
_TRAILING_TEXT = re.compile(r"^(?P<value>.*\S)\s*\\(?:text|textrm|mbox)\{[^{}]*\}$")
_TRAILING_MATHRM = re.compile(r"^(?P<value>.*\S)\s*\\mathrm\{\s*[a-zA-Z]{2,}[^{}]*\}$")  # \mathrm{cm}, not \mathrm{e}
# Inside text, a number followed by words is a quantity: "18 apples", "5 square feet", "12 cm^2".
_QUANTITY = re.compile(
    r"(?P<value>[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)%?)\s+(?P<unit>[a-zA-Z]+\.?(?:\^\{?\d\}?)?(?:\s+[a-zA-Z]+\.?)*)\s*"
)
_MATH_WORDS = {"i", "e", "pi", "x", "y", "z", "n", "k"}  # a variable or constant, not a unit
_UNITS = re.compile(
    r"\s*(?:dollars?|cents?|units?|degrees?|cm|km|m|meters?|inches|inch|feet|ft|miles?|hours?|minutes?|seconds?|"
    r"days?|weeks?|years?|pounds?|kg|g|sq\.?\s*units?|square\s+\w+)\s*$"
)


def _text_content(m: re.Match) -> str:
    """The text of a ``\\text{}`` group; a quantity in it ("18 apples") is its number."""
    content = m.group(1)
    q = _QUANTITY.fullmatch(content.strip())
    if q and q.group("unit").split()[0].rstrip(".").lower() not in _MATH_WORDS:
        return q.group("value")
    return content


def _closing(s: str, start: int, opening: str, closing: str) -> int:
    """Index of the delimiter that closes the one at ``start`` (-1 when unbalanced)."""
    depth = 0
    k = start
    while k < len(s):
        if s.startswith(opening, k):
            depth += 1
            k += len(opening)
            continue
        if s.startswith(closing, k):
            depth -= 1
            if depth == 0:
                return k
            k += len(closing)
            continue
        k += 1
    return -1


def strip_redundant_braces(s: str) -> str:
    """Remove braces around the whole answer, repeatedly, as the Qwen harness's comparison ignores them; a braced
    single element (``\\{18\\}``) is that element there too, while ``\\{1, 2\\}`` stays a set.

    >>> strip_redundant_braces("{{18}}"), strip_redundant_braces("\\\\{18\\\\}"), strip_redundant_braces("{1}{2}")
    ('18', '18', '{1}{2}')
    >>> strip_redundant_braces("\\\\{1,2\\\\}"), strip_redundant_braces("{\\\\frac{1}{2}}")
    ('\\\\{1,2\\\\}', '\\\\frac{1}{2}')
    """
    while True:
        s = s.strip()
        if s.startswith("{") and _closing(s, 0, "{", "}") == len(s) - 1:
            s = s[1:-1]
        elif (
            s.startswith("\\{")
            and s.endswith("\\}")
            and _closing(s, 0, "\\{", "\\}") == len(s) - 2
            and len(_split_top(s[2:-2])) == 1
        ):
            s = s[2:-2]
        else:
            return s


def normalize(answer: str) -> str:
    """Canonical text of an answer.

    >>> normalize("\\\\$1,000.50"), normalize("x = \\\\dfrac12"), normalize("45^\\\\circ"), normalize("\\\\text{(B)}")
    ('1000.5', '\\\\frac{1}{2}', '45', '(b)')
    >>> normalize("\\\\text{18 apples}"), normalize("18\\\\text{ cm}"), normalize("18\\\\mbox{ cm}^2")
    ('18', '18', '18')
    """
    s = str(answer).strip().replace("\n", " ")
    s = s.replace("\\!", "").replace("\\,", " ").replace("\\;", " ").replace("\\ ", " ").replace("~", " ")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = re.sub(r"(\\(?:text|textrm|mbox|mathrm)\{[^{}]*\})\s*\^\s*\{?\d\}?$", r"\1", s)  # "18\text{ cm}^2"
    for trailing in (_TRAILING_TEXT, _TRAILING_MATHRM):
        m = trailing.fullmatch(s)
        if m and m.group("value").strip() not in ("", "=", "-"):
            s = m.group("value")
    while True:
        unwrapped = _TEXT.sub(_text_content, s)
        if unwrapped == s:
            break
        s = unwrapped
    s = _UNITS.sub("", s)
    s = strip_redundant_braces(s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = strip_redundant_braces(s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", s) and "," in s and re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")  # thousands separators, not a list
    if re.fullmatch(r"-?\d+\.\d*", s):
        s = s.rstrip("0").rstrip(".") or "0"
    return s.lower() if re.fullmatch(r"\(?[a-e]\)?", s.lower()) else s


def _number(s: str) -> float | None:
    s = s.rstrip("%")
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s) or re.fullmatch(
        r"(-?)(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", s
    )
    if m and float(m.group(3)) != 0:
        return (-1 if m.group(1) else 1) * float(m.group(2)) / float(m.group(3))
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-8)


def _split_top(s: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _container(s: str) -> tuple[str, list[str]] | None:
    """(kind, elements) for a list/tuple/interval/set answer, else None."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _split_top(s[2:-2])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        return s[0] + s[-1], _split_top(s[1:-1])
    parts = _split_top(s)
    return ("list", parts) if len(parts) > 1 else None


def _without_brackets(p: str, g: str) -> bool:
    """The Qwen harness's comparison with braces and parentheses removed (``{{18}}`` is 18), keeping ``[1,2)`` and
    ``(1,2)`` apart: the outer pair is dropped only when the two kinds of bracket cannot be an interval mismatch.

    >>> _without_brackets("{(18)}", "18"), _without_brackets("[1,2)", "(1,2)"), _without_brackets("(1,2)", "[1,2]")
    (True, False, False)
    """
    if (p[:1] == "[" and p[-1:] == "]" and not (g[:1] == "(" and g[-1:] == ")")) or (
        p[:1] == "(" and p[-1:] == ")" and not (g[:1] == "[" and g[-1:] == "]")
    ):
        p, g = p.strip("[]()"), g.strip("[]()")
    return re.sub(r"[{}()]", "", p).lower() == re.sub(r"[{}()]", "", g).lower()


def qwen_equal(prediction: str | None, gold: str | None) -> bool:
    """Equality in the manner of the Qwen2.5-Math harness (no time limit here: see :func:`grade`)."""
    if prediction is None or gold is None:
        return False
    p, g = normalize(prediction), normalize(gold)
    if p == g:
        return True
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        return (
            any(_close(pn, x) for x in (gn, gn / 100, gn * 100))
            if g.endswith("%") or p.endswith("%")
            else _close(pn, gn)
        )
    if _without_brackets(p, g):
        return True
    pc, gc = _container(p), _container(g)
    if pc and gc:
        (pk, pe), (gk, ge) = pc, gc
        if len(pe) != len(ge):
            return False
        if "set" in (pk, gk) or (pk == gk == "list"):
            remaining = list(ge)
            for x in pe:
                match = next((y for y in remaining if qwen_equal(x, y)), None)
                if match is None:
                    return False
                remaining.remove(match)
            return True
        return pk == gk and all(qwen_equal(x, y) for x, y in zip(pe, ge, strict=True))
    return _symbolic_equal(p, g)


def _symbolic_equal(p: str, g: str) -> bool:
    try:
        import sympy
        from latex2sympy2_extended import latex2sympy

        a, b = latex2sympy(p), latex2sympy(g)
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def grade(prediction: str | None, gold: str | None, time_limit_s: float = TIME_LIMIT_S) -> dict:
    """Both graders on one answer, each in the grading pool under its own deadline:
    ``{"math_verify": bool | None, "qwen": bool | None, "timeouts": [...]}`` (None: no gold, or that grader timed out).
    """
    return grading.grade_answer(prediction, gold, deadline_s=time_limit_s)


def grade_all(
    predictions: Sequence[str | None], golds: Sequence[str | None], time_limit_s=TIME_LIMIT_S, progress=False
) -> dict:
    """Grades, accuracy per grader (a timeout counts as wrong), timeouts per grader, and the disagreements (answers
    where both graders gave a verdict and the verdicts differ)."""
    pairs = list(zip(predictions, golds, strict=True))
    grades = grading.grade_pairs(pairs, deadline_s=time_limit_s, progress=progress)
    known = [g for (_, gold), g in zip(pairs, grades, strict=True) if gold is not None]
    disagreements = [
        {"index": k, "prediction": p, "gold": g, **gr}
        for k, ((p, g), gr) in enumerate(zip(pairs, grades, strict=True))
        if gr["math_verify"] is not None and gr["qwen"] is not None and gr["math_verify"] != gr["qwen"]
    ]
    timeouts = {name: sum(name in g["timeouts"] for g in grades) for name in GRADERS}
    return {
        "grades": grades,
        "accuracy": {k: sum(g[k] is True for g in known) / len(known) if known else None for k in GRADERS},
        "timeouts": timeouts,
        "timed_out": sum(bool(g["timeouts"]) for g in grades),  # answers with at least one timeout
        "disagreements": disagreements,
    }
