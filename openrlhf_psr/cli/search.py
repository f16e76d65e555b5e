"""``openrlhf-psr search``: the step-wise search with self-judging over a problem set; writes pairs and trajectories.

Also ``python -m openrlhf_psr.cli.search``. Output: ``OUT/pairs/``, ``OUT/trajectories/`` (sharded JSONL, resumable)
and ``OUT/summary.json``; the summary is printed as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from openrlhf_psr.cli.app import add_switch, json_object, positive_int
from openrlhf_psr.errors import UserError
from openrlhf_psr.search import SearchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model name/path; `default` = embedded SmolLM2-135M")
    parser.add_argument("--problems", default="builtin:arith", help="builtin:arith, a .jsonl/.parquet, or HF name")
    parser.add_argument("--question-key", default="question")
    parser.add_argument("--answer-key", default="answer", help="gold answer field ('' for none)")
    parser.add_argument("--answer-rule", default="raw", choices=["raw", "gsm8k", "boxed", "first"])
    parser.add_argument("--limit", type=positive_int, default=None, help="number of problems (seeded subset, --seed)")
    parser.add_argument("--split", default="train", help="split of a HF dataset")
    parser.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    parser.add_argument("--subset", type=subset_text, default=None, help="START:END of the problems, seeded shuffle")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of that shuffle (same across iterations)")
    parser.add_argument("--judge", default="generative", help="judge plugin, registry name or module:attr "
                        "(default: generative, the paper's judge)")  # fmt: skip
    parser.add_argument("--judge-settings", type=json_object, default={}, help="JSON keyword arguments of the judge")
    parser.add_argument("--judge-max-tokens", type=positive_int, default=None, help="generative judge explanation cap")
    parser.add_argument(
        "--generator", default="vllm", help="engine plugin: vllm, openrlhf_ray, openai_http, module:attr"
    )
    parser.add_argument("--generator-settings", type=json_object, default={}, help="JSON keyword arguments")
    parser.add_argument("--max-model-len", type=positive_int, default=4096)
    parser.add_argument(
        "--method",
        default="psr",
        choices=["psr", "srlm"],
        help="psr: step-wise search; srlm: the Self-Rewarding baseline (whole solutions, 5-point score)",
    )
    parser.add_argument("--srlm-score-samples", type=positive_int, default=3, help="srlm: judgments per solution")
    defaults = SearchConfig()
    for f in fields(SearchConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            add_switch(parser, flag, default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def subset_text(text: str) -> str:
    """``--subset START:END`` (END > START >= 0, END optional), kept as given.

    >>> subset_text("0:16")
    '0:16'
    >>> subset_text("0:-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected START:END with 0 <= START < END, found '0:-5'
    """
    start, sep, end = text.partition(":")
    try:
        a, b = int(start or 0), int(end) if end else None
    except ValueError:
        a, b, sep = -1, None, ""
    if not sep or a < 0 or (b is not None and b <= a):
        raise argparse.ArgumentTypeError(f"expected START:END with 0 <= START < END, found {text!r}")
    return text


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The search settings; an invalid combination is a one-line error naming the flag."""
    try:
        return SearchConfig(**{f.name: getattr(args, f.name) for f in fields(SearchConfig)})
    except ValueError as exc:
        first = str(exc).split()[0]
        flag = f"--{first.replace('_', '-')}: " if first in {f.name for f in fields(SearchConfig)} else ""
        raise UserError(f"{flag}{exc}") from None


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
    if args.judge in ("generative", "logit", "outcome", "likelihood"):
        settings.setdefault("chat_template", args.chat_template)
    return build_judge(args.judge, JudgeContext(model=args.model, engine=engine), **settings)


def format_summary(summary: dict) -> str:
    rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict | list)]
    rows += [(f"finish.{k}", v) for k, v in summary.get("finish", {}).items()]
    width = max(len(k) for k, _ in rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in rows)


def _parse_subset(text: str | None) -> tuple[int, int | None] | None:
    """``START:END`` -> (start, end); see ``load_problems(subset=...)``.

    >>> _parse_subset("400:1200"), _parse_subset(":24"), _parse_subset(None)
    ((400, 1200), (0, 24), None)
    """
    if not text:
        return None
    start, _, end = text.partition(":")
    return int(start or 0), int(end) if end else None


def run(args: argparse.Namespace) -> int:
    search(args)
    return 0


def search(args: argparse.Namespace) -> dict:
    """Run the search (or SRLM's pair building) and return its summary; bad input fails before any engine starts."""
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.registry import GENERATORS, JUDGES
    from openrlhf_psr.search import StepSearch

    config = config_from_args(args)  # validate before anything heavy starts
    GENERATORS.get(args.generator)
    if args.method == "psr":
        JUDGES.get(args.judge)
    problems = load_problems(
        args.problems,
        question_key=args.question_key,
        answer_key=args.answer_key or None,
        answer_rule=args.answer_rule,
        limit=None if args.subset else args.limit,
        seed=args.seed,
        split=args.split,
        subset=_parse_subset(args.subset),
        subset_seed=args.subset_seed,
    )
    if not problems:
        what = f"--subset {args.subset}: expected problems in that range" if args.subset else "expected problems"
        raise UserError(f"--problems {args.problems}: {what}, found none")
    if args.subset:
        start, end = _parse_subset(args.subset)
        if end is not None and len(problems) < end - start:
            print(f"--subset {args.subset}: the source has only {len(problems)} of {end - start} problems left",
                  file=sys.stderr)  # fmt: skip
    engine = build_engine(args)
    if args.method == "srlm":
        from openrlhf_psr.io import ShardStore
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
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.search", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
