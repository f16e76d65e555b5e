"""``openrlhf-psr doctor``: check the environment (torch build, CPU patches, default model) and say what to fix."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from openrlhf_psr import preflight
    from openrlhf_psr.compat.__main__ import main as compat_main
    from openrlhf_psr.model_cache import DEFAULT_MODEL, resolve_model

    preflight.check_torch_build()
    compat_main(["status"])
    print(f"default model: {resolve_model(DEFAULT_MODEL)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr doctor", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
