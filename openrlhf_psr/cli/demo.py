"""``openrlhf-psr demo``: the main job, ``openrlhf-psr run recipes/tiny_cpu.yaml`` (the embedded default: the
whole PSR loop with SmolLM2-135M on the built-in task, on CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from openrlhf_psr.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrlhf_psr.cli.run import add_run_options

    add_run_options(parser)


def tiny_cpu_recipe() -> Path:
    path = Path(__file__).resolve().parents[2] / "recipes" / "tiny_cpu.yaml"
    if not path.is_file():
        raise UserError(f"{path}: expected the main job's recipe, found no such file (run from a repository checkout)")
    return path


def run(args: argparse.Namespace) -> int:
    from openrlhf_psr.cli import run as run_command

    return run_command.run(argparse.Namespace(recipe=str(tiny_cpu_recipe()), **vars(args)))


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr demo", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
