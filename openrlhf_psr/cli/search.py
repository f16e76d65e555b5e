"""``openrlhf-psr search``: the step-wise search with self-judging over a problem set; writes pairs and trajectories.

Also ``python -m openrlhf_psr.cli.search``. Output: ``OUT/pairs/``, ``OUT/trajectories/`` (sharded JSONL, resumable)
and ``OUT/summary.json``; the summary is printed as a table.

Settings (:class:`openrlhf_psr.recipe.SearchStageConfig`): ``--config FILE`` (the launcher's
``iter_<t>/search/config.json``), then ``--set KEY.PATH=VALUE``, then one flag per setting (``--width 4``,
``--judge logit``, ``--max-model-len 2048``, ``--srlm-score-samples 5``); booleans are ``on``/``off``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openrlhf_psr.cli.config_args import add_config_arguments, config_from_args
from openrlhf_psr.errors import UserError
from openrlhf_psr.recipe import SearchStageConfig
from openrlhf_psr.search import SearchConfig

# The flags of the search's config (recipe.SearchStageConfig) that are not simply the setting's name.
FLAG_NAMES = {"problems.source": "--problems", "generator.name": "--generator", "judge.name": "--judge",
              "generator.max_model_len": "--max-model-len"}  # fmt: skip
FLATTENED = {"problems": "", "search": ""}  # sections whose settings are flags without a prefix: --width, --split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (what the launcher writes), ``--set KEY.PATH=VALUE``, and a flag per setting."""
    add_config_arguments(parser, SearchStageConfig, prefixes=FLATTENED, names=FLAG_NAMES)


def stage_config(args: argparse.Namespace) -> SearchStageConfig:
    """The search stage's settings: ``--config``, then ``--set``, then flags; bad ones are one line each."""
    return config_from_args(args, SearchStageConfig)


def search_config(stage: SearchStageConfig) -> SearchConfig:
    """What :class:`~openrlhf_psr.search.StepSearch` takes: ``psr.search`` with the prompt format and the seed."""
    return SearchConfig(**stage.search.model_dump(), chat_template=stage.chat_template, seed=stage.seed)


def build_engine(stage: SearchStageConfig):
    from openrlhf_psr.registry import GENERATORS

    generator = stage.generator
    return GENERATORS.get(generator.name).from_config(
        stage.model, seed=stage.seed, max_model_len=generator.max_model_len, **generator.settings
    )


def build_judge(stage: SearchStageConfig, engine):
    from openrlhf_psr.judges.base import JudgeContext, build_judge

    settings = dict(stage.judge.settings)
    if stage.judge.name in ("generative", "logit", "outcome", "likelihood"):
        settings.setdefault("chat_template", stage.chat_template)
    return build_judge(stage.judge.name, JudgeContext(model=stage.model, engine=engine), **settings)


def format_summary(summary: dict) -> str:
    rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict | list)]
    rows += [(f"finish.{k}", v) for k, v in summary.get("finish", {}).items()]
    width = max(len(k) for k, _ in rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in rows)


def _parse_subset(text: str | None) -> tuple[int, int | None] | None:
    """``START:END`` -> (start, end); see ``load_problems(subset=...)``.

    >>> _parse_subset("400:1200"), _parse_subset(":24"), _parse_subset(None)
    ((400, 1200), (0, 24), None)
    """
    if not text:
        return None
    start, _, end = text.partition(":")
    return int(start or 0), int(end) if end else None


def run(args: argparse.Namespace) -> int:
    search(args)
    return 0


def search(args: argparse.Namespace) -> dict:
    """Run the search (or SRLM's pair building) and return its summary; bad input fails before any engine starts."""
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.registry import GENERATORS, JUDGES
    from openrlhf_psr.search import StepSearch

    stage = stage_config(args)  # validate before anything heavy starts
    config = search_config(stage)
    GENERATORS.get(stage.generator.name)
    if stage.method == "psr":
        JUDGES.get(stage.judge.name)
    src, subset = stage.problems, _parse_subset(stage.subset)
    problems = load_problems(
        src.source,
        question_key=src.question_key,
        answer_key=src.answer_key or None,
        answer_rule=src.answer_rule,
        limit=None if subset else stage.limit,
        seed=stage.seed,
        split=src.split,
        subset=subset,
        subset_seed=stage.subset_seed,
    )
    if not problems:
        what = f"--subset {stage.subset}: expected problems in that range" if subset else "expected problems"
        raise UserError(f"--problems {src.source}: {what}, found none")
    if subset and subset[1] is not None and len(problems) < subset[1] - subset[0]:
        print(f"--subset {stage.subset}: the source has only {len(problems)} of {subset[1] - subset[0]} problems "
              "left", file=sys.stderr)  # fmt: skip
    engine = build_engine(stage)
    if stage.method == "srlm":
        from openrlhf_psr.io import ShardStore
        from openrlhf_psr.search import summarize
        from openrlhf_psr.srlm import SRLMConfig, srlm_pairs

        max_tokens = min(config.max_tokens_per_step * config.max_rounds, stage.generator.max_model_len // 2)
        srlm = SRLMConfig(n=config.width, temperature=config.temperature, top_p=config.top_p, max_tokens=max_tokens,
                          chat_template=config.chat_template, seed=config.seed, **stage.srlm.model_dump())  # fmt: skip
        srlm_pairs(engine, problems, stage.out, srlm, model_id=stage.model)
        summary = {"method": "srlm", **summarize(ShardStore(stage.out))}  # the same statistics as a search's
    else:
        judge = build_judge(stage, engine)
        summary = StepSearch(engine, judge, config, model_id=stage.model).run(problems, stage.out)
    from openrlhf_psr.layout import SEARCH_SUMMARY

    out = Path(stage.out)
    (out / SEARCH_SUMMARY).write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"\npairs and trajectories: {out}/{{pairs,trajectories}}/  summary: {out / SEARCH_SUMMARY}")
    return summary


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.search", __doc__)


if __name__ == "__main__":
    from openrlhf_psr.cli.app import exit_without_teardown

    exit_without_teardown(main())
