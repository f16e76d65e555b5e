"""``openrlhf-psr run RECIPE``: run a recipe end to end (M0 eval, SFT, then search -> step DPO -> eval per
iteration, report), resuming where a previous run stopped.

Before the first stage, and alone with ``--dry-run``, a preflight checks everything that can be checked without a
model: the recipe (schema, plugin names and settings, evaluation judges), every local data source opened and read in
full (its first bad row named), ``stages.prompts_per_iteration`` against the problems available, the run folder
inside ``--runs-dir``, and the launch resources. All problems found are listed, one line each (exit status 2).
``--dry-run`` then prints every stage's exact command. ``--until STAGE`` stops after that stage (M1 alone, or a
search's pairs to look at before step DPO trains on them); the manifest keeps what ran, so a later run goes on.
"""

from __future__ import annotations

import argparse
import re


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")
    add_run_options(parser)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a recipe run, shared with ``openrlhf-psr demo`` (which fixes the recipe)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a recipe field (the value is YAML), repeatable")  # fmt: skip
    parser.add_argument("--runs-dir", default="runs", help="runs go to RUNS_DIR/<name>/ (default: runs)")
    parser.add_argument("--dry-run", action="store_true", help="preflight, print each stage's command, run nothing")
    parser.add_argument("--until", default=None, metavar="STAGE",
                        help="stop after this stage (e.g. sft, iter_1/search); a later run without it goes on from "
                        "there")  # fmt: skip


def prepare(recipe_path: str, overrides: list[str], runs_dir: str):
    """The validated run and the preflight's notes; every problem found raises one error listing them all."""
    from openrlhf_psr.errors import UserError
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.preflight import run_preflight
    from openrlhf_psr.recipe import load_recipe

    run = RecipeRun(load_recipe(recipe_path, overrides), runs_dir=runs_dir)
    problems, notes = run_preflight(run, getattr(run, "runs_dir", runs_dir))
    if problems:  # a problem that starts with a recipe key gets the recipe file in front, as load_recipe's do
        raise UserError.of([f"{recipe_path}: {p}" if re.match(r"[a-z_]+[.\[:]", p) else p for p in problems])
    return run, notes


def run(args: argparse.Namespace) -> int:
    recipe_run, notes = prepare(args.recipe, args.set, args.runs_dir)
    if args.dry_run:
        print("\n".join(f"# preflight: {note}" for note in notes + ["no problems found"]))
        print()
        print(recipe_run.dry_run(until=args.until))
        return 0
    for note in notes:
        print(f"preflight: {note}")
    recipe_run.run(until=args.until)
    summary = recipe_run.layout.report_markdown()
    if summary.is_file() and not args.until:
        print(summary.read_text())
    print(f"run directory: {recipe_run.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr run", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
