"""``openrlhf-psr``: the project's command line.

Subcommands (each a module of ``openrlhf_psr.cli`` with ``add_arguments(parser)`` and ``run(args)``):
  run          run a recipe (SFT, then search -> step DPO -> eval per iteration); resumes; --dry-run preflights
  status       where a run stands
  report       tables, plots and JSON of a run
  search       step-wise search with self-judging: writes DPO step pairs and trajectories
  evaluate     accuracy, format, step statistics and judge accuracy of one model
  sft-data     write the IFT + EFT mixture for the SFT stage (upstream train_sft)
  reward-file  print the path of the pairwise-judge reward function file for --reward.remote_url
  doctor       check the environment (torch build, CPU patches, default model) and say what to fix
  demo         the main job on the embedded default model (see README)
  plan         memory per GPU and host RAM per node of every stage; refuses what cannot fit
  evidence     does the loop improve the model? judge arms from one M1, with intervals (recipes/evidence_cpu.yaml)

Training stages run as modules, like upstream's: ``python -m openrlhf_psr.cli.train_step_dpo`` (or
``deepspeed --module openrlhf_psr.cli.train_step_dpo``) and ``python -m openrlhf.cli.train_sft``.

A user error (bad recipe, flag, data file, run folder) is one ``openrlhf-psr: error:`` line per problem and exit
status 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from openrlhf_psr.cli.app import PROG, Parser, add_debug, execute, parse

# name -> (module, one-line help). Each module is imported only when the parser is built; none imports torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("openrlhf_psr.cli.run", "run a recipe end to end (resumes; --dry-run: full preflight + commands)"),
    "status": ("openrlhf_psr.cli.status", "where a run stands"),
    "report": ("openrlhf_psr.cli.report", "tables, plots and JSON of a run"),
    "search": ("openrlhf_psr.cli.search", "step-wise search with self-judging; writes DPO step pairs"),
    "evaluate": ("openrlhf_psr.cli.evaluate", "accuracy, format, step statistics and judge accuracy of a model"),
    "sft-data": ("openrlhf_psr.cli.sft_data", "write the IFT + EFT SFT mixture"),
    "reward-file": ("openrlhf_psr.cli.reward_file", "path of the reward function file for --reward.remote_url"),
    "doctor": ("openrlhf_psr.cli.doctor", "check the environment"),
    "demo": ("openrlhf_psr.cli.demo", "run the main job: recipes/tiny_cpu.yaml on the embedded default model"),
    "plan": ("openrlhf_psr.cli.plan", "how a recipe's stages fit the cluster (GPUs, memory)"),
    "evidence": ("openrlhf_psr.cli.evidence", "judge arms (oracle, random, self, likelihood) from one M1, compared"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = module.__doc__
        command = sub.add_parser(name, help=help_text, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        add_debug(command)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), sys.argv[1:] if argv is None else argv)
    return args if isinstance(args, int) else execute(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
