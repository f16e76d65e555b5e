"""``python -m openrlhf_psr.cli.evaluate``: greedy accuracy, format-following, step statistics and judge accuracy
of one model, written to ``OUT/eval.json`` (one engine for everything).

Benchmarks are ``NAME[=SOURCE][@LIMIT]``: a paper benchmark under ``--data-root`` (e.g. ``gsm8k@50``), a paper
benchmark from another file or dataset (``math500=/path/test.jsonl``), or the built-in task (``arith@24``).
Judge sets are ``builtin@N`` or ``prm800k=PATH[@N]``; judges are registry names (``generative``, ``logit``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_spec(spec: str) -> tuple[str, str | None, int | None]:
    """``name[=source][@limit]``.

    >>> parse_spec("gsm8k@50"), parse_spec("arith"), parse_spec("math500=/d/t.jsonl@10")
    (('gsm8k', None, 50), ('arith', None, None), ('math500', '/d/t.jsonl', 10))
    """
    body, _, limit = spec.rpartition("@") if "@" in spec else (spec, "", "")
    name, _, source = body.partition("=")
    return name, source or None, int(limit) if limit else None


def load_eval_problems(spec: str, data_root: str | None, seed: int):
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.eval.benchmarks import load_benchmark

    name, source, limit = parse_spec(spec)
    if name == "arith":
        return name, load_problems(source or "builtin:arith?seed=7", limit=limit or 24)
    return name, load_benchmark(name, root=data_root, source=source, limit=limit, seed=seed)


def load_judge_pairs(spec: str, seed: int):
    from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs, prm800k_judge_pairs

    name, source, limit = parse_spec(spec)
    if name == "builtin":
        return name, builtin_judge_pairs(limit or 16)
    if name == "prm800k":
        if not source:
            raise ValueError(f"judge set {spec!r}: prm800k needs a path, e.g. prm800k=PATH@64")
        return name, prm800k_judge_pairs(source, limit, seed)
    raise ValueError(f"judge set {spec!r}: expected builtin@N or prm800k=PATH[@N]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_psr.cli.evaluate", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--benchmark", action="append", default=[], help="NAME[=SOURCE][@LIMIT], repeatable")
    parser.add_argument("--data-root", default=None, help="folder with <benchmark>/test.jsonl")
    parser.add_argument("--judge-set", action="append", default=[], help="builtin@N | prm800k=PATH[@N]")
    parser.add_argument("--judge", action="append", default=[], help="judge plugin names for the judge sets")
    parser.add_argument("--judge-max-tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--prompt", default="step", choices=["step", "qwen_cot"])
    parser.add_argument("--fewshot", type=int, default=0, help="worked examples prepended (for base models)")
    parser.add_argument("--chat-template", type=lambda s: s.lower() in ("1", "true", "on"), default=True)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    tts = parser.add_argument_group("test-time scaling: the step-wise search with self-judging at inference")
    tts.add_argument("--tts-benchmark", action="append", default=[], help="benchmark names to also run with search")
    tts.add_argument("--tts-width", type=int, default=6, help="candidates per step (paper: 6)")
    tts.add_argument("--tts-temperature", type=float, default=0.5, help="paper: 0.5")
    tts.add_argument("--tts-max-rounds", type=int, default=20)
    tts.add_argument("--tts-judge", default="logit", help="judge plugin for the search")
    args = parser.parse_args(argv)
    unknown = set(args.tts_benchmark) - {parse_spec(s)[0] for s in args.benchmark}
    if unknown:
        parser.error(f"--tts-benchmark {sorted(unknown)} must also be given as --benchmark")

    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.eval.generate import greedy_solutions, score_solutions
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy
    from openrlhf_psr.judges.base import JudgeContext, build_judge
    from openrlhf_psr.shards import atomic_write_text

    benchmarks = [load_eval_problems(s, args.data_root, args.seed) for s in args.benchmark]  # fail before the engine
    judge_sets = [load_judge_pairs(s, args.seed) for s in args.judge_set]
    engine = VLLMLocalEngine(model=args.model, seed=args.seed, max_model_len=args.max_model_len)
    result: dict = {"model": args.model, "benchmarks": {}, "judges": {}}
    for name, problems in benchmarks:
        start = time.perf_counter()
        texts = greedy_solutions(engine, problems, prompt=args.prompt, max_tokens=args.max_tokens,
                                 chat_template=args.chat_template, fewshot=args.fewshot)  # fmt: skip
        scored = score_solutions(problems, texts, tokenizer=engine.tokenizer)
        scored["metrics"]["seconds"] = time.perf_counter() - start
        result["benchmarks"][name] = scored
        print(f"{name}: {json.dumps(scored['metrics'])}", flush=True)
    context = JudgeContext(model=args.model, engine=engine)
    if args.tts_benchmark:
        from openrlhf_psr.eval.tts import run_test_time_scaling
        from openrlhf_psr.search import SearchConfig

        config = SearchConfig(width=args.tts_width, temperature=args.tts_temperature, max_rounds=args.tts_max_rounds,
                              aggregate="prob" if args.tts_judge == "logit" else "verdict", seed=args.seed,
                              max_tokens_per_step=min(256, args.max_tokens),
                              chat_template=args.chat_template)  # fmt: skip
        judge = build_judge(args.tts_judge, context)
        result["test_time_scaling"] = {}
        for name, problems in benchmarks:
            if name in args.tts_benchmark:
                metrics = run_test_time_scaling(engine, judge, problems, Path(args.out) / "tts" / name, config)
                result["test_time_scaling"][name] = metrics
                print(f"test-time scaling {name}: {json.dumps(metrics)}", flush=True)
    for judge_name in args.judge:
        settings = {"max_tokens": args.judge_max_tokens} if judge_name == "generative" else {}
        judge = build_judge(judge_name, context, **settings)
        for set_name, pairs in judge_sets:
            metrics = judge_accuracy(judge, pairs)
            result["judges"][f"{judge_name}/{set_name}"] = metrics
            print(f"judge {judge_name} on {set_name}: {json.dumps(metrics)}", flush=True)
    out = Path(args.out)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
