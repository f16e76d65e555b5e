"""``openrlhf-psr``: the project's command line.

Subcommands:
  run          run a recipe (SFT, then search -> step DPO -> eval per iteration); resumes; --dry-run
  status       where a run stands
  report       tables, plots and JSON of a run
  doctor       check the environment (torch build, CPU patches, default model) and say what to fix
  demo         the main job on the embedded default model (see README)
  search       step-wise search with self-judging: writes DPO step pairs and trajectories
  sft-data     write the IFT + EFT mixture for the SFT stage (upstream train_sft)
  reward-file  print the path of the pairwise-judge reward function file for --reward.remote_url

Training stages run as modules, like upstream's: ``python -m openrlhf_psr.cli.train_step_dpo`` (or
``deepspeed --module openrlhf_psr.cli.train_step_dpo``) and ``python -m openrlhf.cli.train_sft``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openrlhf_psr.preflight import SetupError
from openrlhf_psr.recipe import RecipeError
from openrlhf_psr.registry import RegistryError


def cmd_doctor(args: argparse.Namespace) -> int:
    from openrlhf_psr import preflight
    from openrlhf_psr.compat.__main__ import main as compat_main
    from openrlhf_psr.models import DEFAULT_MODEL, resolve_model

    preflight.check_torch_build()
    compat_main(["status"])
    print(f"default model: {resolve_model(DEFAULT_MODEL)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openrlhf-psr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe YAML end to end (resumes; --dry-run prints the commands)")
    run.add_argument("recipe")
    run.add_argument("--set", action="append", default=[], help="override: KEY.PATH=VALUE (YAML value)")
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--dry-run", action="store_true", help="print each stage's exact command and exit")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="where a run stands")
    status.add_argument("run", help="runs/<name>")
    status.set_defaults(func=cmd_status)
    sub.add_parser("doctor", help="check the environment").set_defaults(func=cmd_doctor)
    from openrlhf_psr.cli import demo

    demo.add_parser(sub)
    for name, (_, help_text) in FORWARDED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    reward = sub.add_parser("reward-file", help="path of the reward function file for --reward.remote_url")
    reward.set_defaults(func=cmd_reward_file)
    return parser


# Subcommands whose own parser lives in their module (all arguments are passed through).
FORWARDED = {
    "sft-data": ("openrlhf_psr.cli.sft_data", "write the IFT + EFT SFT mixture"),
    "report": ("openrlhf_psr.cli.report", "tables, plots and JSON of a run"),
}


def cmd_run(args: argparse.Namespace) -> int:
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import load_recipe

    run = RecipeRun(load_recipe(args.recipe, args.set), runs_dir=args.runs_dir)
    if args.dry_run:
        print(run.dry_run())
        return 0
    run.run()
    summary = run.root / "report" / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    print(f"run directory: {run.root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import Recipe

    manifest_path = Path(args.run) / "manifest.json"
    if not manifest_path.is_file():
        raise SetupError(f"{args.run} has no manifest.json: not a run directory (runs/<name>)")
    recipe = Recipe.model_validate(json.loads(manifest_path.read_text())["recipe"])
    run = RecipeRun(recipe, runs_dir=Path(args.run).parent)
    rows = run.status()
    width = max(len(name) for name, _ in rows)
    for name, state in rows:
        print(f"{name.ljust(width)}  {state}")
    return 0


def cmd_reward_file(args: argparse.Namespace) -> int:
    import openrlhf_psr.rewards.pairwise_reward as reward

    print(reward.__file__)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in FORWARDED:
        import importlib

        return importlib.import_module(FORWARDED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SetupError, RecipeError, RegistryError) as exc:  # the user can fix these: no traceback
        print(f"openrlhf-psr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
