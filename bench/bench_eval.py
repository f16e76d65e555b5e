"""Evaluation throughput: batched greedy generation against one problem at a time, on the same engine.

    .venv/bin/python bench/bench_eval.py [--benchmark gsm8k] [--problems 32] [--max-tokens 256]

Prints problems/s of both (grading included), the ratio, and peak RSS of this process and of vLLM's engine core.
Uses ../shared/data/eval when present, else the built-in task.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--benchmark", default="gsm8k")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.eval.benchmarks import load_benchmark
    from openrlhf_psr.eval.generate import greedy_solutions, score_solutions

    if SHARED.is_dir():
        problems = load_benchmark(args.benchmark, root=SHARED, limit=args.problems, seed=0)
    else:
        problems = load_problems("builtin:arith?seed=7", limit=args.problems)
    engine = VLLMLocalEngine(model=args.model, max_model_len=2048)
    greedy_solutions(engine, problems[:2], max_tokens=8)  # warm-up

    start = time.perf_counter()
    texts = greedy_solutions(engine, problems, max_tokens=args.max_tokens)
    batched_acc = score_solutions(problems, texts, tokenizer=engine.tokenizer)["metrics"]["accuracy"]
    batched = time.perf_counter() - start

    start = time.perf_counter()
    single = [greedy_solutions(engine, [p], max_tokens=args.max_tokens)[0] for p in problems]
    single_acc = score_solutions(problems, single, tokenizer=engine.tokenizer)["metrics"]["accuracy"]
    looped = time.perf_counter() - start

    n = len(problems)
    print(f"\nmodel={args.model} benchmark={args.benchmark} problems={n} greedy max_tokens={args.max_tokens}")
    print(f"{'':22}{'problems/s':>12}{'seconds':>10}{'accuracy':>10}")
    print(f"{'batched':22}{n / batched:>12.2f}{batched:>10.1f}{batched_acc:>10.3f}")
    print(f"{'one at a time':22}{n / looped:>12.2f}{looped:>10.1f}{single_acc:>10.3f}")
    print(f"\nspeed-up batched / one at a time: {looped / batched:.2f}x")
    print(f"identical greedy outputs: {sum(a == b for a, b in zip(texts, single, strict=True))}/{n}")


if __name__ == "__main__":
    from _memory import PeakRSS

    with PeakRSS() as memory:
        main()
    own, total = memory.gib()
    print(f"peak RSS: this process {own:.2f} GiB, with its children (vLLM engine core) {total:.2f} GiB")
