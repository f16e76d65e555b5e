"""Grading throughput and overheads: the process pool against grading in this process with no deadline.

    .venv/bin/python bench/bench_grading.py [--answers 200] [--workers N]

Grades MATH500 gold answers (``../shared/data/eval``; the built-in task without it) against themselves and against
the next problem's gold (so half are right), with both graders, three ways, measured in the same run:
in this process, one answer after another, no deadline (the baseline: what a thread would do, unbounded); through
the pool in one batch (evaluation); one ``is_correct`` call at a time (the search). Prints answers/s, the ratios to
the baseline, the pool's start-up time, and the extra latency of one call.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: min(4, cores))")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    from openrlhf_psr import grading
    from openrlhf_psr.grading.graders import qwen_equal

    if (SHARED / "math500" / "test.jsonl").exists():
        from openrlhf_psr.eval.benchmarks import load_benchmark

        golds = [p.answer for p in load_benchmark("math500", root=str(SHARED), limit=args.answers // 2, seed=0)]
    else:
        from openrlhf_psr.data.problems import load_problems

        golds = [p.answer for p in load_problems("builtin:arith?seed=7", limit=args.answers // 2)]
    pairs = [(g, g) for g in golds] + [(golds[(k + 1) % len(golds)], g) for k, g in enumerate(golds)]
    n = len(pairs)

    start = time.perf_counter()
    baseline = [(grading.math_verify_equal(p, g), qwen_equal(p, g)) for p, g in pairs]
    baseline_s = time.perf_counter() - start

    def fresh_pool() -> tuple[grading.GradingPool, float]:
        """A new pool, started: its graders have cold caches, like the baseline had (math-verify caches parses)."""
        pool = grading.GradingPool(size=args.workers)
        start = time.perf_counter()
        pool.grade([("1", "1")] * pool.size)
        return pool, time.perf_counter() - start

    pool, startup_s = fresh_pool()
    start = time.perf_counter()
    records = pool.grade(pairs)
    batch_s = time.perf_counter() - start
    pool.close()
    pool, _ = fresh_pool()
    start = time.perf_counter()
    singles = [pool.grade([pair])[0] for pair in pairs]
    single_s = time.perf_counter() - start
    pool.close()

    agree = sum((r["math_verify"], r["qwen"]) == b for r, b in zip(records, baseline, strict=True))
    timeouts = sum(bool(r["timeouts"]) for r in records + singles)
    print(f"{n} answers x 2 graders, pool of {pool.size} supervisors")
    print(f"in-process, serial, no deadline: {n / baseline_s:8.1f} answers/s")
    print(f"pool, one batch:                 {n / batch_s:8.1f} answers/s  ratio {baseline_s / batch_s:.2f}x")
    print(f"pool, one answer per call:       {n / single_s:8.1f} answers/s  ratio {baseline_s / single_s:.2f}x")
    print(f"extra latency per call: {1000 * (single_s - baseline_s) / n:.1f} ms; pool start-up: {startup_s:.2f} s")
    print(f"verdicts equal to the baseline: {agree}/{n}; timeouts: {timeouts}")


if __name__ == "__main__":
    main()
