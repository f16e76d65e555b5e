"""The cluster path on one machine, as a cluster user runs it: a Ray head started by ``scripts/cluster/start_head.sh``,
then ``scripts/cluster/submit.sh recipes/psr_qwen2.5_math_7b.yaml`` with ``--set`` overrides that only scale the
paper's 7B recipe down (the default model in the recipe's own format, a handful of problems, one iteration, tiny
budgets), with the recipe's own generator, ``ray_job`` launcher and raw prompt format, and the runs dir outside
the working tree. The whole loop runs as one Ray job in Ray's unpacked copy of the working dir: SFT, one
self-judged search, one step DPO, evaluation and the report must all land in the runs dir; a second submit must
resume from it without running any stage again.

This is also the CI run of the 7B recipe (it replaced ``test_recipe_7b_scaled.py``, which ran the same
scaled-down recipe through the local launcher): one scaled-down run for both paths.

The judge is switched to the logit judge (same judge prompt and format, verdict read from P("A") vs P("B")): after
a few SFT steps the 135M default model, judging generatively, abstains on every comparison (measured: 40 of 40
judge calls, so no pair and nothing for DPO to train on), whereas the logit judge always ranks.

Heavy (Ray, vLLM, DeepSpeed): run it under the lock, ``flock /tmp/psr-heavy.lock .venv/bin/pytest -q THIS_FILE``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from openrlhf_psr.io import ShardStore
from openrlhf_psr.preflight import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "psr_qwen2.5_math_7b.yaml"
SCRIPTS = REPO / "scripts" / "cluster"
BIN = Path(sys.executable).parent
STAGES = ["sft_data", "sft", "eval_m1", "iter_1/search", "iter_1/dpo", "iter_1/eval", "report"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head as ``start_head.sh`` starts it (one logical GPU for upstream's ``{"GPU": 1}`` bundles), on free
    ports and its own temp dir so that it cannot meet another Ray on this machine; stopped with its whole session."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rayc")  # short: Ray's socket paths must fit 107 characters
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # the job's `python` is this environment's
    log_path = tmp_path_factory.mktemp("head") / "head.log"
    extra = ["--port", str(gcs), "--dashboard-port", str(dashboard), "--num-cpus", "4",
             "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
             "--resources", json.dumps({"psr_submit_test": 1}), "--temp-dir", temp_dir, "--block"]  # fmt: skip
    with open(log_path, "w") as log:
        head = subprocess.Popen(["bash", str(SCRIPTS / "start_head.sh"), "1", *extra], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:  # ready when it runs a job (its dashboard agent is up), not after a fixed sleep
            assert head.poll() is None, log_path.read_text()[-4000:]
            probe = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                                    "--", "true"], capture_output=True, text=True, env=env)  # fmt: skip
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, (
                f"no job ran on the Ray head:\n{log_path.read_text()[-2000:]}\n{probe.stdout + probe.stderr[-3000:]}"
            )
            time.sleep(3)
        yield {"address": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{gcs}", "env": env, "temp_dir": temp_dir}
    finally:
        _stop_jobs(f"http://127.0.0.1:{dashboard}")
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started (its own session)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_jobs(address: str) -> None:
    """Stop every job still running on the head first: a job's driver is not in the head's process group and would
    outlive it (a failed test must not leave a vLLM engine running under the rest of the suite)."""
    try:
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(address)
        for job in client.list_jobs():
            if job.submission_id and job.status in (JobStatus.PENDING, JobStatus.RUNNING):
                client.stop_job(job.submission_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(not j.status.is_terminal() for j in client.list_jobs()):
            time.sleep(2)
    except Exception as exc:  # the head may already be gone; the process-group kill below still runs
        print(f"ray_head teardown: could not stop jobs: {exc}")


def _overrides(shared_data: Path) -> dict:
    """Scale only: model, data sizes, budgets; plus the logit judge (see the module docstring)."""
    train, evals = shared_data / "train", shared_data / "eval"
    return {
        "model": "default",
        "resources.num_gpus": 0,  # a CPU machine
        "cluster.gpus_per_node": 1,  # the head's one logical GPU: one search/eval engine (8 would never be placed)
        "data.prompts.source": f"jsonl:{train / 'gsm8k_train.jsonl'}",
        "data.ift": [f"gsm8k:{train / 'gsm8k_train.jsonl'}?limit=6"],
        "data.eft": [f"prm800k:{train / 'prm800k_phase1_train.stepwise.parquet'}?limit=3"],
        "data.eval.data_root": str(evals),
        "data.eval.benchmarks": ["gsm8k?limit=2"],
        "data.eval.judge_sets": [],
        "data.eval.before_training": False,
        "data.eval.max_tokens": 64,
        "stages.sft.epochs": 1,
        "stages.sft.lr": 1.0e-5,
        "stages.sft.batch_size": 4,
        "stages.sft.micro_batch_size": 2,
        "stages.sft.max_len": 1024,
        "stages.iterations": 1,
        "stages.prompts_per_iteration": [4],
        "psr.generator.settings": {"enforce_eager": True},
        "psr.judge.name": "logit",
        "psr.judge.settings": {},
        "psr.search.aggregate": "prob",
        "psr.search.width": 3,
        "psr.search.max_tokens_per_step": 40,
        "psr.search.max_rounds": 3,
        "psr.generator.max_model_len": 2048,
        "dpo.batch_size": 2,
        "dpo.micro_batch_size": 1,
        "dpo.max_len": 1024,
    }


def _submit(ray_head, runs: Path, overrides: dict) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPTS / "submit.sh"), "recipes/psr_qwen2.5_math_7b.yaml"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "RUNS_DIR": str(runs),
           "OPENRLHF_PSR_PROGRESS_EVERY": "600"}  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO, env=env)


def test_submit_sh_runs_the_7b_recipe_scaled_down_on_a_ray_head_and_a_resubmit_resumes(
    ray_head, shared_data, tmp_path
):
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["resources"]["launcher"] == "ray_job" and recipe["psr"]["chat_template"] is False
    assert recipe["psr"]["judge"]["name"] == "generative"
    overrides = _overrides(shared_data)
    assert not {k for k in overrides if k.startswith(("resources.launcher", "psr.generator.name", "psr.chat"))}
    runs = tmp_path / "shared_runs"  # outside the working tree, as shared storage would be

    first = _submit(ray_head, runs, overrides)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert "Job 'raysubmit_" in out and "succeeded" in out, out[-3000:]

    run = runs / "psr_qwen2.5_math_7b"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    assert all(manifest["stages"][s]["state"] == "done" for s in STAGES), manifest["stages"]
    assert manifest["recipe"]["psr"]["chat_template"] is False
    assert manifest["recipe"]["psr"]["generator"]["name"] == recipe["psr"]["generator"]["name"]
    # nothing was written into Ray's unpacked copy of the working dir
    assert not list(Path(ray_head["temp_dir"]).rglob("manifest.json"))

    # SFT trained on raw prompts, rendered exactly as the search sent them (no "User: ... Assistant:" wrapper)
    rows = [json.loads(line) for line in (run / "sft" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 2 * 3
    assert all(r["prompt"] == r["input"] + "\n" and not r["prompt"].startswith("User:") for r in rows)
    assert (run / "sft" / "model" / "config.json").is_file()
    # checkpoints at stage end only: no DeepSpeed checkpoint was written along the way
    for ckpt in (run / "sft" / "ckpt", run / "iter_1" / "dpo" / "ckpt"):
        assert not ckpt.exists() or not list(ckpt.glob("global_step*")), sorted(ckpt.iterdir())

    from transformers import AutoTokenizer

    from openrlhf_psr.model_cache import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default"))
    trajectories = list(ShardStore(run / "iter_1" / "search").read("trajectories"))
    assert len(trajectories) == 4
    for t in trajectories:
        prompt = tokenizer.decode(t["prompt_ids"])
        assert prompt.endswith(f"Problem: {t['question'].strip()}\n") and "<|im_start|>" not in prompt
    summary = json.loads((run / "iter_1" / "search" / "summary.json").read_text())
    assert summary["problems"] == 4 and summary["judge_calls"] > 0 and summary["pairs"] >= 2
    assert (run / "iter_1" / "model" / "config.json").is_file()
    for ev in (run / "sft" / "eval", run / "iter_1" / "eval"):
        metrics = json.loads((ev / "eval.json").read_text())["benchmarks"]["gsm8k"]["metrics"]
        assert metrics["n"] == 2
    report = json.loads((run / "report" / "summary.json").read_text())
    assert set(report["models"]) == {"M1", "M2"}

    # a second submit of the same recipe resumes from the shared runs dir: every stage skipped, none started again
    second = _submit(ray_head, runs, overrides)
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-6000:]
    for k, stage in enumerate(STAGES, 1):
        assert f"[{k}/{len(STAGES)}] {stage}: done, skipped" in out2, out2[-4000:]
    assert "running (log:" not in out2 and "rerunning" not in out2, out2[-4000:]
    again = json.loads((run / "manifest.json").read_text())
    for stage in STAGES:
        before, after = manifest["stages"][stage], again["stages"][stage]
        assert (after["state"], after["started"], after["finished"]) == (
            "done", before["started"], before["finished"]), stage  # fmt: skip


def test_step_dpo_on_two_nodes_placed_by_ray(ray_head, tiny_model, tmp_path):
    """What the launcher runs for ``cluster.nodes: 2`` (here one CPU rank per node): two ranks of one DeepSpeed
    job, each a Ray task in one placement group, meeting at rank 0's node; the model is saved once, by rank 0."""
    from openrlhf_psr.data.sft import builtin_step_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in builtin_step_pairs(8)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.ray_train", "--nodes", "2", "--gpus-per-node", "0",
           "openrlhf_psr.cli.train_step_dpo", "--model.model_name_or_path", tiny_model, "--data.dataset", str(data),
           "--data.max_len", "256", "--train.micro_batch_size", "1", "--train.batch_size", "4",
           "--train.max_epochs", "1", "--adam.lr", "1e-3", "--ds.zero_stage", "2", "--ds.param_dtype", "bf16",
           "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"), "--ckpt.save_steps", "-1",
           "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(out / "tb")]  # fmt: skip
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["gcs"], "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "[ray_train] rank 0/2" in log and "[ray_train] rank 1/2" in log, log[-4000:]
    assert (out / "model" / "config.json").is_file()
    assert not (out / "ckpt").exists() or not list((out / "ckpt").glob("global_step*"))


def test_multi_node_training_commands_of_the_72b_recipe_use_only_flags_the_pinned_upstream_accepts(tmp_path):
    """``ray_train`` hands the module its flags unchanged: upstream's (SFT), ours and upstream's (DPO)."""
    import yaml

    from openrlhf_psr.cli import ray_train
    from openrlhf_psr.cli.app import Parser
    from openrlhf_psr.cli.train_step_dpo import build_parser, upstream_parser
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import Recipe

    recipe = Recipe.model_validate(yaml.safe_load((REPO / "recipes" / "psr_qwen2.5_math_72b.yaml").read_text()))
    parsers = {"openrlhf.cli.train_sft": upstream_parser("openrlhf.cli.train_sft"),
               "openrlhf_psr.cli.train_step_dpo": build_parser()}  # fmt: skip
    checked = 0
    for stage in RecipeRun(recipe, runs_dir=tmp_path).plan():
        if "openrlhf_psr.cli.ray_train" not in stage.command:
            continue
        parser = Parser(prog="ray_train")
        ray_train.add_arguments(parser)
        args = parser.parse_args(stage.command[stage.command.index("openrlhf_psr.cli.ray_train") + 1 :])
        assert (args.nodes, args.gpus_per_node) == (2, 8)
        parsers[args.module].parse_args(args.args)  # exits (SystemExit) on any flag it does not know
        checked += 1
    assert checked == 4  # SFT and three DPO iterations
