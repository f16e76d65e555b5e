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
- ``cluster``: the hardware (nodes x GPUs, GPU and host memory), vLLM engines x TP per stage, ZeRO stage and
  offloads per training stage, runs dir and data root on shared storage (``openrlhf-psr plan`` checks the fit).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from openrlhf_psr.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe problem; each line of the message names the file and the key."""


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
    eft: list[str] = Field(
        default_factory=list,
        description="EFT sources: builtin:N | prm800k:PATH[:N] | srlm-builtin:N | srlm-gsm8k:PATH[:N] (SRLM scoring)",
    )
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
    prompts_per_iteration: list[PositiveInt] = Field(
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
    drop_flagged: bool = Field(
        False,
        description="leave out of judging every candidate carrying a verdict marker, chat-template control text or "
        "a prompt block delimiter (off: they are judged through the guarded prompt, flagged and counted)",
    )
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


class EngineSpec(_Section):
    engines: int | None = Field(None, gt=0, description="vLLM engines (None: every GPU of the cluster / TP)")
    tensor_parallel_size: int | None = Field(
        None, gt=0, description="GPUs per engine (None: psr.generator.settings.tensor_parallel_size, else 1)"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of each GPU vLLM may take")


class TrainSpec(_Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (--ds.zero_stage)")
    adam_offload: bool = Field(False, description="Adam states on host RAM (--ds.adam_offload)")
    ref_offload: bool = Field(False, description="DPO: reference parameters on host RAM, ZeRO-3 only (--ref.offload)")
    gradient_checkpointing: bool = Field(False, description="--model.gradient_checkpointing_enable")


class ClusterSpec(_Section):
    """The hardware the run is sized for (checked by ``openrlhf-psr plan``) and where its files live."""

    nodes: int = Field(1, gt=0, description="machines")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs per machine (None: resources.num_gpus)")
    gpu_memory_gb: float = Field(80, gt=0, description="memory of one GPU, GB (1e9 bytes)")
    host_memory_gb: float = Field(1000, gt=0, description="host RAM per machine, GB (1e9 bytes)")
    runs_dir: str | None = Field(None, description="runs folder on shared storage (default: the --runs-dir flag)")
    data_root: str | None = Field(None, description="folder relative data paths are read from (default: the cwd)")
    search: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engines of the search stages")
    eval: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engines of the evaluation stages")
    sft: TrainSpec = Field(default_factory=TrainSpec, description="DeepSpeed settings of SFT")
    dpo: TrainSpec = Field(default_factory=TrainSpec, description="DeepSpeed settings of step DPO")


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
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="hardware, memory plan, shared paths")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        """The run folder is ``runs/<name>``: a single folder name, so a run never writes outside the runs folder."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in (".", ".."):
            raise ValueError(
                f"expected a folder name (letters, digits, '.', '_', '-'; no '/' and not starting with '.'), "
                f"found {name!r}"
            )
        return name


def apply_override(data: dict, assignment: str) -> dict:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict, in place.

    >>> apply_override({}, "psr.search.width=4")
    {'psr': {'search': {'width': 4}}}
    >>> apply_override({}, "psr.search.width=[")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openrlhf_psr.recipe.RecipeError: --set 'psr.search.width=[': expected a YAML value, found '[' (...)
    """
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE, found no '='")
    path, _, raw = assignment.partition("=")
    keys = path.strip().split(".")
    if not all(k.strip() for k in keys):
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE, found an empty key in {path.strip()!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"--set {assignment!r}: expected a YAML value, found {raw!r} ({reason})") from None
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {assignment!r}: expected {key!r} to be a section, found a value")
    node[keys[-1]] = value
    return data


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def _format_error(path: str, exc: ValidationError) -> list[str]:
    """One ``file: key: expected X, found Y`` line per schema error."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if x != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("Input should be "):
            msg = "expected " + msg.removeprefix("Input should be ")
        got = f", found {_found(err['input'])}" if err["type"] not in ("value_error", "missing") else ""
        lines.append(f"{path}: {loc or '(top level)'}: {msg}{got}")
    return lines


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe: the schema, then the files it names and the plugins with their
    settings. Every problem found is reported at once (:class:`RecipeError`, one line each)."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise RecipeError(f"recipe file {path} does not exist: expected a YAML file, found {found}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start:
            reason += f"; {context} at line {start.line + 1}"
        raise RecipeError(f"{where}: expected valid YAML, found a syntax error ({reason})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:  # report the sections that did validate in the same go
        raise RecipeError.of(_format_error(str(path), exc) + _section_problems(data, path)) from None
    problems = file_problems(recipe.data, path, recipe.cluster.data_root)
    problems += plugin_problems(recipe.psr, recipe.data.eval.judges, path)
    if problems:
        raise RecipeError.of(problems)
    return recipe


def _section_problems(data: dict, path: Path) -> list[str]:
    """File and plugin problems of the ``data`` and ``psr`` sections that are valid on their own."""
    problems = []
    try:
        data_spec = DataSpec.model_validate(data.get("data") or {})
    except ValidationError:
        data_spec = None
    else:
        cluster = data.get("cluster")
        problems += file_problems(data_spec, path, cluster.get("data_root") if isinstance(cluster, dict) else None)
    try:
        psr = PSRSpec.model_validate(data.get("psr") or {})
    except ValidationError:
        pass
    else:
        problems += plugin_problems(psr, data_spec.eval.judges if data_spec else [], path)
    return problems


def _local_file(spec: str) -> str | None:
    """The local file a data spec names (``path``, ``kind:path[:n]``, ``name=path[@n]``), or None for the
    built-in task and Hugging Face dataset names. A piece that looks like a path counts (see
    :func:`openrlhf_psr.data.problems.local_path`), so a mistyped suffix is a file error, not a dataset name.

    >>> _local_file("gsm8k:/d/train.jsonl:200"), _local_file("math500=/d/t.jsonl@10"), _local_file("builtin:64")
    ('/d/train.jsonl', '/d/t.jsonl', None)
    >>> _local_file("foo.jsnol"), _local_file("gsm8k@20"), _local_file("openai/gsm8k:main")
    ('foo.jsnol', None, None)
    >>> _local_file("srlm-gsm8k:../d/train.jsonl:700")
    '../d/train.jsonl'"""
    from openrlhf_psr.data.problems import local_path

    if spec.startswith("builtin"):
        return None
    body = spec.split("=", 1)[1] if "=" in spec else spec
    body = body.rsplit("@", 1)[0] if "@" in body and body.rsplit("@", 1)[1].isdigit() else body
    kind, sep, rest = body.partition(":")
    candidates = [body]
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", kind):  # kind:path[:n]
        rest = rest.rsplit(":", 1)[0] if rest.rsplit(":", 1)[-1].isdigit() else rest
        candidates.insert(0, rest)
    for candidate in candidates:
        if local_path(candidate) is not None:
            return candidate
    return None


BASE_DIR_ENV = "OPENRLHF_PSR_BASE_DIR"


def base_dir() -> Path:
    """The folder relative paths in a recipe (and ``--runs-dir``) are relative to: where the run was launched.

    ``scripts/cluster/submit.sh`` sets ``OPENRLHF_PSR_BASE_DIR`` to the submitting directory, because the job itself
    runs in Ray's unpacked copy of the working dir, where ``runs/`` and ``../shared/data`` mean something else.
    """
    return Path(os.path.abspath(Path(os.environ.get(BASE_DIR_ENV) or Path.cwd()).expanduser()))


def data_path(recipe: Recipe, local: str) -> Path:
    """Where a data path named in the recipe lives: as is when absolute, else under ``cluster.data_root`` (itself
    relative to :func:`base_dir`) or the base dir."""
    path = Path(local).expanduser()
    if path.is_absolute():
        return path
    root = Path(recipe.cluster.data_root).expanduser() if recipe.cluster.data_root else Path()
    return Path(os.path.normpath(base_dir() / root / path))


def _with_absolute_file(recipe: Recipe, spec: str) -> str:
    local = _local_file(spec)
    return spec.replace(local, str(data_path(recipe, local)), 1) if local else spec


def absolute_paths(recipe: Recipe) -> Recipe:
    """The recipe with every local path absolute (data files, the evaluation data root, a local model folder,
    the runs dir), so that a stage reads and writes the same files whatever folder it runs in (a Ray job runs in
    an unpacked copy of the working dir)."""
    fix = lambda spec: _with_absolute_file(recipe, spec)  # noqa: E731
    d, ev = recipe.data, recipe.data.eval
    root = ev.data_root and str(data_path(recipe, ev.data_root))
    eval_spec = ev.model_copy(update={"data_root": root, "benchmarks": [fix(s) for s in ev.benchmarks],
                                      "judge_sets": [fix(s) for s in ev.judge_sets]})  # fmt: skip
    prompts = d.prompts.model_copy(update={"source": fix(d.prompts.source)})
    data = d.model_copy(update={"prompts": prompts, "ift": [fix(s) for s in d.ift], "eft": [fix(s) for s in d.eft],
                                "eval": eval_spec})  # fmt: skip
    model = recipe.model  # a local folder (relative to the base dir) becomes absolute; a hub name stays
    if (base_dir() / Path(model).expanduser()).is_dir():
        model = os.path.normpath(base_dir() / Path(model).expanduser())
    c = recipe.cluster
    cluster = c.model_copy(update={
        "runs_dir": c.runs_dir and os.path.normpath(base_dir() / Path(c.runs_dir).expanduser()),
        "data_root": c.data_root and os.path.normpath(base_dir() / Path(c.data_root).expanduser())})  # fmt: skip
    return recipe.model_copy(update={"data": data, "model": model, "cluster": cluster})


def file_problems(data: DataSpec, path: Path, data_root: str | None = None) -> list[str]:
    """Every file the recipe's ``data`` section names exists (relative paths under ``cluster.data_root``, see
    :func:`data_path`) and has a suffix we read."""
    from types import SimpleNamespace

    located = SimpleNamespace(cluster=SimpleNamespace(data_root=data_root))  # what data_path reads of a recipe
    from openrlhf_psr.data.problems import DATA_SUFFIXES

    specs = [("data.prompts.source", data.prompts.source)]
    specs += [(f"data.ift[{i}]", s) for i, s in enumerate(data.ift)]
    specs += [(f"data.eft[{i}]", s) for i, s in enumerate(data.eft)]
    specs += [(f"data.eval.judge_sets[{i}]", s) for i, s in enumerate(data.eval.judge_sets)]
    specs += [(f"data.eval.benchmarks[{i}]", s) for i, s in enumerate(data.eval.benchmarks)]
    problems = []
    for key, spec in specs:
        local = _local_file(spec)
        if local is None:
            continue
        suffix = Path(local).suffix
        if suffix not in DATA_SUFFIXES:
            close = difflib.get_close_matches(suffix, DATA_SUFFIXES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            found = f"suffix {suffix!r}" if suffix else "no suffix"
            problems.append(f"{path}: {key}: {local}: expected a .jsonl, .json or .parquet file, found {found}{hint}")
        elif not data_path(located, local).is_file():
            problems.append(f"{path}: {key}: file {data_path(located, local)} does not exist")
    root = data.eval.data_root
    if root and not data_path(located, root).is_dir():
        problems.append(f"{path}: data.eval.data_root: folder {root} does not exist")
    return problems


def _signature_problems(where: str, call, args: tuple, settings: dict, then=None, first_supplied=True) -> list[str]:
    """Would ``call(*args, **settings)`` bind? Settings it passes on through ``**kw`` must be parameters of
    ``then`` (the constructor; its first one, the engine or model, is ``call``'s to give when ``first_supplied``)
    unless that takes ``**kw`` too. Unknown names get a did-you-mean."""
    import inspect

    try:
        sig = inspect.signature(call)
    except (TypeError, ValueError):
        return []
    params = sig.parameters.values()
    given = {p.name for p in list(params)[: len(args)]}  # the positional arguments the caller passes itself
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    accepted, leftover = named - given, {k: v for k, v in settings.items() if k not in named}
    if any(p.kind == p.VAR_KEYWORD for p in params) and then is not None:
        try:
            inner = list(inspect.signature(then).parameters.values())
        except (TypeError, ValueError):
            inner = []
        if any(p.kind == p.VAR_KEYWORD for p in inner) or not inner:
            leftover = {}
        else:
            positional = [p for p in inner if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            supplied = {positional[0].name} if positional and first_supplied else set()
            inner_names = {p.name for p in inner if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - supplied
            accepted |= inner_names
            leftover = {k: v for k, v in leftover.items() if k not in inner_names}
    elif any(p.kind == p.VAR_KEYWORD for p in params):
        leftover = {}
    problems = []
    for key in leftover:
        close = difflib.get_close_matches(key, sorted(accepted), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(accepted)}"
        problems.append(f"{where}.{key}: unknown setting{hint}")
    if not problems:
        try:
            sig.bind(*args, **settings)
        except TypeError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def _trainer_settings_problems(where: str, plugin, settings: dict) -> list[str]:
    """A trainer plugin whose stage module declares ``PSR_SETTINGS`` (name -> allowed values or None) gets its
    settings checked against it (they become that module's ``--psr.*`` flags)."""
    import importlib

    module = getattr(plugin, "module", "")
    try:
        allowed = getattr(importlib.import_module(module), "PSR_SETTINGS", None) if module else None
    except ImportError:
        allowed = None
    if allowed is None:
        return []
    problems = []
    for key, value in settings.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(allowed)}"
            problems.append(f"{where}.{key}: unknown setting{hint}")
        elif allowed[key] is not None and value not in allowed[key]:
            problems.append(f"{where}.{key}: expected one of {list(allowed[key])}, found {value!r}")
    return problems


def plugin_problems(psr: PSRSpec, eval_judges: list[str], path: Path) -> list[str]:
    """Plugin names resolve, and their settings bind to the plugin's own ``from_config``/constructor (as
    ``inspect.signature(...).bind``); evaluation judges are registered names. ``module:attr`` plugins are
    resolved where they run (e.g. under Ray's working_dir) and are only checked when importable here."""
    from openrlhf_psr.registry import GENERATORS, JUDGES, TRAINERS, RegistryError

    problems = []
    model = "model"  # the generator's first argument: only its place matters here
    for key, registry, spec in (
        ("psr.generator", GENERATORS, psr.generator),
        ("psr.judge", JUDGES, psr.judge),
        ("psr.trainer", TRAINERS, psr.trainer),
    ):
        try:
            plugin = registry.get(spec.name)
        except RegistryError as exc:
            if ":" not in spec.name:
                problems.append(f"{path}: {key}.name: {exc}")
            continue
        where = f"{path}: {key}.settings"
        if key == "psr.trainer":
            problems += _trainer_settings_problems(where, plugin, spec.settings)
            continue
        target = getattr(plugin, "settings_signature", None)  # the callable its settings go to, if not the class
        if key == "psr.generator" and hasattr(plugin, "from_config"):
            fixed = {"seed": 0, "max_model_len": psr.search.max_model_len}
            clash = sorted(set(fixed) & set(spec.settings))
            if clash:
                problems.append(f"{where}: {clash} are set by the recipe (seed, psr.search.max_model_len), not here")
            elif target is not None:
                problems += _signature_problems(where, target, (model,), {**spec.settings, **fixed})
            else:
                settings = {**spec.settings, **fixed}
                problems += _signature_problems(where, plugin.from_config, (model,), settings, then=plugin)
        elif key == "psr.judge" and hasattr(plugin, "from_config"):
            builtin = spec.name in ("generative", "logit", "outcome")  # the search passes these the chat template
            settings = {"chat_template": psr.chat_template, **spec.settings} if builtin else spec.settings
            inherited = plugin.from_config.__qualname__ == "PairwiseJudge.from_config"  # passes all to cls(...)
            problems += _signature_problems(where, plugin.from_config, (None,), settings, then=plugin,
                                            first_supplied=not inherited)  # fmt: skip
    for k, name in enumerate(eval_judges):
        if ":" in name:
            continue
        try:
            JUDGES.get(name)
        except RegistryError as exc:
            problems.append(f"{path}: data.eval.judges[{k}]: {exc}")
    return problems
