"""Named pause points, so that kill-and-resume tests kill a run at an exact state instead of racing a timer.

A stage that reaches a point named in ``OPENRLHF_PSR_PAUSE_AT`` (comma-separated) prints ``[openrlhf-psr] paused
at <point>`` to stdout and sleeps until it is killed. The points: ``search-commit`` (after the search's first
shard commit), ``ckpt-partial:<tag>`` (inside DeepSpeed's checkpoint write, after its first file),
``ckpt-complete:<tag>`` (after a checkpoint is marked complete), ``eval-part:<part>`` (after the evaluation wrote
a finished part, e.g. ``benchmark-arith``). Unset, as always outside tests, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import time

ENV = "OPENRLHF_PSR_PAUSE_AT"


def requested(point: str) -> bool:
    """Whether ``point`` is one of the pause points named in the environment.

    >>> os.environ[ENV] = "eval-part:benchmark-arith, ckpt-complete:global_step1"
    >>> requested("ckpt-complete:global_step1"), requested("ckpt-complete:global_step2")
    (True, False)
    >>> del os.environ[ENV]
    """
    wanted = os.environ.get(ENV, "")
    return bool(wanted) and point in {p.strip() for p in wanted.split(",")}


def pause_at(point: str) -> None:
    """Sleep until killed when ``point`` is requested; return at once otherwise."""
    if not requested(point):
        return
    print(f"[openrlhf-psr] paused at {point} ({ENV})", flush=True)
    while True:
        time.sleep(3600)
