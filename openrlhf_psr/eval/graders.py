"""Two graders, both reported: math-verify, and a grader written here in the manner of the Qwen2.5-Math harness
(last ``\\boxed{}``; normalised string equality; numeric equality with a relative tolerance, percent variants;
element-wise lists, tuples, intervals and sets; symbolic equality with sympy). Disagreements are listed.

Model output is untrusted: it is parsed, never evaluated, and every grading runs in a forked child process that is
killed at the time limit, so a hostile answer (a huge power tower, deeply nested LaTeX) is graded wrong instead of
hanging the evaluation.
"""

from __future__ import annotations

import math
import multiprocessing
import re
from collections.abc import Sequence

TIME_LIMIT_S = 5.0
REL_TOL = 1e-4

_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNITS = re.compile(
    r"\s*(?:dollars?|cents?|units?|degrees?|cm|km|m|meters?|inches|inch|feet|ft|miles?|hours?|minutes?|seconds?|"
    r"days?|weeks?|years?|pounds?|kg|g|sq\.?\s*units?|square\s+\w+)\s*$"
)


def normalize(answer: str) -> str:
    """Canonical text of an answer.

    >>> normalize("\\\\$1,000.50"), normalize("x = \\\\dfrac12"), normalize("45^\\\\circ"), normalize("\\\\text{(B)}")
    ('1000.5', '\\\\frac{1}{2}', '45', '(b)')
    """
    s = str(answer).strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    while True:
        unwrapped = _TEXT.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = _UNITS.sub("", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
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


def _math_verify(prediction: str | None, gold: str | None) -> bool:
    from openrlhf_psr.grading import is_correct

    return bool(is_correct(prediction, gold, timeout_s=int(TIME_LIMIT_S)))


def _grade_worker(conn, items, start):
    """Child process: grade items[start:], sending (index, math_verify, qwen) after each one."""
    for k in range(start, len(items)):
        prediction, gold = items[k]
        try:
            result = (
                (_math_verify(prediction, gold), qwen_equal(prediction, gold)) if prediction and gold else (False,) * 2
            )
        except Exception:
            result = (False, False)
        conn.send((k, *result))
    conn.close()


def _grade_many(items: list[tuple[str | None, str | None]], time_limit_s: float) -> list[dict]:
    """One forked worker grades the items in order; an item that exceeds the time limit gets its worker killed,
    is graded wrong (``timed_out``), and a new worker continues from the next item."""
    ctx = multiprocessing.get_context("fork")
    out: list[dict | None] = [None] * len(items)
    start = 0
    while start < len(items):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_grade_worker, args=(child, items, start), daemon=True)
        proc.start()
        child.close()
        while start < len(items):
            if not parent.poll(time_limit_s):
                out[start] = {"math_verify": False, "qwen": False, "timed_out": True}
                start += 1
                break
            try:
                k, mv, qw = parent.recv()
            except EOFError:  # the worker died on this item
                out[start] = {"math_verify": False, "qwen": False, "timed_out": True}
                start += 1
                break
            out[k] = {"math_verify": mv, "qwen": qw, "timed_out": False}
            start = k + 1
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    return out  # type: ignore[return-value]


def grade(prediction: str | None, gold: str | None, time_limit_s: float = TIME_LIMIT_S) -> dict[str, bool]:
    """Both graders on one answer, in a child process killed at the time limit (then both are False)."""
    return _grade_many([(prediction, gold)], time_limit_s)[0]


def grade_all(predictions: Sequence[str | None], golds: Sequence[str | None], time_limit_s=TIME_LIMIT_S) -> dict:
    """Grades, accuracy per grader, and the list of disagreements."""
    grades = _grade_many(list(zip(predictions, golds, strict=True)), time_limit_s)
    n = len(grades)
    disagreements = [
        {"index": k, "prediction": p, "gold": g, **gr}
        for k, (p, g, gr) in enumerate(zip(predictions, golds, grades, strict=True))
        if gr["math_verify"] != gr["qwen"]
    ]
    return {
        "grades": grades,
        "accuracy": {k: sum(g[k] for g in grades) / n if n else None for k in ("math_verify", "qwen")},
        "timed_out": sum(g["timed_out"] for g in grades),
        "disagreements": disagreements,
    }
