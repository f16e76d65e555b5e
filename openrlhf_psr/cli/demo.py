"""``openrlhf-psr demo``: the main job, ``openrlhf-psr run recipes/tiny_cpu.yaml`` (the embedded default: the
whole PSR loop with SmolLM2-135M on the built-in task, on CPU); and the ``search`` subcommand's parser."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    parser = sub.add_parser("demo", help="run the main job: recipes/tiny_cpu.yaml on the embedded default model")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--set", action="append", default=[], help="override: KEY.PATH=VALUE")
    parser.set_defaults(func=cmd_demo)
    search = sub.add_parser("search", help="step-wise search with self-judging; writes DPO step pairs")
    from openrlhf_psr.cli.search import add_arguments

    add_arguments(search)
    search.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from openrlhf_psr.cli.search import run

    run(args)
    return 0


def tiny_cpu_recipe() -> Path:
    path = Path(__file__).resolve().parents[2] / "recipes" / "tiny_cpu.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the demo runs from a checkout of the repository")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from openrlhf_psr.cli.main import cmd_run

    return cmd_run(argparse.Namespace(recipe=str(tiny_cpu_recipe()), set=args.set, runs_dir=args.runs_dir,
                                      dry_run=False))  # fmt: skip
