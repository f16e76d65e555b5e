"""A stage's command line generated from its typed config, so no setting is listed by hand between the recipe and
the stage.

A stage command (``search``, ``evaluate``) reads one pydantic config (:class:`openrlhf_psr.recipe.SearchStageConfig`,
:class:`openrlhf_psr.recipe.EvaluateConfig`) from, in increasing precedence: the config's defaults, ``--config FILE``
(the JSON the launcher writes to the stage folder; YAML works too), ``--set KEY.PATH=VALUE`` (dotted, the value parsed
as YAML, as a recipe's ``--set``), and one flag per setting for hand use (``--width 4``). A flag's name is its
setting's name with ``-`` (``search.max_rounds`` -> ``--max-rounds``); a section's settings get the section's prefix
unless the command flattens it. Booleans take exactly ``on`` or ``off``; list settings repeat their flag; plugin
settings are a JSON object; ``''`` gives an optional setting ``None``. A bad value is one line naming the flag, the
``--set`` or the config file and key that gave it.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from openrlhf_psr.cli.app import json_object, on_off, on_off_text
from openrlhf_psr.errors import UserError

GIVEN = "config_flags_given"  # namespace attribute: the settings given as flags (dotted path -> flag as typed)
FLAGS = "config_flags"  # namespace attribute: every setting's flag (dotted path -> flag)


def leaf_settings(
    cls: type[BaseModel], prefix: tuple[str, ...] = (), defaults: BaseModel | None = None
) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, field info, default) of every setting of ``cls``, sections expanded; a section's default instance
    gives its settings' defaults (``psr.judge.name`` is ``generative`` though ``name`` alone has no default).

    >>> from openrlhf_psr.recipe import SearchStageConfig
    >>> [(".".join(path), default) for path, _, default in leaf_settings(SearchStageConfig)][:2]
    [('method', 'psr'), ('generator.name', 'vllm')]
    """
    for name, info in cls.model_fields.items():
        if defaults is not None:
            default = getattr(defaults, name)
        else:
            default = None if info.is_required() else info.get_default(call_default_factory=True)
        section = _section_type(info.annotation)
        if section is not None:
            yield from leaf_settings(section, (*prefix, name), default)
        else:
            yield (*prefix, name), info, default


def _section_type(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def flag_name(path: tuple[str, ...], prefixes: dict[str, str], names: dict[str, str]) -> str:
    """The flag of a setting: ``names`` by dotted path, else its sections' prefixes (``prefixes`` by section path,
    default the section's name and ``-``) and its name, with ``-`` for ``_``.

    >>> flag_name(("search", "max_rounds"), {"search": ""}, {}), flag_name(("srlm", "score_samples"), {}, {})
    ('--max-rounds', '--srlm-score-samples')
    """
    dotted = ".".join(path)
    if dotted in names:
        return names[dotted]
    prefix = "".join(prefixes.get(".".join(path[: k + 1]), path[k] + "-") for k in range(len(path) - 1))
    return "--" + (prefix + path[-1]).replace("_", "-")


class _Setting(argparse.Action):
    """Stores the value and remembers that it was given; a list setting's first use replaces the config's list."""

    def __init__(self, *args, many: bool = False, **kwargs):
        self.many = many
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        given = dict(getattr(namespace, GIVEN, None) or {})
        if self.many:
            values = ([*getattr(namespace, self.dest)] if self.dest in given else []) + [values]
        given[self.dest] = option_string
        setattr(namespace, GIVEN, given)
        setattr(namespace, self.dest, values)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type[BaseModel],
    *,
    prefixes: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """``--config``, ``--set`` and one flag per setting of ``cls`` (see the module docstring); the flag's ``dest`` is
    the setting's dotted path."""
    prefixes, names, helps = prefixes or {}, names or {}, helps or {}
    parser.add_argument("--config", default=None, metavar="FILE", help="the stage's config (JSON or YAML), e.g. the "
                        "config.json the launcher wrote to the stage folder; flags and --set override it")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a setting by its dotted path (value parsed as YAML), repeatable")  # fmt: skip
    flags: dict[str, str] = {}
    for path, info, default in leaf_settings(cls):
        dotted, flag = ".".join(path), flag_name(path, prefixes, names)
        if flag in flags:
            raise ValueError(f"{cls.__name__}: {dotted} and {flags[flag]} would both be {flag}")
        flags[flag] = dotted
        help_text = helps.get(dotted) or info.description or ""
        annotation = info.annotation
        kwargs = {"default": default, "dest": dotted, "action": _Setting, "metavar": path[-1].upper()}
        origin = typing.get_origin(annotation)
        if annotation is bool:
            kwargs.update(type=on_off, metavar="{on,off}")
            help_text = f"{help_text}: on or off (default: {on_off_text(default)})"
        elif origin is list:
            kwargs.update(many=True, metavar=flag.removeprefix("--").upper())
            help_text = f"{help_text} (repeatable)"
        elif origin is dict:
            kwargs.update(type=json_object, metavar="JSON")
        elif origin is typing.Literal:
            kwargs.update(choices=list(typing.get_args(annotation)), metavar=None)
        if not isinstance(default, bool) and default not in (None, [], {}):
            help_text = f"{help_text} (default: {default})"
        parser.add_argument(flag, help=f"{help_text} [{dotted}]", **kwargs)
    parser.set_defaults(**{GIVEN: None, FLAGS: {dotted: flag for flag, dotted in flags.items()}})


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"{'.'.join(path)}: expected {key!r} to be a section, found a value")
    node[path[-1]] = value


def read_config_file(path: str | Path) -> dict:
    """A config file as a mapping; a missing or malformed one is a one-line error naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: expected a config file (JSON or YAML), found no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise UserError(f"--config {path}: expected JSON or YAML, found a syntax error ({reason})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def _complete_sections(data: dict, cls: type[BaseModel]) -> None:
    """Fill the settings a partly given section leaves out with that section's defaults, so ``--max-model-len 1024``
    alone (``generator.max_model_len``) keeps the default ``generator.name`` instead of leaving it missing.

    >>> from openrlhf_psr.recipe import SearchStageConfig
    >>> data = {"generator": {"max_model_len": 1024}}
    >>> _complete_sections(data, SearchStageConfig)
    >>> data["generator"]
    {'max_model_len': 1024, 'name': 'vllm', 'settings': {}}
    """
    import copy

    for path, info, default in leaf_settings(cls):
        if len(path) < 2 or (default is None and info.is_required()):
            continue
        node: Any = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] not in node:
            node[path[-1]] = copy.deepcopy(default)


def config_from_args(args: argparse.Namespace, cls: type[BaseModel]):
    """The validated config: defaults < ``--config`` < ``--set`` < flags; each error line names where the bad (or
    missing) value came from."""
    from openrlhf_psr.recipe import RecipeError, apply_override

    data = read_config_file(args.config) if args.config else {}
    origin: dict[str, str] = {}
    for assignment in args.set:
        try:
            apply_override(data, assignment)
        except RecipeError as exc:
            raise UserError(str(exc)) from None
        origin[assignment.partition("=")[0].strip()] = f"--set {assignment}"
    optional = {".".join(path) for path, info, _ in leaf_settings(cls) if _optional(info.annotation)}
    for dotted, flag in sorted((getattr(args, GIVEN, None) or {}).items()):
        value = getattr(args, dotted)
        _set_path(data, dotted.split("."), None if value == "" and dotted in optional else value)
        origin[dotted] = flag
    _complete_sections(data, cls)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UserError.of(_error_lines(exc, origin, args.config, getattr(args, FLAGS, None) or {})) from None


def _error_lines(exc: ValidationError, origin: dict[str, str], config: str | None, flags: dict) -> list[str]:
    from openrlhf_psr.recipe import _found

    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        msg = "expected " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ") else msg
        got = f", found {_found(err['input'])}" if err["type"] not in ("value_error", "missing") else ""
        where = next((origin[k] for k in sorted(origin, key=len, reverse=True) if loc == k or loc.startswith(k + ".")),
                     None)  # fmt: skip
        key, colon, rest = msg.partition(": ")
        if not loc and colon and key in flags:  # a check across settings, naming the one at fault
            where, msg = flags[key], rest
        elif where is None and err["type"] == "missing" and loc in flags:
            where, msg = flags[loc], f"expected a value (the flag, or {loc} in --config)"
        elif where is None:
            where = f"{config}: {loc or '(top level)'}" if config else (loc or "(top level)")
        elif where.startswith("--set"):
            where = f"{where}: {loc}"
        lines.append(f"{where}: {msg}{got}")
    return lines
