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

JUDGES = ("logit", "generative")
ENGINES = ("vllm", "ray")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model name/path; `default` = embedded SmolLM2-135M")
    parser.add_argument("--problems", default="builtin:arith", help="builtin:arith, a .jsonl/.parquet, or HF name")
    parser.add_argument("--question-key", default="question")
    parser.add_argument("--answer-key", default="answer", help="gold answer field ('' for none)")
    parser.add_argument("--answer-rule", default="raw", choices=["raw", "gsm8k", "boxed", "first"])
    parser.add_argument("--limit", type=int, default=None, help="number of problems (seeded subset with --seed)")
    parser.add_argument("--split", default="train", help="split of a HF dataset")
    parser.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    parser.add_argument("--judge", default="logit", choices=JUDGES)
    parser.add_argument("--judge-max-tokens", type=int, default=512, help="generative judge explanation cap")
    parser.add_argument("--engine", default="vllm", choices=ENGINES, help="in-process vLLM, or OpenRLHF's under Ray")
    parser.add_argument("--max-model-len", type=int, default=4096)
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
    if args.engine == "ray":
        from openrlhf_psr.engines.openrlhf_ray import OpenRLHFRayEngine

        return OpenRLHFRayEngine.create(args.model, max_model_len=args.max_model_len)
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine

    return VLLMLocalEngine(model=args.model, seed=args.seed, max_model_len=args.max_model_len)


def build_judge(args, engine):
    if args.judge == "logit":
        from openrlhf_psr.judges.logit import LogitJudge

        return LogitJudge(args.model, chat_template=args.chat_template)
    from openrlhf_psr.judges.generative import GenerativeJudge

    return GenerativeJudge(engine, max_tokens=args.judge_max_tokens, chat_template=args.chat_template)


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
        limit=args.limit,
        seed=args.seed,
        split=args.split,
    )
    engine = build_engine(args)
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
