"""Plugin registries: generators, judges and trainers chosen by name in config.

A name resolves, in order, to: a built-in or decorated registration (``@JUDGES.register("logit")``); an installed
entry point in the group ``openrlhf_psr.<kind>`` (how a third-party package plugs in); or a ``module:attr`` import
string (needed under Ray's ``working_dir``, where entry points of an uninstalled package do not exist). Built-ins
register the same way a third party would, and a name can be registered only once.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points


class RegistryError(LookupError):
    """An unknown or duplicate plugin name; the message lists what is available."""


class Registry:
    def __init__(self, kind: str, builtins: dict[str, str] | None = None):
        self.kind = kind
        self.group = f"openrlhf_psr.{kind}"
        self._items: dict[str, object] = {}
        self._builtins = dict(builtins or {})  # name -> "module:attr", imported on first use (keeps imports light)

    def register(self, name: str) -> Callable:
        """Decorator: ``@JUDGES.register("my_judge")``. A name already taken is an error."""

        def decorate(obj):
            if name in self._items or name in self._builtins:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorate

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted({*self._items, *self._builtins, *self._entry_points()})

    def get(self, name: str):
        if name in self._items:
            return self._items[name]
        if name in self._builtins:
            return load_import_string(self._builtins[name])
        eps = self._entry_points()
        if name in eps:
            return eps[name].load()
        if ":" in name:
            return load_import_string(name)
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}{hint} Available: {', '.join(self.names())}; or give 'module:attr', or "
            f"install a package with an entry point in the group {self.group!r}"
        )


def load_import_string(spec: str):
    """``"package.module:attr"`` -> the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"{spec!r} is not an import string of the form 'module:attr'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module {module_name!r} from {spec!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


JUDGES = Registry(
    "judges",
    {
        "generative": "openrlhf_psr.judges.generative:GenerativeJudge",
        "logit": "openrlhf_psr.judges.logit:LogitJudge",
        "outcome": "openrlhf_psr.judges.outcome:OutcomeJudge",
        "oracle": "openrlhf_psr.judges.oracle:OracleJudge",
        "random": "openrlhf_psr.judges.random_judge:RandomJudge",
        "likelihood": "openrlhf_psr.judges.likelihood:LikelihoodJudge",
    },
)
GENERATORS = Registry(
    "generators",
    {
        "vllm": "openrlhf_psr.engines.vllm_local:VLLMLocalEngine",
        "openrlhf_ray": "openrlhf_psr.engines.openrlhf_ray:OpenRLHFRayEngine",
        "openai_http": "openrlhf_psr.engines.openai_http:OpenAIHTTPEngine",
    },
)
TRAINERS = Registry("trainers", {"step_dpo": "openrlhf_psr.trainers.plugin:StepDPOPlugin"})
