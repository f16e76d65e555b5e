"""Engine start-up with vLLM's engine core in the caller's process (the CPU default) against its own process.

    .venv/bin/python bench/bench_engine_start.py [--model default] [--problems 200] [--max-tokens 160] [--repeats 2]

Every stage that generates (evaluation, search, test-time scaling) starts one engine in a fresh Python process. By
default vLLM runs the engine core in a second process (and on CPU the worker in a third), each importing torch and
vLLM again; ``create_llm`` keeps it in-process on CPU (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Each run here is a
fresh interpreter, as a stage is, alternating the two settings: it times the engine start (imports included), a batched
greedy generation of the built-in problems, and the whole process from launch to exit, and the parent samples the
peak RSS of the run's process tree. Prints a table per setting (medians over the repeats), the ratios against the
separate process measured in the same run, and how many distinct sets of greedy outputs each setting gave.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

MODES = {"in-process": "0", "own process": "1"}  # VLLM_ENABLE_V1_MULTIPROCESSING


def child(args: argparse.Namespace) -> None:
    """One stage-like run: import, engine start, batched greedy generation; prints one JSON line."""
    started = time.perf_counter()
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.eval.generate import greedy_solutions

    engine = VLLMLocalEngine(model=args.model, max_model_len=2048)  # imports torch and vLLM, then starts the engine
    ready = time.perf_counter()
    problems = load_problems("builtin:arith?seed=7&ops=2-3&max_value=50", limit=args.problems)
    texts = greedy_solutions(engine, problems, max_tokens=args.max_tokens)
    generated = time.perf_counter()
    tokens = sum(len(engine.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    result = {"start_s": ready - started, "generate_s": generated - ready, "tokens": tokens, "outputs": digest}
    print("RESULT " + json.dumps(result), flush=True)


def run_once(args: argparse.Namespace, mode: str) -> dict:
    from _memory import PeakRSS

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": MODES[mode]}
    command = [sys.executable, __file__, "--child", "--model", args.model, "--problems", str(args.problems),
               "--max-tokens", str(args.max_tokens)]  # fmt: skip
    launched = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with PeakRSS(pid=proc.pid) as memory:
        out, _ = proc.communicate()
    wall = time.perf_counter() - launched
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode}); rerun it alone to see its log")
    return {**json.loads(lines[-1][len("RESULT ") :]), "wall_s": wall, "peak_gib": memory.gib()[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for i in range(args.repeats):
        for mode in MODES if i % 2 == 0 else reversed(MODES):  # alternate the order against drift
            runs[mode].append(run_once(args, mode))
            print(f"run {i + 1}/{args.repeats} {mode}: {runs[mode][-1]}", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    print(f"\nmodel={args.model} problems={args.problems} greedy max_tokens={args.max_tokens} repeats={args.repeats}")
    print(f"{'engine core':14}{'start s':>10}{'generate s':>12}{'gen tok/s':>11}{'wall s':>9}"
          f"{'peak GiB':>10}")  # fmt: skip
    for mode in MODES:
        rate = median(mode, "tokens") / median(mode, "generate_s")
        print(f"{mode:14}{median(mode, 'start_s'):>10.1f}"
              f"{median(mode, 'generate_s'):>12.1f}{rate:>11.1f}{median(mode, 'wall_s'):>9.1f}"
              f"{max(r['peak_gib'] for r in runs[mode]):>10.2f}")  # fmt: skip
    inside, apart = "in-process", "own process"
    print(f"\nengine start, own process / in-process: {median(apart, 'start_s') / median(inside, 'start_s'):.2f}x")
    wall_apart, wall_inside = median(apart, "wall_s"), median(inside, "wall_s")
    print(f"whole run (launch to exit), own process / in-process: {wall_apart / wall_inside:.2f}x"
          f" ({wall_apart - wall_inside:.1f} s saved per engine start)")  # fmt: skip
    print(f"generation tok/s, in-process / own process: "
          f"{median(apart, 'generate_s') / median(inside, 'generate_s'):.2f}x")  # fmt: skip
    for mode in MODES:  # vLLM's batching can flip a greedy token between runs of a multi-process engine
        digests = {r["outputs"] for r in runs[mode]}
        print(f"{mode}: {len(digests)} distinct greedy output set(s) over {len(runs[mode])} runs")


if __name__ == "__main__":
    main()
