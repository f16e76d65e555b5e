"""One command table and one boolean style: every subcommand is registered the same way, every boolean flag takes
exactly ``on`` or ``off``, and the commands the launcher writes parse with the stages' own parsers."""

from __future__ import annotations

import argparse
import doctest
import shlex
from pathlib import Path

import pytest

from openrlhf_psr.cli import app, main
from openrlhf_psr.cli.app import UsageError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_doctests():
    import openrlhf_psr.cli.search as search
    import openrlhf_psr.errors as errors

    for module in (app, errors, search):
        assert doctest.testmod(module).failed == 0, module.__name__


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _boolean_flags() -> list[tuple[str, str, argparse.Action]]:
    """(command, flag, action) for every flag whose default is a boolean, across the whole command table."""
    out = []
    for name, sub in _subparsers(main.build_parser()).items():
        for action in sub._actions:
            if isinstance(action.default, bool) and action.option_strings:
                out.append((name, action.option_strings[0], action))
    return out


def test_every_subcommand_is_a_module_with_add_arguments_and_run():
    import importlib

    subs = _subparsers(main.build_parser())
    expected = {"run", "status", "report", "search", "evaluate", "sft-data", "reward-file", "doctor", "demo", "plan"}
    assert set(subs) == set(main.COMMANDS) and expected <= set(subs), sorted(expected - set(subs))
    for name, (module_name, _) in main.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name
        assert subs[name].get_default("func") is module.run, name


@pytest.mark.parametrize("name", sorted(main.COMMANDS))
def test_every_command_module_answers_through_the_one_error_handler(name, capsys):
    """``python -m`` of each command module parses with the same one-line errors and exit status as the table."""
    import importlib

    module = importlib.import_module(main.COMMANDS[name][0])
    assert module.main(["--no-such-flag"]) == app.EXIT_USER_ERROR  # unknown flag, or a missing required argument
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("openrlhf-psr: error: ") and "--help)" in err[0], err


def test_no_command_is_dispatched_by_argv_and_the_table_imports_no_command():
    """Only ``cli/main.py`` reads ``sys.argv`` (and ``train_step_dpo``, which hands it to upstream's parser); no
    module imports ``cli/main.py`` back, so the table and its commands cannot import each other."""
    import ast

    for path in sorted((REPO / "openrlhf_psr" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {f"openrlhf_psr.cli.{a.name}" for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module == "openrlhf_psr.cli" for a in n.names}  # fmt: skip
        assert "openrlhf_psr.cli.main" not in imported, path.name
        if path.stem not in ("main", "train_step_dpo"):
            reads_argv = any(isinstance(n, ast.Attribute) and n.attr == "argv" for n in ast.walk(tree))
            assert not reads_argv, f"{path.name} reads sys.argv"


BOOLEANS = _boolean_flags()


def test_the_table_has_boolean_flags_to_check():
    flags = {(c, f) for c, f, _ in BOOLEANS}
    assert {("search", "--chat-template"), ("search", "--both-orders"), ("search", "--filter-wrong"),
            ("evaluate", "--chat-template"), ("sft-data", "--chat-template")} <= flags  # fmt: skip


@pytest.mark.parametrize(("command", "flag", "action"), BOOLEANS, ids=[f"{c} {f}" for c, f, _ in BOOLEANS])
def test_every_boolean_flag_takes_on_or_off_and_rejects_anything_else(command, flag, action):
    if action.nargs == 0:  # a switch without a value (--dry-run, --debug): present or absent, nothing to mistype
        assert isinstance(action, argparse._StoreTrueAction), (command, flag)
        return
    assert action.type is app.on_off, f"{command} {flag}: a boolean flag must use cli.app.on_off"
    parser = _subparsers(main.build_parser())[command]
    required = ["--out", "x"] if command in ("search", "sft-data") else []
    required += ["--model", "m", "--out", "x"] if command == "evaluate" else []
    for spelling, value in (("on", True), ("off", False)):
        assert getattr(parser.parse_args([*required, flag, spelling]), action.dest) is value
    for bad in ("maybe", "true", "false", "1", "yes", "ON"):
        with pytest.raises(UsageError, match=rf"argument {flag}: expected on or off, found '{bad}'"):
            parser.parse_args([*required, flag, bad])


def test_train_step_dpo_booleans_use_the_same_spelling():
    from openrlhf_psr.cli.train_step_dpo import PSR_FLAGS, PSR_SETTINGS

    assert PSR_FLAGS["chat_template"]["choices"] == ["on", "off"]
    assert PSR_SETTINGS["reference"] == ("cached", "live") and PSR_SETTINGS["prefix_key"] is None


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_launcher_commands_parse_with_each_stage_parser_and_keep_the_recipe_booleans(recipe, tmp_path):
    """The launcher writes on/off for every boolean and each stage's config; each stage's own parser reads back the
    recipe's values."""
    import importlib

    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import Recipe, load_recipe

    loaded = load_recipe(REPO / "recipes" / recipe) if recipe == "tiny_cpu.yaml" else None
    if loaded is None:  # the paper's recipes name data that may be absent here: validate the schema only
        import yaml

        loaded = Recipe.model_validate(yaml.safe_load((REPO / "recipes" / recipe).read_text()))
    for flip in (False, True):
        data = loaded.model_dump()
        if flip:  # every boolean the commands carry, set the other way
            data["psr"]["chat_template"] = not data["psr"]["chat_template"]
            for key, value in data["psr"]["search"].items():
                if isinstance(value, bool):
                    data["psr"]["search"][key] = not value
        r = Recipe.model_validate(data)
        parsed = 0
        for stage in RecipeRun(r, runs_dir=tmp_path).plan():
            stage.write_config()  # as the launcher does when the stage starts
            cmd = stage.command
            if "-m" not in cmd or not cmd[cmd.index("-m") + 1].startswith("openrlhf_psr.cli."):
                continue
            module = importlib.import_module(cmd[cmd.index("-m") + 1])
            if not hasattr(module, "add_arguments"):
                continue  # train_step_dpo: upstream's parser (checked by the integration dry-run test)
            parser = app.Parser(prog=module.__name__)
            module.add_arguments(parser)
            try:
                args = parser.parse_args(cmd[cmd.index("-m") + 2 :])
            except UsageError as exc:
                raise AssertionError(f"{stage.name}: {exc}\n{shlex.join(cmd)}") from None
            if hasattr(module, "stage_config"):  # search, evaluate: the settings come from the stage's config
                args = module.stage_config(args)
            if hasattr(args, "chat_template"):
                assert args.chat_template is r.psr.chat_template, stage.name
            if hasattr(args, "search"):  # the search: every boolean search setting arrives as set
                for key, value in r.psr.search.model_dump().items():
                    if isinstance(value, bool):
                        assert getattr(args.search, key) is value, (stage.name, key)
            parsed += 1
        assert parsed >= 2, f"{recipe}: expected the search/evaluate/report commands, parsed {parsed}"


@pytest.mark.parametrize("command", ["search", "evaluate"])
def test_every_boolean_setting_of_search_and_evaluate_is_an_on_off_flag_that_reaches_the_stage_config(command):
    """Each boolean field of the stage's config has a flag (generated from the config, none listed by hand) that
    takes exactly on/off, rejects ``maybe``, and sets that field (over a config file that says otherwise)."""
    import importlib
    import json

    from openrlhf_psr.cli.config_args import leaf_settings
    from openrlhf_psr.recipe import EvaluateConfig, SearchStageConfig

    module = importlib.import_module(main.COMMANDS[command][0])
    parser = app.Parser(prog=command)
    module.add_arguments(parser)
    actions = {action.dest: action for action in parser._actions}
    cls = SearchStageConfig if command == "search" else EvaluateConfig
    booleans = [".".join(path) for path, info, _ in leaf_settings(cls) if info.annotation is bool]
    assert len(booleans) >= 4, booleans
    for dotted in booleans:
        flag = actions[dotted].option_strings[0]
        assert actions[dotted].type is app.on_off, flag
        for spelling, value in (("on", True), ("off", False)):
            # a --set of the opposite value comes first: the flag wins
            config = module.stage_config(parser.parse_args(["--out", "x", "--set", f"{dotted}={json.dumps(not value)}",
                                                            flag, spelling]))  # fmt: skip
            for part in dotted.split("."):
                config = getattr(config, part)
            assert config is value, (flag, spelling)
        with pytest.raises(UsageError, match=rf"argument {flag}: expected on or off, found 'maybe'"):
            parser.parse_args(["--out", "x", flag, "maybe"])


def test_one_flag_of_a_section_keeps_the_sections_other_defaults():
    """``openrlhf-psr search ... --max-model-len 1024`` (the README's command) gave ``generator.max_model_len`` alone
    and failed with "--generator: expected a value": the section's default name was lost."""
    from openrlhf_psr.cli import evaluate, search
    from openrlhf_psr.cli.app import Parser

    parser = Parser(prog="search")
    search.add_arguments(parser)
    args = parser.parse_args(["--model", "default", "--problems", "builtin:arith?n=2", "--out", "o",
                              "--max-model-len", "1024", "--judge-settings", '{"max_tokens": 8}'])  # fmt: skip
    config = search.stage_config(args)
    assert (config.generator.name, config.generator.max_model_len) == ("vllm", 1024)
    assert (config.judge.name, config.judge.settings) == ("generative", {"max_tokens": 8})
    parser = Parser(prog="evaluate")
    evaluate.add_arguments(parser)
    args = parser.parse_args(["--model", "default", "--out", "o", "--benchmark", "arith?n=2",
                              "--generator-settings", '{"enforce_eager": true}'])  # fmt: skip
    assert evaluate.stage_config(args).generator.name == "vllm"
