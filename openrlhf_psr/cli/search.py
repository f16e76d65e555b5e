"""``openrlhf-psr search``: the step-wise search with self-judging over a problem set; writes pairs and trajectories.

Also ``python -m openrlhf_psr.cli.search``. Output: ``OUT/pairs/``, ``OUT/trajectories/`` (sharded JSONL, resumable)
and ``OUT/summary.json``; the summary is printed as a table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from openrlhf_psr.search import SearchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model name/path; `default` = embedded SmolLM2-135M")
    parser.add_argument("--problems", default="builtin:arith", help="builtin:arith, a .jsonl/.parquet, or HF name")
    parser.add_argument("--question-key", default="question")
    parser.add_argument("--answer-key", default="answer", help="gold answer field ('' for none)")
    parser.add_argument("--answer-rule", default="raw", choices=["raw", "gsm8k", "boxed", "first"])
    parser.add_argument("--limit", type=int, default=None, help="number of problems (seeded subset with --seed)")
    parser.add_argument("--split", default="train", help="split of a HF dataset")
    parser.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    parser.add_argument("--subset", default=None, help="START:END of the problems after a seeded shuffle")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of that shuffle (same across iterations)")
    parser.add_argument("--judge", default="logit", help="judge plugin: generative, logit, outcome, or module:attr")
    parser.add_argument("--judge-settings", type=json.loads, default={}, help="JSON keyword arguments of the judge")
    parser.add_argument("--judge-max-tokens", type=int, default=None, help="generative judge explanation cap")
    parser.add_argument(
        "--generator", default="vllm", help="engine plugin: vllm, openrlhf_ray, openai_http, module:attr"
    )
    parser.add_argument("--generator-settings", type=json.loads, default={}, help="JSON keyword arguments")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument(
        "--method",
        default="psr",
        choices=["psr", "srlm"],
        help="psr: step-wise search; srlm: the Self-Rewarding baseline (whole solutions, 5-point score)",
    )
    parser.add_argument("--srlm-score-samples", type=int, default=3, help="srlm: judgments averaged per solution")
    defaults = SearchConfig()
    for f in fields(SearchConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(**{f.name: getattr(args, f.name) for f in fields(SearchConfig)})


def build_engine(args):
    from openrlhf_psr.registry import GENERATORS

    return GENERATORS.get(args.generator).from_config(
        args.model, seed=args.seed, max_model_len=args.max_model_len, **args.generator_settings
    )


def build_judge(args, engine):
    from openrlhf_psr.judges.base import JudgeContext, build_judge

    settings = dict(args.judge_settings)
    if args.judge_max_tokens is not None:
        settings["max_tokens"] = args.judge_max_tokens
    if args.judge in ("generative", "logit", "outcome"):
        settings.setdefault("chat_template", args.chat_template)
    return build_judge(args.judge, JudgeContext(model=args.model, engine=engine), **settings)


def format_summary(summary: dict) -> str:
    rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict | list)]
    rows += [(f"finish.{k}", v) for k, v in summary.get("finish", {}).items()]
    width = max(len(k) for k, _ in rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in rows)


def run(args: argparse.Namespace) -> dict:
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.search import StepSearch

    config = config_from_args(args)  # validate before anything heavy starts
    problems = load_problems(
        args.problems,
        question_key=args.question_key,
        answer_key=args.answer_key or None,
        answer_rule=args.answer_rule,
        limit=None if args.subset else args.limit,
        seed=args.seed,
        split=args.split,
    )
    if args.subset:
        import random

        start, _, end = args.subset.partition(":")
        random.Random(args.subset_seed).shuffle(problems)
        problems = problems[int(start or 0) : int(end) if end else None]
        if not problems:
            raise ValueError(f"--subset {args.subset}: no problems left (the source has fewer)")
    engine = build_engine(args)
    if args.method == "srlm":
        from openrlhf_psr.shards import ShardStore
        from openrlhf_psr.srlm import SRLMConfig, srlm_pairs

        srlm = SRLMConfig(n=config.width, score_samples=args.srlm_score_samples, temperature=config.temperature,
                          top_p=config.top_p,
                          max_tokens=min(config.max_tokens_per_step * config.max_rounds, args.max_model_len // 2),
                          chat_template=config.chat_template, seed=config.seed)  # fmt: skip
        srlm_pairs(engine, problems, args.out, srlm)
        summary = {"method": "srlm", "pairs": sum(1 for _ in ShardStore(args.out).read("pairs")),
                   "problems": sum(1 for _ in ShardStore(args.out).read("trajectories"))}  # fmt: skip
    else:
        judge = build_judge(args, engine)
        summary = StepSearch(engine, judge, config, model_id=args.model).run(problems, args.out)
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"\npairs and trajectories: {out}/{{pairs,trajectories}}/  summary: {out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openrlhf-psr search", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
