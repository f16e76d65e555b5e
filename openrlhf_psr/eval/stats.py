"""Confidence intervals for the accuracies the report compares (pure; no numpy).

An accuracy of 6.5% on 24 problems and on 2,000 problems are different claims: every accuracy in a report comes
with its Wilson score interval (Wilson 1927), which, unlike the normal approximation, stays inside [0, 1] and is
sensible at 0% and 100% and for small n.

Two models evaluated on the *same* problems are compared by a paired test as well: McNemar's exact test on the
problems whose answer changed (McNemar 1947). It decides gains that two overlapping intervals cannot, because
the problems both models solve (or both miss) carry no information about the difference.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n``; None when ``n`` is 0.

    >>> lo, hi = wilson_interval(13, 200)  # 6.5% of 200
    >>> round(lo, 4), round(hi, 4)
    (0.0384, 0.108)
    >>> wilson_interval(0, 24)[0], round(wilson_interval(0, 24)[1], 4)  # 0 of 24 is not "0%, exactly"
    (0.0, 0.138)
    >>> wilson_interval(0, 0) is None
    True
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n], got {successes} of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 from rounding
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split at least this uneven between the problems that went
    wrong -> right (``gained``) and right -> wrong (``lost``) is if either direction were equally likely (a
    binomial test at 1/2 on the ``gained + lost`` changed problems).

    >>> round(mcnemar_exact(76, 37), 4)  # one oracle iteration on 1,000 problems (docs/evidence.md)
    0.0003
    >>> mcnemar_exact(3, 0), mcnemar_exact(5, 5), mcnemar_exact(0, 0)
    (0.25, 1.0, 1.0)
    """
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0, got gained={gained}, lost={lost}")
    changed = gained + lost
    tail = sum(math.comb(changed, k) for k in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**changed)


def paired_change(before: dict, after: dict) -> dict:
    """How the answers of the problems graded in both ``before`` and ``after`` (``{problem id: correct}``)
    changed, with :func:`mcnemar_exact`'s p-value.

    >>> paired_change({"a": False, "b": True, "c": False, "d": True}, {"a": True, "b": True, "c": True, "e": False})
    {'n': 3, 'gained': 2, 'lost': 0, 'p_value': 0.5}
    """
    common = [k for k in before if k in after]
    gained = sum(1 for k in common if after[k] and not before[k])
    lost = sum(1 for k in common if before[k] and not after[k])
    return {"n": len(common), "gained": gained, "lost": lost, "p_value": mcnemar_exact(gained, lost)}


def format_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    """``"6.5 [3.8, 10.8]"`` (percent), ``"-"`` without a value.

    >>> format_interval(0.065, (0.0384, 0.108))
    '6.5 [3.8, 10.8]'
    >>> format_interval(None, None)
    '-'
    """
    if value is None:
        return "-"
    if interval is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def percent_error_bars(cells: list[dict]) -> tuple[list[float], list[list[float]]]:
    """Plot values in percent and matplotlib's ``yerr`` (below, above) from ``{"value", "ci95"}`` cells; a cell
    without a value is NaN, one without an interval has no bar.

    >>> percent_error_bars([{"value": 0.5, "ci95": [0.25, 0.75]}, {"value": 0.1}, {}])
    ([50.0, 10.0, nan], [[25.0, 0.0, 0.0], [25.0, 0.0, 0.0]])
    """
    ys = [100 * c["value"] if c.get("value") is not None else math.nan for c in cells]
    low = [y - 100 * c["ci95"][0] if c.get("ci95") else 0.0 for y, c in zip(ys, cells, strict=True)]
    high = [100 * c["ci95"][1] - y if c.get("ci95") else 0.0 for y, c in zip(ys, cells, strict=True)]
    return ys, [low, high]
