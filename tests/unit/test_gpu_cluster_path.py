"""What a GPU-cluster user meets before M1, checked on CPU: step DPO's attention on GPU, the compat hook on GPU
nodes, and a ``ray_job`` run whose stages run in Ray's copy of the working dir (every path absolute)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest
import yaml

from openrlhf_psr.cli.train_step_dpo import tree_mask_attention
from openrlhf_psr.compat import loader
from openrlhf_psr.compat.patching import PatchError
from openrlhf_psr.launcher import RecipeRun
from openrlhf_psr.recipe import BASE_DIR_ENV, Recipe, load_recipe
from openrlhf_psr.testing import CharTokenizer as _CharTokenizer

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
# the schema alone (no data-file checks): collecting this module must not need ../shared/data
GPU_RECIPES = sorted(
    p.name for p in RECIPES.glob("*.yaml") if Recipe.model_validate(yaml.safe_load(p.read_text())).resources.num_gpus
)


def _values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[k + 1] for k, x in enumerate(cmd[:-1]) if x == flag]


# -- step DPO attention ---------------------------------------------------------------------------------------


def test_there_are_gpu_recipes():
    assert {"psr_qwen2.5_math_7b.yaml", "psr_qwen2.5_math_72b.yaml"} <= set(GPU_RECIPES)


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_step_dpo_command_of_every_gpu_recipe_asks_for_an_attention_that_applies_the_tree_mask(
    name, tmp_path, recipe_data
):
    run = RecipeRun(load_recipe(RECIPES / name, recipe_data), runs_dir=tmp_path)
    dpo = [s for s in run.plan() if s.name.endswith("/dpo")]
    assert dpo
    for stage in dpo:
        requested = _values(stage.command, "--ds.attn_implementation")
        assert requested and requested[-1] in ("sdpa", "eager"), (stage.name, requested)  # the last one wins
        assert "flash_attention_2" not in requested


@pytest.mark.parametrize("requested", ["flash_attention_2", "flash_attention_3", "kernels-community/vllm-flash-attn3"])
def test_step_dpo_overrides_flash_attention_whatever_is_requested(requested):
    # The choice no longer depends on CUDA: on a GPU (where it used to keep FlashAttention-2) it is sdpa too.
    assert tree_mask_attention(requested) == "sdpa"
    assert tree_mask_attention("sdpa") == "sdpa" and tree_mask_attention("eager") == "eager"


# -- the compat hook on GPU machines --------------------------------------------------------------------------


@pytest.fixture
def fake_torch(monkeypatch):
    """A stand-in ``torch`` module (the unit suite never imports the real one) with chosen CUDA facts."""

    def install(*, build: str | None, visible: bool):
        torch = types.ModuleType("torch")
        torch.cuda = types.SimpleNamespace(is_available=lambda: visible)
        torch.version = types.SimpleNamespace(cuda=build, hip=None)
        monkeypatch.setitem(sys.modules, "torch", torch)
        loader._cuda_available.cache_clear()

    monkeypatch.setattr(loader, "_warned", [], raising=False)
    yield install
    loader._cuda_available.cache_clear()


@pytest.fixture
def other_upstream(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.12.0" if name == "openrlhf" else real(name))


TARGET = "openrlhf.models.ring_attn_utils"


def test_compat_hook_stands_aside_on_a_gpu_node_process_without_a_visible_gpu(fake_torch, other_upstream, capsys):
    # A Ray actor placed without GPUs (or the driver on a CPU head) of a GPU cluster: CUDA build, no visible device,
    # and the user's own openrlhf version. It must import upstream as is, and say nothing.
    fake_torch(build="12.8", visible=False)
    assert loader.PatchingFinder(mode="auto").find_spec(TARGET) is None
    assert capsys.readouterr().err == ""


def test_compat_hook_forced_on_with_cuda_and_another_upstream_warns_once(fake_torch, other_upstream, capsys):
    fake_torch(build="12.8", visible=True)
    for name in loader.target_modules():
        assert loader.PatchingFinder(mode="on").find_spec(name) is None
    err = capsys.readouterr().err
    assert err.count("openrlhf-psr:") == 1 and "0.12.0 is installed" in err


def test_compat_hook_without_cuda_still_refuses_another_upstream(fake_torch, other_upstream):
    fake_torch(build=None, visible=False)
    with pytest.raises(PatchError, match="target openrlhf==0.11.2 but 0.12.0 is installed"):
        loader.PatchingFinder(mode="auto").find_spec(TARGET)


# -- every path absolute before anything is submitted ---------------------------------------------------------


def _paths_in(cmd: list[str]) -> list[str]:
    """Every argument that names a file or folder (a path, or a data spec holding one)."""
    out = []
    for arg in cmd:
        for piece in arg.replace("=", ":").replace("@", ":").split(":"):
            if "/" in piece and not piece.startswith(("Qwen/", "{", "http")) and "runtime" not in piece:
                out.append(piece)
    return out


def test_ray_job_commands_of_the_7b_recipe_hold_only_absolute_paths(monkeypatch, tmp_path, shared_data):
    # the recipe's relative paths (runs/, ../shared/data/...) are relative to where the run is launched
    monkeypatch.chdir(REPO)
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml")
    run = RecipeRun(recipe, runs_dir="runs")  # the CLI's default, relative
    assert run.root == REPO / "runs" / "psr_qwen2.5_math_7b"
    stages = run.plan()
    checked = 0
    for stage in stages:
        wrapped = run.wrap(stage)
        assert wrapped[:3] == ["ray", "job", "submit"]
        command = wrapped[wrapped.index("--") + 1 :]
        paths = _paths_in(command) + _paths_in(stage.settings_args())  # with the paths of the stage's config
        for path in paths:
            assert Path(path).is_absolute(), (stage.name, path)
            checked += 1
        assert stage.output.is_absolute() and stage.log.is_absolute()
    assert checked > 30
    search = next(s for s in stages if s.name == "iter_1/search")
    problems = search.config["problems"]["source"]
    assert problems.removeprefix("jsonl:") == str(shared_data.resolve() / "train" / "gsm8k_train.jsonl")
    assert search.config["out"] == str(REPO / "runs" / "psr_qwen2.5_math_7b" / "iter_1" / "search")
    assert search.config_file == Path(search.config["out"]) / "config.json"


def test_paths_resolve_against_the_submitting_directory_and_the_recipe_runs_dir(monkeypatch, tmp_path):
    # scripts/cluster/submit.sh runs the loop inside Ray's copy of the working dir and passes the directory it was
    # submitted from: relative data paths and runs/ mean that directory, not the copy.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    copy = tmp_path / "ray_working_dir_copy"
    copy.mkdir()
    monkeypatch.chdir(copy)
    monkeypatch.setenv(BASE_DIR_ENV, str(tmp_path))
    overrides = ["data.prompts.source=jsonl:data/p.jsonl", "data.eval.benchmarks=[]", "data.eval.judge_sets=[]",
                 "stages.sft.enabled=false", "stages.iterations=1", "cluster.runs_dir=shared/runs"]  # fmt: skip
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", overrides))
    assert run.root == tmp_path / "shared" / "runs" / "tiny_cpu"
    search = next(s for s in run.plan() if s.name == "iter_1/search")
    assert search.config["problems"]["source"] == f"jsonl:{tmp_path / 'data' / 'p.jsonl'}"
    assert search.config["out"] == str(tmp_path / "shared" / "runs" / "tiny_cpu" / "iter_1" / "search")
    # an explicit runs dir wins over the recipe's
    assert RecipeRun(run.recipe, runs_dir=tmp_path / "elsewhere").root == tmp_path / "elsewhere" / "tiny_cpu"


def test_cluster_data_root_holds_relative_data_paths(monkeypatch, tmp_path):
    (tmp_path / "store" / "train").mkdir(parents=True)
    (tmp_path / "store" / "train" / "p.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    monkeypatch.chdir(tmp_path)
    overrides = ["data.prompts.source=jsonl:train/p.jsonl", f"cluster.data_root={tmp_path / 'store'}"]
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", overrides)  # validated under the data root
    run = RecipeRun(recipe, runs_dir=tmp_path / "runs")
    search = next(s for s in run.plan() if s.name == "iter_1/search")
    assert search.config["problems"]["source"] == f"jsonl:{tmp_path / 'store' / 'train' / 'p.jsonl'}"


def test_cluster_scripts_submit_from_the_right_places():
    sbatch = (REPO / "scripts" / "cluster" / "slurm.sbatch").read_text()
    assert "SLURM_SUBMIT_DIR" in sbatch and 'dirname "$0"' not in sbatch  # sbatch runs a spool copy of the script
    submit = (REPO / "scripts" / "cluster" / "submit.sh").read_text()
    assert BASE_DIR_ENV in submit  # the job resolves relative paths against the submitting directory


def test_submit_sh_hands_the_job_absolute_places(tmp_path):
    """submit.sh with a stand-in ``ray`` that records what it was asked to submit."""
    import json
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ray_args.json"
    (bin_dir / "ray").write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    (bin_dir / "ray").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUNS_DIR": "shared_runs"}
    here = tmp_path / "submitting_dir"  # submitted from outside the checkout, with a relative runs dir
    here.mkdir()
    subprocess.run(["bash", str(REPO / "scripts" / "cluster" / "submit.sh"), str(RECIPES / "tiny_cpu.yaml"),
                    "--set", "stages.iterations=1"], cwd=here, env=env, check=True)  # fmt: skip
    args = json.loads(record.read_text())
    runtime_env = json.loads(_values(args, "--runtime-env-json")[0])
    assert runtime_env["working_dir"] == str(REPO.resolve())
    assert runtime_env["env_vars"][BASE_DIR_ENV] == str(here.resolve())
    job = args[args.index("--") + 1 :]
    assert job[:5] == ["python", "-m", "openrlhf_psr.cli.main", "run", "recipes/tiny_cpu.yaml"]  # inside the copy
    assert _values(job, "--runs-dir") == [str(here.resolve() / "shared_runs")]
    assert job[-2:] == ["--set", "stages.iterations=1"]


# -- the openrlhf_ray generator in a cluster ------------------------------------------------------------------


def test_openrlhf_ray_joins_a_running_cluster_without_declaring_resources():
    from openrlhf_psr.engines.openrlhf_ray import ray_init_kwargs

    joined = ray_init_kwargs(join=True, in_job=False, num_cpus=2, num_gpus=1, env_vars={"OPENRLHF_PSR_COMPAT": "auto"})
    assert joined["address"] == "auto" and not {"num_cpus", "num_gpus"} & set(joined)  # ray.init raises on them
    assert joined["runtime_env"] == {"env_vars": {"OPENRLHF_PSR_COMPAT": "auto"}}
    # inside a Ray job the job's env already reaches the actors; handing the same keys again raises in ray.init
    assert "runtime_env" not in ray_init_kwargs(join=True, in_job=True, num_cpus=2, num_gpus=1, env_vars={"A": "1"})
    local = ray_init_kwargs(join=False, in_job=False, num_cpus=2, num_gpus=1, env_vars={})
    assert (local["num_cpus"], local["num_gpus"]) == (2, 1)


def test_openrlhf_ray_keeps_per_request_seeds_when_the_engines_are_on_gpu_and_the_driver_is_not(monkeypatch):
    """A Ray job's entrypoint on a CPU-only head node drives GPU engines: the seeds follow the engines' platform
    (asked of the actor), not the driver's CUDA (the old check: this machine has none, so seeds were dropped)."""
    from openrlhf_psr.engines import openrlhf_ray

    asked = []
    crash = lambda actor: asked.append(actor) or actor == "chunked-cpu-engine"  # noqa: E731
    monkeypatch.setattr(openrlhf_ray, "seeded_requests_crash", crash)
    assert openrlhf_ray.OpenRLHFRayEngine(["gpu-engine", "gpu-engine"], tokenizer=None).per_request_seeds is True
    assert asked == ["gpu-engine"]  # one actor asked: an engine group shares its platform
    assert openrlhf_ray.OpenRLHFRayEngine(["chunked-cpu-engine"], tokenizer=None).per_request_seeds is False
    forced = openrlhf_ray.OpenRLHFRayEngine(["chunked-cpu-engine"], tokenizer=None, per_request_seeds=True)
    assert forced.per_request_seeds is True


def test_openrlhf_ray_waits_for_a_slow_engine_start_and_says_when_it_never_comes(monkeypatch):
    """The first call to a new engine actor waits for its construction (model load, torch.compile, CUDA graphs:
    minutes at 7B). It used to time out after 120 s: a compiled engine of the 135M default on 2 CPU cores took
    longer, so ``bench_search.py --compile --generator openrlhf_ray`` died in ``OpenRLHFRayEngine.create``. (Ray is a
    stand-in here: the unit suite imports no Ray; the bench run above is the real check.)"""
    import types

    from openrlhf_psr.engines import openrlhf_ray
    from openrlhf_psr.errors import UserError

    class GetTimeoutError(Exception):
        pass

    waited = []

    def get(ref, timeout=None):
        waited.append(timeout)
        if timeout is not None and ref["starts_in_s"] > timeout:
            raise GetTimeoutError()
        return False

    fake_ray = types.SimpleNamespace(get=get, exceptions=types.SimpleNamespace(GetTimeoutError=GetTimeoutError))
    monkeypatch.setitem(__import__("sys").modules, "ray", fake_ray)

    def actor(starts_in_s):
        call = types.SimpleNamespace(remote=lambda fn: {"starts_in_s": starts_in_s})
        return types.SimpleNamespace(__ray_call__=call)

    assert openrlhf_ray.seeded_requests_crash(actor(starts_in_s=150)) is False  # a compiled 135M engine on CPU
    assert openrlhf_ray.seeded_requests_crash(actor(starts_in_s=20 * 60)) is False  # a 72B engine at TP 8
    assert min(waited) >= 30 * 60
    with pytest.raises(UserError, match=r"did not start within 60 s \(model load, compilation\)"):
        openrlhf_ray.seeded_requests_crash(actor(starts_in_s=90), timeout_s=60)


def test_openrlhf_ray_pins_every_request_of_a_problem_to_one_engine():
    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.engines.openrlhf_ray import engine_index

    engines = 4
    # a problem's requests over rounds: the prompt grows by one accepted step each round
    for problem in range(40):
        rounds = [SampleRequest(tuple(range(50 + r * 20)), n=6, affinity=f"p{problem}") for r in range(5)]
        assert len({engine_index(r, engines) for r in rounds}) == 1
    used = {engine_index(SampleRequest((1,), affinity=f"p{k}"), engines) for k in range(40)}
    assert used == set(range(engines))  # problems spread over every engine
    # without an affinity key: the prompt's first tokens (a long shared prefix lands on one engine)
    long_prefix = tuple(range(300))
    assert engine_index(SampleRequest(long_prefix + (1,)), engines) == engine_index(
        SampleRequest(long_prefix), engines
    )


def test_search_and_generative_judge_name_the_problem_for_engine_pinning(tmp_path):
    from openrlhf_psr.data.problems import Problem
    from openrlhf_psr.engines.base import Engine, Sample
    from openrlhf_psr.judges.base import Comparison
    from openrlhf_psr.judges.generative import GenerativeJudge
    from openrlhf_psr.search import SearchConfig, StepSearch

    class Recording(Engine):
        tokenizer = _CharTokenizer()

        def __init__(self):
            self.requests = []

        def generate(self, requests):
            self.requests += requests
            final = "Step 1: \\boxed{5}."
            return [[Sample(final, (*map(ord, final), 0), "stop", None)] * r.n for r in requests]

    engine = Recording()
    problems = [Problem(f"p{i}", f"q{i}", "5") for i in range(3)]
    StepSearch(engine, GenerativeJudge(engine), SearchConfig(width=2, max_rounds=2)).run(problems, tmp_path,
                                                                                         progress=False)  # fmt: skip
    assert sorted(r.affinity for r in engine.requests) == ["p0", "p1", "p2"]
    judge_engine = Recording()
    GenerativeJudge(judge_engine, max_tokens=8).judge([Comparison("q1", (), "Step 1: a", "Step 1: b")] * 2)
    assert [r.affinity for r in judge_engine.requests] == ["q1", "q1"]


def test_eval_and_search_commands_get_the_engines_the_plan_checked(tmp_path, recipe_data):
    import argparse

    from openrlhf_psr.cli.evaluate import add_arguments, engine_settings, stage_config

    run = RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml", recipe_data), runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    stages["eval_m0"].write_config()
    evaluate = stages["eval_m0"].command
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(evaluate[evaluate.index("openrlhf_psr.cli.evaluate") + 1 :])
    assert engine_settings(stage_config(args))["tensor_parallel_size"] == 8  # 145 GB of weights cannot go on one GPU
    assert stages["iter_1/search"].config["generator"]["settings"]["tensor_parallel_size"] == 8
    # the cluster section's engines x TP reach upstream's engines (openrlhf_ray)
    overrides = [*recipe_data, "psr.generator={name: openrlhf_ray, settings: {}}", "cluster.search.engines=4",
                 "cluster.search.tensor_parallel_size=4", "cluster.eval.tensor_parallel_size=4"]  # fmt: skip
    run = RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml", overrides), runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    assert stages["iter_1/search"].config["generator"]["settings"] == {"tensor_parallel_size": 4, "num_engines": 4}
    assert stages["iter_1/eval"].config["generator"]["settings"]["tensor_parallel_size"] == 4
