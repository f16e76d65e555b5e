"""``openrlhf-psr reward-file``: the path of the pairwise-judge reward function file, for upstream's
``--reward.remote_url $(openrlhf-psr reward-file)``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import openrlhf_psr.rewards.pairwise_reward as reward

    print(reward.__file__)
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "openrlhf-psr reward-file", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
