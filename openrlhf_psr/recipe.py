"""The recipe: one typed, validated YAML file that describes a whole PSR run (M0 -> SFT -> iterations).

Every field is documented here, once. Unknown keys are errors that name the key's path and suggest the closest
valid one; wrong types name the key and the expected type; files named in the recipe must exist (except Hugging
Face dataset names and the built-in task). Command-line overrides use dotted paths: ``--set psr.judge.name=logit``
(the value is parsed as YAML: ``--set stages.iterations=2``, ``--set psr.search.width=4``).

Sections:
- ``model``, ``name``, ``seed``: M0 (``default`` = embedded SmolLM2-135M-Instruct), run name, base seed.
- ``data``: training prompts per iteration, IFT/EFT sources for SFT, evaluation benchmarks and judge sets.
- ``stages``: SFT and the number of PSR iterations with their prompt counts.
- ``psr``: plugins by name (``generator``, ``judge``, ``trainer``) with their settings, and the search settings.
- ``sft`` / ``dpo``: the training hyper-parameters the paper reports, mapped onto upstream flags.
- ``openrlhf``: upstream flags passed through unchanged, per stage (``sft``, ``dpo``), e.g. ``--ds.zero_stage: 3``.
- ``resources``: how stages are launched (local processes, or ``ray job submit`` to a cluster).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any):
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), sorted(known), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(known)}"
                    raise ValueError(f"unknown key {key!r}{hint}")
        return data


class ProblemSource(_Section):
    source: str = Field("builtin:arith", description="builtin:arith[?seed=N], a .jsonl/.parquet path, or HF name")
    question_key: str = Field("question", description="field holding the problem text")
    answer_key: str | None = Field("answer", description="field holding the gold answer (None: no gold)")
    answer_rule: Literal["raw", "gsm8k", "boxed", "first"] = Field("raw", description="gold-answer rule")
    split: str = Field("train", description="split of a HF dataset")


class EvalSpec(_Section):
    benchmarks: list[str] = Field(default_factory=list, description="NAME[=SOURCE][@LIMIT] (see cli.evaluate)")
    data_root: str | None = Field(None, description="folder with <benchmark>/test.jsonl (../shared/data/eval)")
    judge_sets: list[str] = Field(default_factory=list, description="builtin@N | prm800k=PATH[@N]")
    judges: list[str] = Field(default_factory=lambda: ["generative", "logit"], description="judges to score")
    before_training: bool = Field(True, description="also evaluate M0 before any training")
    max_tokens: int = Field(1024, gt=0, description="generation cap per solution")
    judge_max_tokens: int = Field(256, gt=0, description="generative judge explanation cap in evaluation")
    prompt: Literal["step", "qwen_cot"] = Field("step", description="the paper's step prompt or Qwen's CoT prompt")
    fewshot: int = Field(0, ge=0, description="worked examples prepended to each problem (base models)")


class DataSpec(_Section):
    prompts: ProblemSource = Field(default_factory=ProblemSource, description="training prompts for the search")
    ift: list[str] = Field(default_factory=list, description="IFT sources: builtin:N | gsm8k:PATH[:N]")
    eft: list[str] = Field(default_factory=list, description="EFT sources: builtin:N | prm800k:PATH[:N]")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="evaluation after every model")


class SFTStage(_Section):
    enabled: bool = Field(True, description="run SFT (M0 -> M1); off: M1 = M0")
    epochs: int = Field(3, gt=0, description="paper: 3")
    lr: float = Field(1e-6, gt=0, description="paper: 1e-6")
    batch_size: int = Field(32, gt=0, description="global batch (paper: 32)")
    micro_batch_size: int = Field(4, gt=0, description="per device")
    max_len: int = Field(4096, gt=0, description="tokens per example")


class StagesSpec(_Section):
    sft: SFTStage = Field(default_factory=SFTStage, description="M0 -> M1")
    iterations: int = Field(3, ge=0, description="PSR iterations: M1 -> M2 -> ... (paper: 3, to M4)")
    prompts_per_iteration: list[int] = Field(
        default_factory=lambda: [400, 800, 1200], description="training prompts for each iteration (paper)"
    )

    @model_validator(mode="after")
    def _enough_counts(self):
        if len(self.prompts_per_iteration) < self.iterations:
            raise ValueError(
                f"prompts_per_iteration has {len(self.prompts_per_iteration)} entries for {self.iterations} iterations"
            )
        return self


class PluginSpec(_Section):
    name: str = Field(description="registry name, entry point name, or 'module:attr'")
    settings: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the plugin")


class SearchSpec(_Section):
    width: int = Field(6, ge=2, description="candidates per step (paper: 6)")
    temperature: float = Field(0.5, ge=0, description="paper: 0.5")
    top_p: float = Field(0.95, gt=0, le=1, description="paper: 0.95")
    max_tokens_per_step: int = Field(256, gt=0, description="cap on one step")
    max_rounds: int = Field(20, gt=0, description="paper: 20")
    tournament: Literal["round_robin", "knockout"] = Field("round_robin", description="paper: round robin")
    both_orders: bool = Field(True, description="judge each pair in both orders")
    aggregate: Literal["verdict", "prob"] = Field("verdict", description="verdict counting or mean P(better)")
    min_margin: float = Field(0.0, ge=0, description="best-worst margin below this counts as a tie")
    filter_wrong: bool = Field(False, description="drop pairs of wrong final answers (off: pure self-reward)")
    max_model_len: int = Field(4096, gt=0, description="engine context length")


class PSRSpec(_Section):
    method: Literal["psr", "srlm"] = Field(
        "psr", description="psr: step-wise self-judged search; srlm: the Self-Rewarding LM baseline (whole solutions)"
    )
    generator: PluginSpec = Field(default_factory=lambda: PluginSpec(name="vllm"), description="engine plugin")
    judge: PluginSpec = Field(default_factory=lambda: PluginSpec(name="generative"), description="judge plugin")
    trainer: PluginSpec = Field(default_factory=lambda: PluginSpec(name="step_dpo"), description="trainer plugin")
    search: SearchSpec = Field(default_factory=SearchSpec, description="step-wise search settings")
    chat_template: bool = Field(True, description="wrap prompts in the model's chat template (off for base models)")


class DPOSpec(_Section):
    epochs: int = Field(1, gt=0, description="paper: 1")
    lr: float = Field(5e-7, gt=0, description="paper: 5e-7")
    batch_size: int = Field(32, gt=0, description="paper: 32")
    micro_batch_size: int = Field(4, gt=0, description="per device")
    beta: float = Field(0.1, gt=0, description="not reported by the paper; SRLM's 0.1")
    reference: Literal["previous", "m1"] = Field("previous", description="reference of iteration t: M(t) or M1")
    max_len: int = Field(4096, gt=0, description="tokens per packed pair")


class ResourcesSpec(_Section):
    launcher: Literal["local", "ray_job"] = Field("local", description="local processes or `ray job submit`")
    ray_address: str = Field("http://127.0.0.1:8265", description="Ray dashboard address for ray_job")
    working_dir: str = Field(".", description="Ray runtime_env working_dir for ray_job")
    num_gpus: int = Field(0, ge=0, description="GPUs per training stage (deepspeed --num_gpus); 0: CPU")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for every stage")


class Recipe(_Section):
    name: str = Field(description="run name: outputs go to runs/<name>/")
    model: str = Field(description="M0: a HF name/path, or `default`")
    seed: int = Field(0, description="base seed")
    data: DataSpec = Field(default_factory=DataSpec, description="training and evaluation data")
    stages: StagesSpec = Field(default_factory=StagesSpec, description="SFT and iterations")
    psr: PSRSpec = Field(default_factory=PSRSpec, description="plugins and search")
    sft: None = Field(None, exclude=True, description="(use stages.sft)")
    dpo: DPOSpec = Field(default_factory=DPOSpec, description="step-level DPO hyper-parameters")
    openrlhf: dict[Literal["sft", "dpo"], dict[str, Any]] = Field(
        default_factory=dict, description="upstream flags per stage, passed through unchanged"
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="launching")


def apply_override(data: dict, assignment: str) -> dict:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict, in place."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    path, _, raw = assignment.partition("=")
    node = data
    keys = path.strip().split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {assignment!r}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)
    return data


def _format_error(path: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if x != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] not in ("value_error", "missing") else ""
        lines.append(f"{path}: {loc or '(top level)'}: {msg}{got}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_error(str(path), exc)) from None
    check_files(recipe, path)
    check_plugins(recipe, path)
    return recipe


_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _local_file(spec: str) -> str | None:
    """The local file a data spec names (``path``, ``kind:path[:n]``, ``name=path[@n]``), or None for the
    built-in task and Hugging Face dataset names.

    >>> _local_file("gsm8k:/d/train.jsonl:200"), _local_file("math500=/d/t.jsonl@10"), _local_file("builtin:64")
    ('/d/train.jsonl', '/d/t.jsonl', None)
    """
    body = spec.split("=", 1)[-1].split("@", 1)[0]
    for piece in (body.split(":", 1)[-1], body):
        for candidate in (piece, piece.rsplit(":", 1)[0]):
            if candidate.endswith(_DATA_SUFFIXES):
                return candidate
    return None


def check_files(recipe: Recipe, path: Path) -> None:
    specs = [("data.prompts.source", recipe.data.prompts.source)]
    specs += [(f"data.ift[{i}]", s) for i, s in enumerate(recipe.data.ift)]
    specs += [(f"data.eft[{i}]", s) for i, s in enumerate(recipe.data.eft)]
    specs += [(f"data.eval.judge_sets[{i}]", s) for i, s in enumerate(recipe.data.eval.judge_sets)]
    specs += [(f"data.eval.benchmarks[{i}]", s) for i, s in enumerate(recipe.data.eval.benchmarks)]
    for key, spec in specs:
        local = _local_file(spec)
        if local and not Path(local).is_file():
            raise RecipeError(f"{path}: {key}: file {local} does not exist")
    root = recipe.data.eval.data_root
    if root and not Path(root).is_dir():
        raise RecipeError(f"{path}: data.eval.data_root: folder {root} does not exist")


def check_plugins(recipe: Recipe, path: Path) -> None:
    from openrlhf_psr.registry import GENERATORS, JUDGES, TRAINERS, RegistryError

    for key, registry, spec in (
        ("psr.generator", GENERATORS, recipe.psr.generator),
        ("psr.judge", JUDGES, recipe.psr.judge),
        ("psr.trainer", TRAINERS, recipe.psr.trainer),
    ):
        if ":" in spec.name:
            continue  # module:attr: resolved where it runs (e.g. under Ray's working_dir)
        if spec.name not in registry.names():
            try:
                registry.get(spec.name)
            except RegistryError as exc:
                raise RecipeError(f"{path}: {key}.name: {exc}") from None
