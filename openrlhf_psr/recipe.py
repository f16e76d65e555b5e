"""The recipe: one typed, validated YAML file that describes a whole PSR run (M0 -> SFT -> iterations).

Every field is documented here, once. Unknown keys are errors that name the key's path and suggest the closest
valid one; wrong types name the key and the expected type; files named in the recipe must exist (except Hugging
Face dataset names and the built-in task). Command-line overrides use dotted paths: ``--set psr.judge.name=logit``
(the value is parsed as YAML: ``--set stages.iterations=2``, ``--set psr.search.width=4``).

Sections:
- ``model``, ``name``, ``seed``: M0 (``default`` = embedded SmolLM2-135M-Instruct), run name, base seed.
- ``data``: training prompts per iteration, IFT/EFT sources for SFT, evaluation benchmarks, judge sets and
  test-time scaling (``data.eval.tts``).
- ``stages``: SFT and the number of PSR iterations with their prompt counts.
- ``psr``: plugins by name (``generator``, ``judge``, ``trainer``) with their settings, the engine settings
  (``psr.generator.max_model_len``), the search settings and SRLM's scoring (``psr.srlm``).

The search and evaluation sections *are* the stages' configs: the launcher writes :class:`SearchStageConfig` and
:class:`EvaluateConfig`, resolved from the recipe, to each stage folder (``config.json``) and the stage reads it
(``--config FILE``); :class:`openrlhf_psr.search.SearchConfig` is :class:`SearchSpec` plus the prompt format and seed.
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
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from openrlhf_psr.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe problem; each line of the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    moved_keys: ClassVar[dict[str, str]] = {}  # an old key -> where it lives now (its error names the new key)
    # Fields added after runs existed, left out of a dump while at their default. A stage's fingerprint reads its
    # dumped config, so without this every run made before the field would rerun its stages after an upgrade.
    quiet_defaults: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_quiet_defaults(self, handler):
        data = handler(self)
        fields = type(self).model_fields
        for name in self.quiet_defaults:
            if name in data and getattr(self, name) == fields[name].default:
                del data[name]
        return data

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any):
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key in cls.moved_keys:
                    raise ValueError(f"key {key!r} has moved: expected {cls.moved_keys[key]}")
                if key not in known:
                    close = difflib.get_close_matches(str(key), sorted(known), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(known)}"
                    raise ValueError(f"unknown key {key!r}{hint}")
        return data


class ProblemSource(_Section):
    source: str = Field(
        "builtin:arith",
        description="builtin:arith[?n=N&seed=S&ops=LOW-HIGH&...] | jsonl:PATH | parquet:PATH | "
        "hf:NAME[:CONFIG][?split=S] (files and datasets: ?limit=N); see openrlhf_psr.data.sources",
    )
    question_key: str = Field("question", description="field holding the problem text")
    answer_key: str | None = Field("answer", description="field holding the gold answer (None: no gold)")
    answer_rule: Literal["raw", "gsm8k", "boxed", "first"] = Field("raw", description="gold-answer rule")
    split: str = Field("train", description="split of a HF dataset (an hf: source's ?split= wins)")

    @field_validator("source")
    @classmethod
    def _source_parses(cls, spec: str) -> str:
        """The spec is one of the source grammar (an old spelling names the new one), wherever the section is read:
        the recipe, and the search stage's config and flags."""
        from openrlhf_psr.data.sources import PROBLEMS, SourceError, parse_source

        try:
            parse_source(spec, PROBLEMS)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        return spec


DEFAULT_GENERATOR = "vllm"
DEFAULT_JUDGE = "generative"  # the paper's judge: the recipe's and the search command's default alike
CHAT_TEMPLATE_DOC = "wrap prompts in the model's chat template (off for base models)"


class PluginSpec(_Section):
    name: str = Field(description="registry name, entry point name, or 'module:attr'")
    settings: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the plugin")


class GeneratorSpec(PluginSpec):
    """The engine plugin, and the engine settings every stage that starts an engine shares."""

    max_model_len: int = Field(4096, gt=0, description="engine context length (search and evaluation engines)")


class SearchSpec(_Section):
    """Settings of the step-wise search; defaults are the paper's (SPEC) where it gives one.

    :class:`openrlhf_psr.search.SearchConfig` is this section plus the prompt format and the seed; the test-time
    scaling of evaluation (``data.eval.tts``) takes the same settings.
    """

    moved_keys: ClassVar[dict[str, str]] = {"max_model_len": "psr.generator.max_model_len"}
    quiet_defaults: ClassVar[tuple[str, ...]] = ("majority_filter", "majority_max_tokens")

    width: int = Field(6, ge=2, description="candidate next steps sampled per round (paper: w = 6)")
    temperature: float = Field(0.5, ge=0, description="sampling temperature of candidates (paper: 0.5)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of candidates (paper: 0.95)")
    max_tokens_per_step: int = Field(256, gt=0, description="cap on one candidate step's tokens")
    max_rounds: int = Field(
        20, gt=0, description='rounds per problem, rollbacks included (paper: "max iteration number 20")'
    )
    max_prompt_tokens: int = Field(
        3072, gt=0, description="a problem whose prompt plus accepted steps exceed this stops (finish `context`)"
    )
    tournament: Literal["round_robin", "knockout"] = Field(
        "round_robin", description="round_robin (paper) or knockout (w-1 comparisons)"
    )
    both_orders: bool = Field(True, description="judge each pair in both orders (SPEC default; the tie rule needs it)")
    aggregate: Literal["verdict", "prob"] = Field(
        "verdict", description="verdict (1 / 0.5 / 0) or prob (mean P(better) over both orders; a judge with p_a)"
    )
    min_margin: float = Field(0.0, ge=0, description="a best-worst score margin below this counts as a tie")
    judge_retries: int = Field(
        1, ge=0, description="extra attempts when the judge or engine raises (then the error propagates; committed "
        "shards are kept)",
    )  # fmt: skip
    filter_wrong: bool = Field(
        False, description="drop the pairs of trajectories whose final answer is wrong (needs a gold answer; off, as "
        "in the paper, which never checks answers during the loop)",
    )  # fmt: skip
    drop_flagged: bool = Field(
        False,
        description="leave out of judging every candidate carrying a verdict marker, chat-template control text or "
        "a prompt block delimiter (off: they are judged through the guarded prompt, flagged and counted)",
    )
    majority_filter: int = Field(
        0, ge=0, description="a gold-free outcome filter (self-consistency): sample this many whole solutions per "
        "problem from the searching model (the search's temperature and top_p), take their most common boxed answer "
        "(math-verify-equivalent answers vote together) and drop the pairs of trajectories whose final answer is not "
        "it, or that have no majority (fewer than 2 votes for the most common answer, or a tie); 0: off, as in the "
        "paper. Not for data.eval.tts (its pairs train nothing)",
    )  # fmt: skip
    majority_max_tokens: int = Field(512, gt=0, description="cap on one majority_filter solution's tokens")


class SRLMSpec(_Section):
    """The Self-Rewarding LM baseline's scoring (``psr.method: srlm``); its solutions per problem and their sampling
    are ``psr.search``'s width, temperature and top_p."""

    score_samples: int = Field(3, gt=0, description="sampled judgments averaged per solution (paper: 3)")
    score_temperature: float = Field(0.7, ge=0, description="sampling temperature of the judgments")
    score_max_tokens: int = Field(256, gt=0, description="cap on one judgment's tokens")


class TTSSpec(SearchSpec):
    """Test-time scaling (the paper's Tables 5 and 9): the step-wise search instead of greedy decoding on some
    benchmarks, with the search settings above. With the ``logit`` judge ``aggregate`` defaults to ``prob``."""

    benchmarks: list[str] = Field(default_factory=list, description="benchmark names (of data.eval.benchmarks) to "
                                  "also run with the search")  # fmt: skip
    judge: str = Field(DEFAULT_JUDGE, description="judge plugin of the search (paper: generative)")

    @model_validator(mode="after")
    def _logit_aggregates_probabilities(self):
        if self.judge == "logit" and "aggregate" not in self.model_fields_set:
            object.__setattr__(self, "aggregate", "prob")
        return self

    @model_validator(mode="after")
    def _no_majority_filter(self):
        # test-time search writes pairs nobody trains on: a filter there only costs samples (or needs gold answers)
        if self.majority_filter:
            raise ValueError("data.eval.tts.majority_filter: expected 0 (the filter selects training pairs; the "
                             f"test-time search trains nothing), found {self.majority_filter}")  # fmt: skip
        return self


class EvalSettings(_Section):
    """What an evaluation stage does (``openrlhf_psr.cli.evaluate`` reads these from its config)."""

    benchmarks: list[str] = Field(
        default_factory=list,
        description="NAME[?limit=N] (<data_root>/NAME/test.jsonl; arith: the built-in task, arith?n=N) | NAME=SOURCE",
    )
    data_root: str | None = Field(None, description="folder with <benchmark>/test.jsonl (../shared/data/eval)")
    judge_sets: list[str] = Field(default_factory=list, description="builtin:arith?n=N | prm800k:PATH[?limit=N]")
    judges: list[str] = Field(default_factory=lambda: ["generative", "logit"], description="judges to score")
    max_tokens: int = Field(1024, gt=0, description="generation cap per solution")
    judge_max_tokens: int = Field(256, gt=0, description="generative judge explanation cap in evaluation")
    judge_reason_tokens: int = Field(
        0, ge=0, description="logit judge in evaluation: explanation tokens it writes before its verdict is read "
        "(0: read right after the prompt; see judges/logit.py)"
    )  # fmt: skip
    judge_tie: bool = Field(
        False, description="generative and logit judges in evaluation: the judge prompt that also offers [[C]] (a "
        "tie), as psr.judge.settings.tie; a tie on a judged pair counts as an abstention"
    )  # fmt: skip
    prompt: Literal["step", "qwen_cot"] = Field("step", description="the paper's step prompt or Qwen's CoT prompt")
    fewshot: int = Field(0, ge=0, description="worked examples prepended to each problem (base models)")
    tts: TTSSpec = Field(default_factory=TTSSpec, description="test-time scaling (off: no benchmarks)")

    @model_validator(mode="after")
    def _tts_of_benchmarks(self):
        names = {re.split(r"[=?@]", spec, maxsplit=1)[0] for spec in self.benchmarks}
        unknown = [name for name in self.tts.benchmarks if name not in names]
        if unknown:
            raise ValueError(f"tts.benchmarks: expected names of benchmarks ({sorted(names)}), found {unknown}")
        return self


class EvalSpec(EvalSettings):
    before_training: bool = Field(True, description="also evaluate M0 before any training")
    judges_before_training: bool = Field(
        True, description="M0's evaluation also scores the judges (off: benchmarks only; M0 was never taught to "
        "judge, and a judge that writes its check first spends its tokens on text that cannot be a check). Without "
        "SFT, M0 is M1, the first search's judge, and its judges are scored whatever this says"
    )  # fmt: skip
    judges_every_iteration: bool = Field(
        True, description="the evaluations of the models the iterations train (M2, M3, ...) also score the judges "
        "(off: benchmarks only; the judges are scored on M1, the first search's judge: a shorter run)"
    )  # fmt: skip


class DataSpec(_Section):
    prompts: ProblemSource = Field(default_factory=ProblemSource, description="training prompts for the search")
    ift: list[str] = Field(default_factory=list, description="IFT sources: builtin:arith?n=N | gsm8k:PATH[?limit=N]")
    eft: list[str] = Field(
        default_factory=list,
        description="EFT sources: builtin:arith?n=N | prm800k:PATH[?limit=N] | srlm-builtin:arith?n=N | "
        "srlm-gsm8k:PATH[?limit=N] (SRLM scoring) | search:DIR[?limit=N&ties=T] (a search's own candidate steps, "
        "labelled by the exact checker: on-policy EFT)",
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


class SearchSettings(_Section):
    """The settings of ``psr`` a search stage uses (the stage's config holds exactly these)."""

    method: Literal["psr", "srlm"] = Field(
        "psr", description="psr: step-wise self-judged search; srlm: the Self-Rewarding LM baseline (whole solutions)"
    )
    generator: GeneratorSpec = Field(
        default_factory=lambda: GeneratorSpec(name=DEFAULT_GENERATOR), description="engine plugin"
    )
    judge: PluginSpec = Field(default_factory=lambda: PluginSpec(name=DEFAULT_JUDGE), description="judge plugin")
    search: SearchSpec = Field(default_factory=SearchSpec, description="step-wise search settings")
    srlm: SRLMSpec = Field(default_factory=SRLMSpec, description="SRLM scoring (psr.method: srlm)")
    chat_template: bool = Field(True, description=CHAT_TEMPLATE_DOC)


class PSRSpec(SearchSettings):
    trainer: PluginSpec = Field(default_factory=lambda: PluginSpec(name="step_dpo"), description="trainer plugin")


class DPOSpec(_Section):
    epochs: int = Field(1, gt=0, description="paper: 1")
    lr: float = Field(5e-7, gt=0, description="paper: 5e-7")
    # Measured on the CPU evidence recipe: a second oracle iteration at the first one's lr 1e-5 lost 2 points of its
    # +7 (docs/evidence.md, "At scale"), so a later iteration may want a smaller step than the first.
    lr_per_iteration: list[PositiveFloat] | None = Field(
        None, description="learning rate of iteration t = entry t (1-based), over `lr`; one entry per iteration"
    )
    batch_size: int = Field(32, gt=0, description="paper: 32")
    micro_batch_size: int = Field(4, gt=0, description="per device")
    beta: float = Field(0.1, gt=0, description="not reported by the paper; SRLM's 0.1")
    reference: Literal["previous", "m1"] = Field("previous", description="reference of iteration t: M(t) or M1")
    max_len: int = Field(4096, gt=0, description="tokens per packed pair")

    def lr_at(self, t: int) -> float:
        """Iteration ``t``'s learning rate (M(t) -> M(t+1), t >= 1).

        >>> DPOSpec(lr=1e-5).lr_at(2)
        1e-05
        >>> DPOSpec(lr=1e-5, lr_per_iteration=[1e-5, 5e-6]).lr_at(2)
        5e-06
        """
        return self.lr_per_iteration[t - 1] if self.lr_per_iteration else self.lr


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
    # None rather than a 0.9 default told apart by ``model_fields_set``: that set does not survive the manifest's
    # round trip (every field is dumped, so every field reads back as set), and `status` would then see a setting
    # the run never had and call finished stages stale.
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of each GPU vLLM may take (None: the generator's own setting, else 0.9)"
    )


class TrainSpec(_Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (--ds.zero_stage)")
    adam_offload: bool = Field(False, description="Adam states on host RAM (--ds.adam_offload)")
    ref_offload: bool = Field(False, description="DPO: reference parameters on host RAM, ZeRO-3 only (--ref.offload)")
    gradient_checkpointing: bool = Field(False, description="--model.gradient_checkpointing_enable")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="a resumable DeepSpeed checkpoint (weights + optimizer states, ~16 bytes per parameter) every N "
        "optimizer steps (--ckpt.save_steps); 0: none, the stage's model is saved once at its end and a stage "
        "killed before that restarts from its beginning",
    )


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

    @model_validator(mode="after")
    def _lr_for_every_iteration(self):
        rates, iterations = self.dpo.lr_per_iteration, self.stages.iterations
        if rates is not None and len(rates) < iterations:
            raise ValueError(
                f"dpo.lr_per_iteration: expected one learning rate per iteration ({iterations}, stages.iterations), "
                f"found {len(rates)}: {rates}"
            )
        return self


class _StageRun(_Section):
    model: str = Field("default", description="the model: a HF name or path, or `default` (the embedded model)")
    out: str = Field(description="output folder (resumed when it exists)")
    seed: int = Field(0, description="base seed")


class SearchStageConfig(_StageRun, SearchSettings):
    """What a search stage reads (``openrlhf-psr search --config FILE``): the launcher writes it, resolved from the
    recipe, to ``iter_<t>/search/config.json``; by hand every setting is also a flag."""

    problems: ProblemSource = Field(default_factory=ProblemSource, description="the problems to search on")
    limit: int | None = Field(None, gt=0, description="number of problems (a seeded subset; ignored with subset)")
    subset: str | None = Field(None, description="START:END of the problems after a seeded shuffle")
    subset_seed: int = Field(0, description="seed of that shuffle (the same across iterations: disjoint prompts)")

    @field_validator("subset")
    @classmethod
    def _start_end(cls, text: str | None) -> str | None:
        match = re.fullmatch(r"(\d*):(\d*)", text) if text is not None else None
        if text is not None and (not match or (match[2] and int(match[2]) <= int(match[1] or 0))):
            raise ValueError(f"expected START:END with 0 <= START < END, found {text!r}")
        return text


class EvaluateConfig(_StageRun, EvalSettings):
    """What an evaluation stage reads (``openrlhf-psr evaluate --config FILE``): the launcher writes it, resolved
    from the recipe, to ``<eval dir>/config.json``; by hand every setting is also a flag."""

    chat_template: bool = Field(True, description=CHAT_TEMPLATE_DOC)
    max_model_len: int = Field(4096, gt=0, description="engine context length (psr.generator.max_model_len)")
    generator: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name=DEFAULT_GENERATOR),
        description="engine plugin (psr.generator, with cluster.eval's engines x TP in its settings)",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs per engine, by hand (above 1: over the settings')")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU share vLLM may take (by hand)")


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
        if "?" in raw and raw.lstrip().startswith(("[", "{")):  # YAML ends a plain word at '?' inside [...] / {...}
            reason += '; quote source specs with options inside a list, e.g. ["builtin:arith?n=64"]'
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
        # a check across sections (on the whole recipe) names its own keys first: no "(top level)" before them
        where = loc or ("" if re.match(r"[\w.]+: ", msg) else "(top level)")
        lines.append(f"{path}: {where + ': ' if where else ''}{msg}{got}")
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
    problems += plugin_problems(recipe.psr, recipe.data.eval.judges, path, recipe.data.eval.tts)
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
        problems += plugin_problems(psr, data_spec.eval.judges if data_spec else [], path,
                                    data_spec.eval.tts if data_spec else None)  # fmt: skip
    return problems


def _parse_data_spec(key: str, spec: str):
    """The source a ``data`` spec names (:mod:`openrlhf_psr.data.sources`, the kinds its field takes), with the
    benchmark's name for ``data.eval.benchmarks`` (its source None: the default under the data root).

    >>> _parse_data_spec("data.ift[0]", "gsm8k:/d/train.jsonl?limit=200")
    (None, Source(kind='gsm8k', target='/d/train.jsonl', options=mappingproxy({'limit': 200})))
    >>> _parse_data_spec("data.eval.benchmarks[0]", "math500=jsonl:d/t.jsonl")[1].path
    PosixPath('d/t.jsonl')
    """
    from openrlhf_psr.data import sources

    if key.startswith("data.eval.benchmarks"):
        from openrlhf_psr.eval.benchmarks import BENCHMARKS

        bench = sources.parse_benchmark(spec, names=(*BENCHMARKS, "arith"))
        return bench.name, bench.source
    field = key.partition("[")[0]
    kinds = {"data.prompts.source": sources.PROBLEMS, "data.ift": sources.IFT, "data.eft": sources.EFT,
             "data.eval.judge_sets": sources.JUDGE_PAIRS}[field]  # fmt: skip
    return None, sources.parse_source(spec, kinds)


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


def _with_absolute_file(recipe: Recipe, key: str, spec: str) -> str:
    """The spec with its local file's path absolute (see :func:`data_path`); a spec that does not parse is left
    for the stage to report."""
    from openrlhf_psr.data.sources import SourceError

    try:
        name, source = _parse_data_spec(key, spec)
    except SourceError:
        return spec
    if source is None or source.path is None:
        return spec
    source = source.with_target(str(data_path(recipe, source.target)))
    return f"{name}={source}" if name else str(source)


def absolute_paths(recipe: Recipe) -> Recipe:
    """The recipe with every local path absolute (data files, the evaluation data root, a local model folder,
    the runs dir), so that a stage reads and writes the same files whatever folder it runs in (a Ray job runs in
    an unpacked copy of the working dir)."""

    def fix(key: str, specs: list[str]) -> list[str]:
        return [_with_absolute_file(recipe, key, s) for s in specs]

    d, ev = recipe.data, recipe.data.eval
    root = ev.data_root and str(data_path(recipe, ev.data_root))
    eval_spec = ev.model_copy(update={"data_root": root, "benchmarks": fix("data.eval.benchmarks", ev.benchmarks),
                                      "judge_sets": fix("data.eval.judge_sets", ev.judge_sets)})  # fmt: skip
    prompts = d.prompts.model_copy(update={"source": fix("data.prompts.source", [d.prompts.source])[0]})
    data = d.model_copy(update={"prompts": prompts, "ift": fix("data.ift", d.ift), "eft": fix("data.eft", d.eft),
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
    """Every source spec of the recipe's ``data`` section parses (:mod:`openrlhf_psr.data.sources`: kind, options,
    file suffix; an old spelling names the new one) and every file it names exists (relative paths under
    ``cluster.data_root``, see :func:`data_path`)."""
    from types import SimpleNamespace

    from openrlhf_psr.data.sources import KINDS, SourceError

    located = SimpleNamespace(cluster=SimpleNamespace(data_root=data_root))  # what data_path reads of a recipe

    specs = [("data.prompts.source", data.prompts.source)]
    specs += [(f"data.ift[{i}]", s) for i, s in enumerate(data.ift)]
    specs += [(f"data.eft[{i}]", s) for i, s in enumerate(data.eft)]
    specs += [(f"data.eval.judge_sets[{i}]", s) for i, s in enumerate(data.eval.judge_sets)]
    specs += [(f"data.eval.benchmarks[{i}]", s) for i, s in enumerate(data.eval.benchmarks)]
    problems = []
    for key, spec in specs:
        try:
            _, source = _parse_data_spec(key, spec)
        except SourceError as exc:
            problems.append(f"{path}: {key}: {exc}")
            continue
        if source is None or source.path is None:
            continue
        local = data_path(located, source.target)
        folder = KINDS[source.kind].target == "dir"  # a search output folder (search:DIR), not a file
        if not (local.is_dir() if folder else local.is_file()):
            problems.append(f"{path}: {key}: {'folder' if folder else 'file'} {local} does not exist")
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


def _other_owners(registry, name: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` that another registered plugin's constructor takes (by parameter name)."""
    import inspect

    owners = []
    for key in keys:
        for other in registry.names():
            if other == name:
                continue
            try:
                if key in inspect.signature(registry.get(other)).parameters:
                    owners.append(key)
                    break
            except Exception:  # a plugin that cannot be loaded or inspected here says nothing about this key
                continue
    return owners


def plugin_problems(psr: PSRSpec, eval_judges: list[str], path: Path, tts: TTSSpec | None = None) -> list[str]:
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
            fixed = {"seed": 0, "max_model_len": psr.generator.max_model_len}
            clash = sorted(set(fixed) & set(spec.settings))
            if clash:
                problems.append(
                    f"{where}: {clash} are set by the recipe (seed, psr.generator.max_model_len), not here"
                )
            elif target is not None:
                problems += _signature_problems(where, target, (model,), {**spec.settings, **fixed})
            else:
                settings = {**spec.settings, **fixed}
                problems += _signature_problems(where, plugin.from_config, (model,), settings, then=plugin)
        elif key == "psr.judge" and hasattr(plugin, "from_config"):
            builtin = spec.name in ("generative", "logit", "outcome")  # the search passes these the chat template
            settings = {"chat_template": psr.chat_template, **spec.settings} if builtin else spec.settings
            inherited = plugin.from_config.__qualname__ == "PairwiseJudge.from_config"  # passes all to cls(...)
            found = _signature_problems(where, plugin.from_config, (None,), settings, then=plugin,
                                        first_supplied=not inherited)  # fmt: skip
            owners = _other_owners(registry, spec.name, [k for k in spec.settings if f".{k}: unknown setting" in
                                                          " ".join(found)])  # fmt: skip
            if owners:  # the name was swapped (``--set psr.judge.name=...``) and the old judge's settings kept
                found.append(f"{where}: {', '.join(owners)} are settings of another judge; with --set {key}.name=..., "
                             f"set its settings too, e.g. --set {key}.settings={{}}")  # fmt: skip
            problems += found
    named = [(f"data.eval.judges[{k}]", name) for k, name in enumerate(eval_judges)]
    named += [("data.eval.tts.judge", tts.judge)] if tts is not None and tts.benchmarks else []
    for key, name in named:
        if ":" in name:
            continue
        try:
            JUDGES.get(name)
        except RegistryError as exc:
            problems.append(f"{path}: {key}: {exc}")
    return problems
