"""Answer grading with math-verify under a time limit. Model output is untrusted: it is parsed, never evaluated.

math-verify's own timeouts use ``signal.alarm``, which works only in the main thread; elsewhere they are turned off
and the caller must bound the time another way (the evaluation module runs graders in a worker process).
"""

from __future__ import annotations

import threading

MAX_ANSWER_CHARS = 1000  # longer "answers" are hostile or broken; grading them is not worth a timeout


def is_correct(prediction: str | None, gold: str | None, *, timeout_s: int = 5) -> bool | None:
    """True/False when a gold answer is known, None when it is not.

    >>> is_correct("\\\\frac{1}{2}", "0.5"), is_correct("7", "8"), is_correct("3", None), is_correct(None, "3")
    (True, False, None, False)
    """
    if gold is None:
        return None
    if prediction is None or len(prediction) > MAX_ANSWER_CHARS:
        return False
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    limit = timeout_s if main else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=limit)
        pred_parsed = parse(f"${prediction}$", parsing_timeout=limit)
        if not gold_parsed or not pred_parsed:
            return prediction.strip() == gold.strip()
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except Exception:  # a timeout or a parser failure on hostile text is a wrong answer, not a crash
        return False
