"""One config layer: the recipe's search, judge, generator and evaluation sections are the configs the stages read.

Every field is set to a value that is not its default, the launcher plans the run, each stage's config file is
written as the launcher writes it and parsed by the stage's own command line, and every value must arrive. A field
added to a section without reaching its stage fails here (the test builds a non-default value for every field)."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

import pytest

from openrlhf_psr.launcher import RecipeRun
from openrlhf_psr.recipe import EvalSettings, GeneratorSpec, PluginSpec, SearchSpec, SRLMSpec, TTSSpec, load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# Fields whose other value cannot be derived from the type alone (a name must resolve, a spec must parse).
SPECIAL = {
    "psr.generator.name": "openai_http",
    "psr.generator.settings": {"base_url": "http://127.0.0.1:9/v1", "concurrency": 3},
    "psr.judge.name": "outcome",
    "psr.judge.settings": {"rollouts": 2},
    "data.eval.benchmarks": ["arith?n=5"],
    "data.eval.judge_sets": ["builtin:arith?n=3"],
    "data.eval.judges": ["logit"],
    "data.eval.tts.benchmarks": ["arith"],
    "data.eval.tts.judge": "logit",
    "data.eval.tts.majority_filter": 0,  # refused there: the test-time search's pairs train nothing
}


def _other(default):
    """A valid value of the same type that differs from ``default``."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return round(default * 0.5 + 0.125, 4)
    raise AssertionError(f"no other value known for {default!r}: add it to SPECIAL")


def _non_defaults(section: str, cls) -> dict[str, object]:
    """dotted recipe key -> a non-default value, for every field of ``cls`` (sections excluded)."""
    out = {}
    for name, info in cls.model_fields.items():
        key = f"{section}.{name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, SearchSpec):
            continue  # a nested section (data.eval.tts) is listed on its own
        if key in SPECIAL:
            out[key] = SPECIAL[key]
        elif typing.get_origin(info.annotation) is typing.Literal:
            out[key] = next(c for c in typing.get_args(info.annotation) if c != info.default)
        elif key == "data.eval.data_root":
            out[key] = "@tmp"  # an existing folder, filled in by the test
        else:
            out[key] = _other(info.get_default(call_default_factory=True))
    return out


def _all_non_defaults() -> dict[str, object]:
    values = {}
    for section, cls in (("psr.search", SearchSpec), ("psr.generator", GeneratorSpec), ("psr.judge", PluginSpec),
                         ("psr.srlm", SRLMSpec), ("data.eval", EvalSettings), ("data.eval.tts", TTSSpec)):  # fmt: skip
        values.update(_non_defaults(section, cls))
    values.update({"psr.method": "srlm", "psr.chat_template": False, "seed": 5,
                   "data.prompts.source": "builtin:arith?seed=3", "data.prompts.question_key": "q",
                   "data.prompts.answer_key": "a", "data.prompts.answer_rule": "gsm8k",
                   "data.prompts.split": "test"})  # fmt: skip
    return values


def _parsed_stage_configs(run: RecipeRun) -> dict[str, object]:
    """Each configured stage's config as its own command line parses it (after the launcher wrote the file)."""
    import importlib

    out = {}
    for stage in run.plan():
        if stage.config is None:
            continue
        stage.write_config()
        assert stage.config_file.parent == Path(stage.config["out"])  # in the stage folder
        module_name = stage.command[stage.command.index("-m") + 1]
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        argv = stage.command[stage.command.index("-m") + 2 :]
        assert argv == ["--config", str(stage.config_file)], f"{stage.name}: settings listed by hand: {argv}"
        out[stage.name] = module.stage_config(parser.parse_args(argv))
    return out


def test_every_search_judge_generator_and_eval_field_reaches_the_stage_that_uses_it(tmp_path):
    from openrlhf_psr.cli.search import search_config

    values = _all_non_defaults()
    values["data.eval.data_root"] = str(tmp_path)
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    # tiny_cpu scores its judge on M1 alone; here M0 and M2 too
    overrides += ["data.eval.judges_before_training=true", "data.eval.judges_every_iteration=true"]
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", overrides)
    for key, value in values.items():  # the overrides took (the recipe's own values are not the defaults)
        node = recipe
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key

    stages = _parsed_stage_configs(RecipeRun(recipe, runs_dir=tmp_path / "runs"))
    assert {"eval_m0", "eval_m1", "iter_1/search", "iter_1/eval"} <= set(stages)
    search = stages["iter_1/search"]
    assert search.method == "srlm" and search.chat_template is False and search.seed == 5 + 1
    assert search.problems.model_dump() == {"source": "builtin:arith?seed=3", "question_key": "q", "answer_key": "a",
                                            "answer_rule": "gsm8k", "split": "test"}  # fmt: skip
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        if section in ("psr.search", "psr.generator", "psr.judge", "psr.srlm"):
            assert getattr(getattr(search, section.split(".")[1]), name) == value, key
    # what the search itself runs with: psr.search plus the prompt format and the seed
    config = search_config(search)
    assert all(getattr(config, name) == values[f"psr.search.{name}"] for name in SearchSpec.model_fields)
    assert (config.chat_template, config.seed) == (False, 6)

    for name in ("eval_m0", "eval_m1", "iter_1/eval"):
        evaluation = stages[name]
        for key, value in values.items():
            section, _, field = key.rpartition(".")
            if section == "data.eval":
                assert getattr(evaluation, field) == value, (name, key)
            elif section == "data.eval.tts":
                assert getattr(evaluation.tts, field) == value, (name, key)
        assert evaluation.max_model_len == values["psr.generator.max_model_len"]
        assert evaluation.generator.name == values["psr.generator.name"]  # evaluation builds its engine alike
        assert evaluation.generator.settings == values["psr.generator.settings"]
        assert evaluation.chat_template is False and evaluation.seed == 5
    assert stages["iter_1/eval"].model == str(tmp_path / "runs" / "tiny_cpu" / "iter_1" / "model")


def test_the_old_max_model_len_key_names_its_new_place(tmp_path):
    from openrlhf_psr.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"psr\.search: key 'max_model_len' has moved: expected "
                                          r"psr\.generator\.max_model_len"):  # fmt: skip
        load_recipe(RECIPES / "tiny_cpu.yaml", ["psr.search.max_model_len=1024"])


def test_a_changed_setting_reruns_the_stage_and_an_unchanged_one_does_not(tmp_path):
    """The config file is part of the stage's fingerprint (its settings, and the model folder it names)."""
    from openrlhf_psr.fingerprint import ContentHasher, changes

    def fingerprints(*overrides):
        run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", list(overrides)), runs_dir=tmp_path / "runs")
        hasher = ContentHasher()
        return {s.name: run.fingerprint(s, hasher) for s in run.plan()}

    base = fingerprints()
    assert fingerprints() == base
    for override, stage in (("psr.search.judge_retries=4", "iter_1/search"),
                            ("psr.search.max_prompt_tokens=1000", "iter_1/search"),
                            ("psr.srlm.score_samples=5", "iter_1/search"),
                            ("psr.generator.max_model_len=1024", "iter_1/search"),
                            ("data.eval.tts.width=3", "eval_m0")):  # fmt: skip
        changed = fingerprints(override)
        assert changes(base[stage], changed[stage]) == ["its command or settings"], override
        assert changed["sft"] == base["sft"], override  # a stage that does not read the setting keeps its own
    # the model folder the search config names is an input: a retrained M1 reruns the search
    model = tmp_path / "runs" / "tiny_cpu" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    before = fingerprints()["iter_1/search"]
    assert "<run>/sft/model" in before["inputs"]
    (model / "config.json").write_text('{"retrained": true}')
    assert changes(before, fingerprints()["iter_1/search"]) == ["input <run>/sft/model"]


def test_a_stage_rerun_from_scratch_clears_its_folder_and_writes_its_config_again(tmp_path):
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path)
    search = next(s for s in run.plan() if s.name == "iter_1/search")
    search.write_config()
    (search.config_file.parent / "trajectories").mkdir()
    removed = run._clear_outputs(search)
    assert removed == [search.config["out"]] and not search.config_file.parent.exists()
    search.write_config()
    assert json.loads(search.config_file.read_text()) == search.config


def test_hand_flags_override_the_config_file_and_name_themselves_in_errors(tmp_path):
    from openrlhf_psr.cli import search as search_cli
    from openrlhf_psr.cli.app import Parser
    from openrlhf_psr.errors import UserError

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"out": str(tmp_path / "out"), "search": {"width": 5, "top_p": 0.5}}))
    parser = Parser(prog="search")
    search_cli.add_arguments(parser)
    stage = search_cli.stage_config(parser.parse_args(["--config", str(config), "--width", "4",
                                                       "--set", "search.max_rounds=7"]))  # fmt: skip
    assert (stage.search.width, stage.search.top_p, stage.search.max_rounds) == (4, 0.5, 7)
    plain = search_cli.stage_config(parser.parse_args(["--out", "x", "--width", "4", "--judge", "logit"]))
    assert plain.search.width == 4 and plain.judge.name == "logit" and plain.generator.name == "vllm"
    with pytest.raises(UserError, match=r"^--width: expected greater than or equal to 2, found '1'$"):
        search_cli.stage_config(parser.parse_args(["--config", str(config), "--width", "1"]))
    config.write_text(json.dumps({"out": "x", "search": {"widht": 5}}))
    with pytest.raises(UserError, match=rf"^{config}: search: unknown key 'widht'; did you mean 'width'\?$"):
        search_cli.stage_config(parser.parse_args(["--config", str(config)]))
    with pytest.raises(UserError, match=r"^--out: expected a value"):
        search_cli.stage_config(parser.parse_args([]))


def test_doctests():
    import doctest

    from openrlhf_psr import launcher
    from openrlhf_psr.cli import config_args

    for module in (config_args, launcher):
        assert doctest.testmod(module).failed == 0, module.__name__


PLUGINS = """
from test_search import RankJudge, ScriptedEngine, good_bad_script


class Scripted(ScriptedEngine):
    @classmethod
    def from_config(cls, model, *, seed=0, max_model_len=0, **settings):
        return cls(good_bad_script)
"""


def test_the_search_stage_runs_with_the_settings_of_its_config(tmp_path, monkeypatch):
    """The launcher's config file, run by the search command itself (a scripted engine and judge from
    ``module:attr``): the trajectories record the recipe's settings, including those no flag listed before."""
    from openrlhf_psr.cli import search as search_cli
    from openrlhf_psr.cli.app import Parser
    from openrlhf_psr.io import ShardStore

    (tmp_path / "config_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    overrides = ["psr.generator.name=config_plugins:Scripted", "psr.judge.name=config_plugins:RankJudge",
                 "psr.judge.settings={}", "psr.chat_template=false", "psr.search.judge_retries=3",
                 "psr.search.max_prompt_tokens=2000", "psr.search.width=3",
                 "stages.prompts_per_iteration=[2]"]  # fmt: skip
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", overrides), runs_dir=tmp_path / "runs")
    stage = next(s for s in run.plan() if s.name == "iter_1/search")
    stage.write_config()
    parser = Parser(prog="search")
    search_cli.add_arguments(parser)
    summary = search_cli.search(parser.parse_args(stage.command[stage.command.index("-m") + 2 :]))
    assert summary["problems"] == 2 and stage.output.is_file()
    [config] = {json.dumps(t["config"], sort_keys=True) for t in ShardStore(stage.config["out"]).read("trajectories")}
    config = json.loads(config)
    assert (config["judge_retries"], config["max_prompt_tokens"], config["width"]) == (3, 2000, 3)
    assert config["chat_template"] is False and config["seed"] == run.recipe.seed + 1


def test_test_time_search_refuses_the_majority_filter():
    # its pairs train nothing: the votes would only cost samples
    with pytest.raises(ValueError, match=r"tts\.majority_filter: expected 0 .* found 4"):
        TTSSpec(majority_filter=4)
    assert SearchSpec(majority_filter=4).majority_filter == 4


def test_a_setting_added_later_stays_out_of_stage_fingerprints_until_it_is_set(tmp_path):
    # a run made before psr.search.majority_filter existed must not rerun its searches and evaluations after an
    # upgrade: the stages' settings (what fingerprints read) are unchanged while the new setting is at its default
    def settings(overrides):
        run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", overrides), runs_dir=tmp_path / "runs")
        return {stage.name: stage.settings_args() for stage in run.plan()}

    before = settings([])
    assert not any("majority" in arg for args in before.values() for arg in args)
    after = settings(["psr.search.majority_filter=5"])
    assert "--search.majority_filter" in after["iter_1/search"] and after["eval_m1"] == before["eval_m1"]
