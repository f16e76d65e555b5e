"""``openrlhf-psr demo``: the main job on the embedded default model, runnable anywhere on CPU.

Until the recipe launcher lands, the demo is the heart of PSR on the package's own task: the step-wise search with
self-judging by the default model (logit judge, probability aggregation over both orders, since the untrained
model writes no parseable verdict) on built-in arithmetic problems. It writes pairs, trajectories and a summary
under ``runs/demo/search`` and resumes if interrupted.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser("demo", help="run the main job on the embedded default model (CPU)")
    parser.add_argument("--out", default="runs/demo/search")
    parser.add_argument("--limit", type=int, default=8)
    parser.set_defaults(func=cmd_demo)
    search = sub.add_parser("search", help="step-wise search with self-judging; writes DPO step pairs")
    from openrlhf_psr.cli.search import add_arguments

    add_arguments(search)
    search.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from openrlhf_psr.cli.search import run

    run(args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from openrlhf_psr.cli.search import main

    return main(
        [
            "--problems", "builtin:arith", "--limit", str(args.limit), "--out", args.out,
            "--judge", "logit", "--aggregate", "prob", "--width", "4", "--max-rounds", "8",
            "--max-tokens-per-step", "96", "--max-model-len", "2048",
        ]
    )  # fmt: skip
