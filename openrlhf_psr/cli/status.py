"""``openrlhf-psr status RUN``: where a run stands, stage by stage, from its ``manifest.json``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder, runs/<name>")


def run(args: argparse.Namespace) -> int:
    from openrlhf_psr.launcher import RecipeRun

    recipe_run = RecipeRun.from_folder(Path(args.run))
    rows = recipe_run.status()
    width = max(len(name) for name, _ in rows)
    for name, state in rows:
        print(f"{name.ljust(width)}  {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr status", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
