"""``python -m openrlhf_psr.cli.evaluate``: greedy accuracy, format-following, step statistics and judge accuracy
of one model, written to ``OUT/eval.json`` (one engine for everything).

Benchmarks are ``NAME[=SOURCE][@LIMIT]``: a paper benchmark under ``--data-root`` (e.g. ``gsm8k@50``), a paper
benchmark from another file or dataset (``math500=/path/test.jsonl``), or the built-in task (``arith@24``).
Judge sets are ``builtin@N`` or ``prm800k=PATH[@N]``; judges are registry names (``generative``, ``logit``).
A killed evaluation resumes: every finished benchmark and judge set is kept whole under ``OUT/parts/`` and reused
while the model's files and the settings are unchanged (:mod:`openrlhf_psr.eval.parts`); test-time scaling resumes
from its search shards.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from openrlhf_psr.errors import UserError


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
    from openrlhf_psr.eval.benchmarks import BENCHMARKS, load_benchmark

    name, source, limit = parse_spec(spec)
    if name != "arith" and name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, [*BENCHMARKS, "arith"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join([*BENCHMARKS, "arith"])
        raise UserError(f"benchmark {spec!r}: expected one of {known}, found {name!r}{hint}")
    if name != "arith" and source is None and data_root is None:
        raise UserError(f"benchmark {spec!r}: expected a data root (data.eval.data_root, --data-root) or NAME=SOURCE")
    if name == "arith":
        if source:  # a file is kept whole unless a limit is given
            return name, load_problems(source, limit=limit)
        return name, load_problems("builtin:arith?seed=7", limit=limit or 24)  # the unbounded built-in task
    return name, load_benchmark(name, root=data_root, source=source, limit=limit, seed=seed)


def load_judge_pairs(spec: str, seed: int):
    from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs, prm800k_judge_pairs

    name, source, limit = parse_spec(spec)
    if name == "builtin":
        return name, builtin_judge_pairs(limit or 16)
    if name == "prm800k":
        if not source:
            raise UserError(f"judge set {spec!r}: expected prm800k=PATH[@N], found no PATH")
        return name, prm800k_judge_pairs(source, limit, seed)
    raise UserError(f"judge set {spec!r}: expected builtin@N or prm800k=PATH[@N], found {name!r}")


def _judge_settings(name: str, args: argparse.Namespace) -> dict:
    """Settings of a built-in judge: the prompt format of the model under evaluation (``--chat-template``, the
    recipe's) and the explanation cap; judges from plugins get none."""
    if name not in ("generative", "logit", "outcome"):
        return {}
    settings: dict = {"chat_template": args.chat_template}
    if name == "generative":
        settings["max_tokens"] = args.judge_max_tokens
    return settings


def _part_settings(args: argparse.Namespace) -> dict:
    """What every finished part depends on besides its own inputs: the model's files and the settings (the
    output folder and the lists of parts to run are not among them)."""
    from openrlhf_psr.fingerprint import model_fingerprint

    skip = {"out", "benchmark", "judge_set", "judge", "tts_benchmark"}
    return {"model_files": model_fingerprint(args.model), **{k: v for k, v in vars(args).items() if k not in skip}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrlhf_psr.cli.app import add_switch, positive_int

    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--benchmark", action="append", default=[], help="NAME[=SOURCE][@LIMIT], repeatable")
    parser.add_argument("--data-root", default=None, help="folder with <benchmark>/test.jsonl")
    parser.add_argument("--judge-set", action="append", default=[], help="builtin@N | prm800k=PATH[@N]")
    parser.add_argument("--judge", action="append", default=[], help="judge plugin names for the judge sets")
    parser.add_argument("--judge-max-tokens", type=positive_int, default=256)
    parser.add_argument("--max-tokens", type=positive_int, default=1024)
    parser.add_argument("--prompt", default="step", choices=["step", "qwen_cot"])
    parser.add_argument("--fewshot", type=int, default=0, help="worked examples prepended (for base models)")
    add_switch(parser, "--chat-template", True, "wrap prompts in the model's chat template")
    parser.add_argument("--max-model-len", type=positive_int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="GPUs of the vLLM engine")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None, help="GPU share vLLM may take")
    tts = parser.add_argument_group("test-time scaling: the step-wise search with self-judging at inference")
    tts.add_argument("--tts-benchmark", action="append", default=[], help="benchmark names to also run with search")
    tts.add_argument("--tts-width", type=positive_int, default=6, help="candidates per step (paper: 6)")
    tts.add_argument("--tts-temperature", type=float, default=0.5, help="paper: 0.5")
    tts.add_argument("--tts-max-rounds", type=positive_int, default=20)
    tts.add_argument("--tts-judge", default="generative", help="judge plugin for the search (paper: generative)")


def check_arguments(args: argparse.Namespace) -> None:
    """What can be checked before an engine starts: specs parse, judges exist, tts benchmarks are benchmarks."""
    from openrlhf_psr.registry import JUDGES, RegistryError

    for flag, specs in (("--benchmark", args.benchmark), ("--judge-set", args.judge_set)):
        for spec in specs:
            try:
                limit = parse_spec(spec)[2]
            except ValueError:
                raise UserError(f"{flag} {spec!r}: expected NAME[=SOURCE][@LIMIT] with an integer LIMIT") from None
            if limit is not None and limit <= 0:
                raise UserError(f"{flag} {spec!r}: expected a positive LIMIT, found {limit}")
    unknown = set(args.tts_benchmark) - {parse_spec(s)[0] for s in args.benchmark}
    if unknown:
        raise UserError(f"--tts-benchmark {sorted(unknown)}: expected names also given as --benchmark")
    flags = [("--judge", name) for name in args.judge]
    flags += [("--tts-judge", args.tts_judge)] if args.tts_benchmark else []
    for flag, name in flags:
        try:
            JUDGES.get(name)
        except RegistryError as exc:
            raise UserError(f"{flag} {name}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.evaluate", __doc__)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)

    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.eval.generate import greedy_solutions, score_solutions
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy
    from openrlhf_psr.eval.parts import EvalParts
    from openrlhf_psr.io import atomic_write_text
    from openrlhf_psr.judges.base import JudgeContext, build_judge

    benchmarks = [load_eval_problems(s, args.data_root, args.seed) for s in args.benchmark]  # fail before the engine
    judge_sets = [load_judge_pairs(s, args.seed) for s in args.judge_set]
    gpu = {"tensor_parallel_size": args.tensor_parallel_size} if args.tensor_parallel_size > 1 else {}
    if args.gpu_memory_utilization is not None:
        gpu["gpu_memory_utilization"] = args.gpu_memory_utilization
    engine = VLLMLocalEngine(model=args.model, seed=args.seed, max_model_len=args.max_model_len, **gpu)
    result: dict = {"model": args.model, "benchmarks": {}, "judges": {}}
    parts = EvalParts(args.out, settings=_part_settings(args))  # finished parts of a killed run are reused
    for name, problems in benchmarks:
        scored = parts.get(f"benchmark-{name}", problems)
        if scored is not None:
            print(f"{name}: resumed from {parts.dir}", flush=True)
        else:
            start = time.perf_counter()
            texts = greedy_solutions(engine, problems, prompt=args.prompt, max_tokens=args.max_tokens,
                                     chat_template=args.chat_template, fewshot=args.fewshot)  # fmt: skip
            scored = score_solutions(problems, texts, tokenizer=engine.tokenizer, progress=True)
            scored["metrics"]["seconds"] = time.perf_counter() - start
            parts.put(f"benchmark-{name}", problems, scored)
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
        judge = build_judge(args.tts_judge, context, **_judge_settings(args.tts_judge, args))
        result["test_time_scaling"] = {}
        for name, problems in benchmarks:
            if name in args.tts_benchmark:
                metrics = run_test_time_scaling(engine, judge, problems, Path(args.out) / "tts" / name, config)
                result["test_time_scaling"][name] = metrics
                print(f"test-time scaling {name}: {json.dumps(metrics)}", flush=True)
    for judge_name in args.judge:
        judge = build_judge(judge_name, context, **_judge_settings(judge_name, args))
        for set_name, pairs in judge_sets:
            metrics = parts.get(f"judge-{judge_name}-{set_name}", pairs)
            if metrics is None:
                metrics = judge_accuracy(judge, pairs)
                parts.put(f"judge-{judge_name}-{set_name}", pairs, metrics)
            result["judges"][f"{judge_name}/{set_name}"] = metrics
            print(f"judge {judge_name} on {set_name}: {json.dumps(metrics)}", flush=True)
    out = Path(args.out)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
