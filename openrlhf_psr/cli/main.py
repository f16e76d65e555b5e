"""``openrlhf-psr``: the project's command line.

Subcommands:
  doctor   check the environment (torch build, CPU patches, default model) and say what to fix
  demo     the main job on the embedded default model (see README)
"""

from __future__ import annotations

import argparse
import sys

from openrlhf_psr.preflight import SetupError


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
    sub.add_parser("doctor", help="check the environment").set_defaults(func=cmd_doctor)
    from openrlhf_psr.cli import demo

    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SetupError as exc:  # an environment problem the user can fix: one line, no traceback
        print(f"openrlhf-psr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
