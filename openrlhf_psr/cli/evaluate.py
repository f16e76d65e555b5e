"""``python -m openrlhf_psr.cli.evaluate``: greedy accuracy, format-following, step statistics and judge accuracy
of one model, written to ``OUT/eval.json`` (one engine for everything).

Benchmarks are ``NAME[?OPTIONS]`` or ``NAME=SOURCE`` (:mod:`openrlhf_psr.data.sources`): a paper benchmark under
``--data-root`` (e.g. ``gsm8k?limit=50``), a paper benchmark from another file or dataset
(``math500=jsonl:/path/test.jsonl``), or the built-in task (``arith?n=24``, seed 7 unless given). Judge sets are
sources: ``builtin:arith?n=N`` (seed 1000 unless given), ``prm800k:PATH[?limit=N]`` or ``search:DIR[?limit=N]`` (a
search's own right-vs-wrong candidates, labelled by the exact checker); judges are registry names
(``generative``, ``logit``).
A killed evaluation resumes: every finished benchmark and judge set is kept whole under ``OUT/parts/`` and reused
while the model's files and the settings are unchanged (:mod:`openrlhf_psr.eval.parts`); test-time scaling resumes
from its search shards.

Settings (:class:`openrlhf_psr.recipe.EvaluateConfig`): ``--config FILE`` (the launcher's ``<eval dir>/config.json``),
then ``--set KEY.PATH=VALUE``, then one flag per setting (``--benchmark`` and ``--judge`` repeat; the test-time
scaling ones are ``--tts-benchmark``, ``--tts-judge`` and ``--tts-`` plus any search setting, e.g. ``--tts-width``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from openrlhf_psr.errors import UserError
from openrlhf_psr.recipe import EvaluateConfig


def parse_benchmark(spec: str):
    """A ``--benchmark`` spec parsed (:func:`openrlhf_psr.data.sources.parse_benchmark`), its name checked.

    >>> str(parse_benchmark("gsm8k?limit=50")), parse_benchmark("math500=jsonl:/d/t.jsonl?limit=10").name
    ('gsm8k?limit=50', 'math500')
    """
    from openrlhf_psr.data import sources
    from openrlhf_psr.eval.benchmarks import BENCHMARKS

    return sources.parse_benchmark(spec, names=(*BENCHMARKS, "arith"))


def load_eval_problems(spec: str, data_root: str | None, seed: int):
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.eval.benchmarks import load_benchmark

    bench = parse_benchmark(spec)
    source = bench.resolve(data_root)
    if bench.name == "arith":  # the built-in task, or a file kept whole unless it has a limit
        return bench.name, load_problems(source)
    return bench.name, load_benchmark(bench.name, source=source, seed=seed)


def load_judge_pairs(spec: str, seed: int):
    """A judge set from a ``builtin:arith?n=N`` (default 16 pairs, seed 1000, the task's difficulty knobs),
    ``prm800k:PATH[?limit=N]`` or ``search:DIR[?limit=N]`` (a search's own candidates) source; its name is the
    source's kind."""
    from openrlhf_psr.data.sources import JUDGE_PAIRS, parse_source
    from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs, prm800k_judge_pairs

    source = parse_source(spec, JUDGE_PAIRS)
    if source.kind == "builtin":
        return source.kind, builtin_judge_pairs(source.get("n", 16), source.get("seed", 1000), source.difficulty())
    if source.kind == "search":  # the model's own candidates, labelled by the exact checker
        from openrlhf_psr.data.own_steps import own_step_judge_pairs

        return source.kind, own_step_judge_pairs(source.path, source.get("limit"), seed)
    return source.kind, prm800k_judge_pairs(str(source.path), source.get("limit"), seed)


def load_tie_pairs(spec: str) -> list:
    """For a built-in judge set: its problems' two-wrong-step pairs (``eval.builtin_judge.builtin_tie_pairs``),
    where a judge offered a tie should call one; for a search folder, its rounds' two wrong candidates; none for
    PRM800K (no pair there is known to be a tie)."""
    from openrlhf_psr.data.sources import JUDGE_PAIRS, parse_source
    from openrlhf_psr.eval.builtin_judge import builtin_tie_pairs

    source = parse_source(spec, JUDGE_PAIRS)
    if source.kind == "search":  # the two wrong candidates of a round: the model's own slips
        from openrlhf_psr.data.own_steps import own_step_judge_pairs

        return own_step_judge_pairs(source.path, source.get("limit"), ties=True)
    if source.kind != "builtin":
        return []
    return builtin_tie_pairs(source.get("n", 16), source.get("seed", 1000), source.difficulty())


def _judge_settings(name: str, config: EvaluateConfig) -> dict:
    """Settings of a built-in judge: the prompt format of the model under evaluation (``--chat-template``, the
    recipe's), the explanation caps (generative; logit with ``judge_reason_tokens``) and the tie offer
    (``judge_tie``); plugins' judges get none."""
    if name not in ("generative", "logit", "outcome"):
        return {}
    settings: dict = {"chat_template": config.chat_template}
    if name == "generative":
        settings["max_tokens"] = config.judge_max_tokens
    if name == "logit" and config.judge_reason_tokens:
        settings["reason_tokens"] = config.judge_reason_tokens
    if name in ("generative", "logit") and config.judge_tie:
        settings["tie"] = True
    return settings


def _part_settings(config: EvaluateConfig) -> dict:
    """What every finished part depends on besides its own inputs: the model's files and the settings (the
    output folder and the lists of parts to run are not among them)."""
    from openrlhf_psr.fingerprint import model_fingerprint

    settings = config.model_dump(mode="json", exclude={"out", "benchmarks", "judge_sets", "judges"})
    settings["tts"].pop("benchmarks")
    return {"model_files": model_fingerprint(config.model), **settings}


# The flags of the evaluation's config (recipe.EvaluateConfig) that are not simply the setting's name.
FLAG_NAMES = {"benchmarks": "--benchmark", "judge_sets": "--judge-set", "judges": "--judge",
              "tts.benchmarks": "--tts-benchmark", "generator.name": "--generator"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (what the launcher writes), ``--set KEY.PATH=VALUE``, and a flag per setting (the test-time
    scaling ones start with ``--tts-``)."""
    from openrlhf_psr.cli.config_args import add_config_arguments

    add_config_arguments(parser, EvaluateConfig, names=FLAG_NAMES)


def stage_config(args: argparse.Namespace) -> EvaluateConfig:
    """The evaluation's settings: ``--config``, then ``--set``, then flags; bad ones are one line each."""
    from openrlhf_psr.cli.config_args import config_from_args

    return config_from_args(args, EvaluateConfig)


def check_arguments(config: EvaluateConfig) -> None:
    """What can be checked before an engine starts: specs parse, judges exist, tts benchmarks are benchmarks."""
    from openrlhf_psr.data.sources import JUDGE_PAIRS, SourceError, parse_source
    from openrlhf_psr.registry import GENERATORS, JUDGES, RegistryError

    names = []
    for flag, specs in (("--benchmark", config.benchmarks), ("--judge-set", config.judge_sets)):
        for spec in specs:
            try:
                if flag == "--benchmark":
                    names.append(parse_benchmark(spec).name)
                else:
                    parse_source(spec, JUDGE_PAIRS)
            except SourceError as exc:
                raise UserError(f"{flag} {exc}") from None
    unknown = set(config.tts.benchmarks) - set(names)
    if unknown:
        raise UserError(f"--tts-benchmark {sorted(unknown)}: expected names also given as --benchmark")
    flags = [("--judge", name) for name in (config.judges if config.judge_sets else [])]
    flags += [("--tts-judge", config.tts.judge)] if config.tts.benchmarks else []
    for flag, name in flags:
        try:
            JUDGES.get(name)
        except RegistryError as exc:
            raise UserError(f"{flag} {name}: {exc}") from None
    try:
        GENERATORS.get(config.generator.name)
    except RegistryError as exc:
        raise UserError(f"--generator {config.generator.name}: {exc}") from None


def engine_settings(config: EvaluateConfig) -> dict:
    """The generator's settings: the config's (the recipe's ``psr.generator.settings`` with ``cluster.eval``'s engines
    x TP) with the by-hand ``--tensor-parallel-size`` (above 1) and ``--gpu-memory-utilization`` on top.

    >>> engine_settings(EvaluateConfig(out="o", generator={"name": "openrlhf_ray", "settings": {"num_engines": 4}},
    ...                                tensor_parallel_size=2))
    {'num_engines': 4, 'tensor_parallel_size': 2}
    """
    settings = dict(config.generator.settings)
    if config.tensor_parallel_size > 1:
        settings["tensor_parallel_size"] = config.tensor_parallel_size
    if config.gpu_memory_utilization is not None:
        settings["gpu_memory_utilization"] = config.gpu_memory_utilization
    return settings


def build_engine(config: EvaluateConfig):
    """The evaluation's engine through the generator plugin, as the search builds its own: OpenRLHF's Ray engines
    (``openrlhf_ray``) on a cluster, the in-process ``vllm`` engine on one box, or any registered generator."""
    from openrlhf_psr.registry import GENERATORS

    generator = GENERATORS.get(config.generator.name)
    return generator.from_config(config.model, seed=config.seed, max_model_len=config.max_model_len,
                                 **engine_settings(config))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.evaluate", __doc__)


def run(args: argparse.Namespace) -> int:
    cfg = stage_config(args)
    check_arguments(cfg)

    from openrlhf_psr.eval.generate import greedy_solutions, score_solutions
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy, tie_rate
    from openrlhf_psr.eval.parts import EvalParts
    from openrlhf_psr.io import atomic_write_text
    from openrlhf_psr.judges.base import JudgeContext, build_judge

    benchmarks = [load_eval_problems(s, cfg.data_root, cfg.seed) for s in cfg.benchmarks]  # fail before the engine
    judge_sets = [load_judge_pairs(s, cfg.seed) for s in cfg.judge_sets]
    tie_sets = {name: load_tie_pairs(s) for s, (name, _) in zip(cfg.judge_sets, judge_sets, strict=True)
                if cfg.judge_tie}  # fmt: skip
    engine = build_engine(cfg)
    engine.progress = True  # a bar per long call (a benchmark's solutions, a judge set), shown by the launcher
    result: dict = {"model": cfg.model, "benchmarks": {}, "judges": {}}
    parts = EvalParts(cfg.out, settings=_part_settings(cfg))  # finished parts of a killed run are reused
    for name, problems in benchmarks:
        scored = parts.get(f"benchmark-{name}", problems)
        if scored is not None:
            print(f"{name}: resumed from {parts.dir}", flush=True)
        else:
            start = time.perf_counter()
            texts = greedy_solutions(engine, problems, prompt=cfg.prompt, max_tokens=cfg.max_tokens,
                                     chat_template=cfg.chat_template, fewshot=cfg.fewshot)  # fmt: skip
            scored = score_solutions(problems, texts, tokenizer=engine.tokenizer, progress=True)
            scored["metrics"]["seconds"] = time.perf_counter() - start
            parts.put(f"benchmark-{name}", problems, scored)
        result["benchmarks"][name] = scored
        print(f"{name}: {json.dumps(scored['metrics'])}", flush=True)
    context = JudgeContext(model=cfg.model, engine=engine)
    if cfg.tts.benchmarks:
        from openrlhf_psr.eval.tts import run_test_time_scaling
        from openrlhf_psr.search import SearchConfig

        config = SearchConfig(**cfg.tts.model_dump(exclude={"benchmarks", "judge"}), chat_template=cfg.chat_template,
                              seed=cfg.seed)  # fmt: skip
        judge = build_judge(cfg.tts.judge, context, **_judge_settings(cfg.tts.judge, cfg))
        result["test_time_scaling"] = {}
        engine.progress = False  # the search's many short calls: its own bar
        for name, problems in benchmarks:
            if name in cfg.tts.benchmarks:
                metrics = run_test_time_scaling(engine, judge, problems, Path(cfg.out) / "tts" / name, config)
                result["test_time_scaling"][name] = metrics
                print(f"test-time scaling {name}: {json.dumps(metrics)}", flush=True)
        engine.progress = True
    for judge_name in cfg.judges if cfg.judge_sets else []:
        settings = _judge_settings(judge_name, cfg)
        judge = build_judge(judge_name, context, **settings)
        for set_name, pairs in judge_sets:
            metrics = parts.get(f"judge-{judge_name}-{set_name}", pairs)
            if metrics is None:
                metrics = judge_accuracy(judge, pairs)
                if settings.get("tie") and tie_sets.get(set_name):
                    metrics.update(tie_rate(judge, tie_sets[set_name]))  # and how often it says neither, rightly
                parts.put(f"judge-{judge_name}-{set_name}", pairs, metrics)
            result["judges"][f"{judge_name}/{set_name}"] = metrics
            print(f"judge {judge_name} on {set_name}: {json.dumps(metrics)}", flush=True)
    out = Path(cfg.out)
    from openrlhf_psr.layout import EVAL_FILE

    atomic_write_text(out / EVAL_FILE, json.dumps(result, indent=1))
    engine.close()  # Ray engines give their GPUs back before the next stage places its own
    return 0


if __name__ == "__main__":
    from openrlhf_psr.cli.app import exit_without_teardown

    exit_without_teardown(main())
