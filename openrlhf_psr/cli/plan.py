"""``openrlhf-psr plan RECIPE``: memory per GPU and host RAM per node for every stage; exit 1 when one cannot fit.

Also ``python -m openrlhf_psr.cli.plan RECIPE [--set KEY=VALUE ...]``. Pure arithmetic (see
:mod:`openrlhf_psr.plan`): no GPU, no model download (a local model folder's config.json, else a table of known
shapes).
"""

from __future__ import annotations

import argparse
import sys

from openrlhf_psr.plan import format_plan, plan_recipe
from openrlhf_psr.recipe import load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("--set", action="append", default=[], help="override: KEY.PATH=VALUE (YAML value)")


def run(args: argparse.Namespace) -> int:
    """Print the plan; 0 when every stage fits, 1 when one does not (its refusal names the knob), 2 on bad input."""
    recipe = load_recipe(args.recipe, args.set)  # a RecipeError is a one-line user error (cli.app)
    plans = plan_recipe(recipe)
    print(format_plan(recipe, plans))
    refused = [p.stage for p in plans if not p.fits]
    if refused:
        print(f"\n{recipe.name}: {', '.join(refused)} cannot fit the cluster section's hardware", file=sys.stderr)
        return 1
    print(f"\n{recipe.name}: every stage fits")
    return 0


def main(argv=None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr plan", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
