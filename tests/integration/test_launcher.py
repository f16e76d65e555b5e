"""The launcher on the real stack: kill -9 and resume during search and during DPO (at pause points, no timers),
third-party judges from a recipe (an installed entry point, and ``module:attr``), and ``--dry-run`` checked against
the pinned upstream flags."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from openrlhf_psr.io import ShardStore
from openrlhf_psr.pause import ENV as PAUSE_ENV
from openrlhf_psr.trainers.checkpoints import MARKER

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def tiny_recipe(tmp_path: Path, tiny_model: str, name: str, judge: str, **over) -> Path:
    recipe = {
        "name": name,
        "model": tiny_model,
        "data": {"prompts": {"source": "builtin:arith?seed=5"}, "eval": {"benchmarks": []}},
        "stages": {"sft": {"enabled": False}, "iterations": 1, "prompts_per_iteration": [6]},
        "psr": {
            "generator": {"name": "vllm", "settings": {"enforce_eager": True}, "max_model_len": 1024},
            "judge": {"name": judge},
            "search": {"width": 3, "max_tokens_per_step": 12, "max_rounds": 4, "aggregate": "prob"},
        },
        "dpo": {"epochs": 2, "lr": 1e-4, "batch_size": 4, "micro_batch_size": 2, "max_len": 1024},
        "openrlhf": {"dpo": {"--ckpt.save_steps": 1, "--ckpt.max_num": 1}},
        "resources": {"env": over.pop("env", {})},
    }  # fmt: skip
    recipe.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(recipe: Path, runs: Path, *extra: str, timeout=1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(recipe), "--runs-dir", str(runs), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _kill_at(recipe: Path, runs: Path, log: Path, point: str, timeout=900) -> str:
    """Run the recipe until a stage reports being paused at ``point`` in its ``log`` (``OPENRLHF_PSR_PAUSE_AT``),
    then kill -9 the run and every stage process it started; returns that stage's log of this attempt."""
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(recipe), "--runs-dir", str(runs)]
    before = log.read_text().count(f"paused at {point}") if log.is_file() else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, PAUSE_ENV: point})  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while not (log.is_file() and log.read_text().count(f"paused at {point}") > before):
            if proc.poll() is not None:
                tail = log.read_text()[-3000:] if log.is_file() else "(no log)"
                pytest.fail(f"the run ended (exit {proc.returncode}) before pausing at {point}:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not pause at {point} within {timeout}s")
            time.sleep(0.2)  # polls for a state the stage holds until killed: no race
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return _last_attempt(log)


def _last_attempt(log: Path) -> str:
    return log.read_text().rsplit("\n$ ", 1)[-1]  # the launcher writes "$ <command>" before every attempt


def _check_search(run: Path) -> int:
    store = ShardStore(run / "iter_1" / "search")
    trajectories = list(store.read("trajectories"))
    ids = [t["problem_id"] for t in trajectories]
    assert len(ids) == len(set(ids)) == 6  # every problem once
    pairs = [(p["problem_id"], p["step_index"]) for p in store.read("pairs")]
    assert len(pairs) == len(set(pairs))  # no duplicated pair
    # no lost pair: replaying each trajectory's rounds gives exactly the pairs on its final accepted path
    expected = set()
    for t in trajectories:
        path: list[bool] = []  # has a pair, per accepted step
        for r in t["rounds"]:
            if r["action"] in ("accept", "accept_unanimous"):
                path.append(r["action"] == "accept")
            elif r["action"] == "rollback" and path:
                path.pop()
        assert len(path) == len(t["steps"])
        expected |= {(t["problem_id"], k) for k, has_pair in enumerate(path) if has_pair}
    assert set(pairs) == expected
    return len(pairs)


def test_a_run_killed_during_search_and_during_dpo_resumes_to_the_end(tiny_model, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_model, "killed", "logit")
    runs = tmp_path / "runs"
    run = runs / "killed"
    logs = run / "logs"
    _kill_at(recipe, runs, logs / "iter_1_search.log", "search-commit")  # after the first committed shard
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["iter_1/search"]["state"] == "running"
    assert any((run / "iter_1" / "search" / "trajectories").iterdir())

    # killed after the step-1 checkpoint was marked complete, then inside DeepSpeed's write of step 2 (with
    # --ckpt.max_num 1 the old rotation had already deleted step 1: DPO could not resume at all)
    ckpt = run / "iter_1" / "dpo" / "ckpt"
    first = _kill_at(recipe, runs, logs / "iter_1_dpo.log", "ckpt-complete:global_step1")
    assert "Loaded the checkpoint" not in first
    assert json.loads((run / "manifest.json").read_text())["stages"]["iter_1/search"]["state"] == "done"
    n_pairs = _check_search(run)
    assert n_pairs >= 4  # at least one DPO step per epoch, two epochs
    second = _kill_at(recipe, runs, logs / "iter_1_dpo.log", "ckpt-partial:global_step2")
    assert "Loaded the checkpoint" in second and "consumed_samples: 4" in second, second[-3000:]
    assert (ckpt / "global_step1" / MARKER).is_file() and not (ckpt / "global_step2" / MARKER).exists()
    assert (ckpt / "latest").read_text().strip() == "global_step1"  # DeepSpeed had not moved it yet

    proc = _run(recipe, runs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "iter_1/search: done, skipped" in proc.stdout
    last = _last_attempt(logs / "iter_1_dpo.log")
    assert "Loaded the checkpoint" in last and "consumed_samples: 4" in last, last[-3000:]  # resumed, not restarted
    assert "reference log-probs" not in last  # the cached reference log-probs were reused
    assert _check_search(run) == n_pairs
    [kept] = [p.name for p in ckpt.iterdir() if p.is_dir()]  # --ckpt.max_num 1: the last one, whole
    assert (ckpt / kept / MARKER).is_file() and (ckpt / "latest").read_text() == kept
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["state"] == "done" for s in manifest["stages"].values())
    assert (run / "iter_1" / "model" / "config.json").is_file() and (run / "report" / "summary.json").is_file()
    status = subprocess.run([sys.executable, "-m", "openrlhf_psr.cli.main", "status", str(run)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0 and re.search(r"iter_1/dpo\s+done", status.stdout)


JUDGE_MODULE = textwrap.dedent(
    '''
    from openrlhf_psr.judges.base import Judgment, PairwiseJudge
    from openrlhf_psr.tournament import Verdict


    class LongerStepJudge(PairwiseJudge):
        """Prefers the longer step (a third-party judge with observable behaviour)."""

        def judge(self, comparisons):
            return [Judgment(Verdict("A" if len(c.step_a) > len(c.step_b) else "B")) for c in comparisons]
    '''
)


def _assert_longer_chosen(proc: subprocess.CompletedProcess, run: Path):
    assert proc.returncode == 0, proc.stderr[-4000:]
    pairs = list(ShardStore(run / "iter_1" / "search").read("pairs"))
    assert pairs and all(len(p["chosen"].strip()) >= len(p["rejected"].strip()) for p in pairs)
    # --until iter_1/search: the judge's pairs are written, nothing trained on them yet
    assert "stopped after iter_1/search (--until)" in proc.stdout, proc.stdout
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["iter_1/search"]["state"] == "done" and "iter_1/dpo" not in stages
    assert not (run / "iter_1" / "model").exists()


def test_third_party_judges_by_entry_point_and_by_module_attr(tiny_model, tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "psr_thirdparty").mkdir(parents=True)
    (pkg / "psr_thirdparty" / "__init__.py").write_text(JUDGE_MODULE)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(
        """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "psr-thirdparty-judge"
        version = "0.0.1"
        [project.entry-points."openrlhf_psr.judges"]
        longer_step = "psr_thirdparty:LongerStepJudge"
        """))  # fmt: skip
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(pkg)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    try:
        from openrlhf_psr.registry import JUDGES

        assert "longer_step" in JUDGES.names()
        runs = tmp_path / "runs"
        proc = _run(tiny_recipe(tmp_path, tiny_model, "entrypoint", "longer_step"), runs, "--until", "iter_1/search")
        _assert_longer_chosen(proc, runs / "entrypoint")
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "psr-thirdparty-judge"], timeout=300)

    # module:attr, importable only through the recipe's environment (as under Ray's working_dir)
    (tmp_path / "local_judges.py").write_text(JUDGE_MODULE)
    recipe = tiny_recipe(tmp_path, tiny_model, "moduleattr", "local_judges:LongerStepJudge",
                         env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    proc = _run(recipe, tmp_path / "runs", "--until", "iter_1/search")
    _assert_longer_chosen(proc, tmp_path / "runs" / "moduleattr")


def test_lora_sft_through_the_launcher_leaves_a_whole_m1_that_the_engine_evaluates(tiny_model, tmp_path):
    """``openrlhf.sft: {--ds.lora.rank: N}``: upstream's train_sft saves the adapter alone (a folder no engine can
    load); the ``sft_merge`` stage merges it into M0, and M1's evaluation on vLLM runs on the result."""
    import torch
    from safetensors.torch import load_file

    recipe = tiny_recipe(
        tmp_path, tiny_model, "lora_sft", "logit",
        data={"prompts": {"source": "builtin:arith?seed=5"}, "ift": ["builtin:arith?n=16"],
              "eval": {"benchmarks": ["arith?n=4"], "max_tokens": 16, "before_training": False}},
        stages={"sft": {"enabled": True, "epochs": 1, "lr": 1e-3, "batch_size": 4, "micro_batch_size": 2,
                        "max_len": 512}, "iterations": 1, "prompts_per_iteration": [6]},
        openrlhf={"sft": {"--ds.lora.rank": 8, "--ds.lora.alpha": 16}},
    )  # fmt: skip
    proc = _run(recipe, tmp_path / "runs", "--until", "eval_m1")
    run = tmp_path / "runs" / "lora_sft"
    assert proc.returncode == 0, proc.stderr[-3000:] + (run / "logs" / "sft_merge.log").read_text()[-2000:]
    assert (run / "sft" / "lora_adapter" / "adapter_config.json").is_file()
    base, merged = load_file(f"{tiny_model}/model.safetensors"), load_file(run / "sft" / "model" / "model.safetensors")
    assert set(merged) == set(base)  # the base model's own names: a whole model, not an adapter
    q = "model.layers.0.self_attn.q_proj.weight"
    assert merged[q].dtype == torch.bfloat16 and not merged[q].equal(base[q].to(torch.bfloat16))
    evaluation = json.loads((run / "sft" / "eval" / "eval.json").read_text())
    assert len(evaluation["benchmarks"]["arith"]["records"]) == 4


def _flags(command: list[str]) -> set[str]:
    return {tok for tok in command if tok.startswith("--") and "." in tok}


def test_dry_run_of_the_7b_recipe_uses_only_flags_the_pinned_upstream_accepts(shared_data):
    from openrlhf_psr.cli.train_step_dpo import build_parser, upstream_parser

    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(REPO / "recipes" / "psr_qwen2.5_math_7b.yaml"),
         "--dry-run"], capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    assert all(c[:3] == ["ray", "job", "submit"] and "--runtime-env-json" in c for c in commands)
    sft_flags = set(upstream_parser("openrlhf.cli.train_sft")._option_string_actions)
    dpo_flags = set(build_parser()._option_string_actions)
    sft = [c for c in commands if "openrlhf.cli.train_sft" in c]
    dpo = [c for c in commands if "openrlhf_psr.cli.train_step_dpo" in c]
    assert len(sft) == 1 and len(dpo) == 3
    assert sft[0][sft[0].index("--") + 1 : sft[0].index("--") + 6] == ["deepspeed", "--num_gpus", "8", "--module",
                                                                        "openrlhf.cli.train_sft"]  # fmt: skip
    assert _flags(sft[0]) <= sft_flags, _flags(sft[0]) - sft_flags
    for c in dpo:
        assert _flags(c) <= dpo_flags, _flags(c) - dpo_flags


def test_a_misspelt_vllm_engine_setting_is_refused_before_any_stage_runs(tmp_path):
    """The engine passes unknown settings on to vLLM, so only the installed vLLM can say a key is wrong: the dry run
    names it (with the right spelling) instead of a TypeError when the first engine starts, possibly after SFT."""
    base = [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(REPO / "recipes" / "tiny_cpu.yaml"),
            "--runs-dir", str(tmp_path), "--dry-run"]  # fmt: skip
    bad = subprocess.run([*base, "--set", "psr.generator.settings={gpu_memory_utilisation: 0.5, enforce_eager: true}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert bad.returncode != 0
    assert ("psr.generator.settings.gpu_memory_utilisation: not a setting of the vllm engine or of vLLM's EngineArgs; "
            "did you mean 'gpu_memory_utilization'?") in bad.stdout + bad.stderr  # fmt: skip
    assert "enforce_eager" not in bad.stdout + bad.stderr  # real vLLM and engine settings pass
    good = subprocess.run([*base, "--set", "psr.generator.settings={head_dtype: model, gpu_memory_utilization: 0.5}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
