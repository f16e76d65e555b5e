"""The paper's 7B recipe, scaled down only through ``--set``: the default model in the recipe's own format
(``chat_template: false``), a handful of problems and tiny budgets, through SFT, one self-judged search, one step
DPO, evaluation on two GSM8K problems and the report, as ``openrlhf-psr run`` runs it.

The judge is switched to the logit judge (same judge prompt and format, verdict read from P("A") vs P("B")): after
a few SFT steps the 135M default model, judging generatively, abstains on every comparison (measured: 40 of 40
judge calls, so no pair and nothing for DPO to train on), whereas the logit judge always ranks.

Heavy (vLLM, DeepSpeed): run it under the lock, ``flock /tmp/psr-heavy.lock .venv/bin/pytest -q THIS_FILE``.
The recipe's ``ray_job`` launcher is replaced by the local one (no cluster here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_psr.io import ShardStore

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "psr_qwen2.5_math_7b.yaml"


def test_the_7b_recipe_scaled_down_runs_sft_search_dpo_eval_and_report(shared_data, tmp_path):
    import yaml

    from openrlhf_psr.model_cache import resolve_model

    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["psr"]["chat_template"] is False and recipe["psr"]["judge"]["name"] == "generative"
    train, evals = shared_data / "train", shared_data / "eval"
    overrides = {
        "model": "default",
        "resources.launcher": "local",
        "resources.num_gpus": 0,
        "openrlhf.sft": {},  # ZeRO-3 and gradient checkpointing are for 8 GPUs
        "openrlhf.dpo": {},
        "data.prompts.source": str(train / "gsm8k_train.jsonl"),
        "data.ift": [f"gsm8k:{train / 'gsm8k_train.jsonl'}:6"],
        "data.eft": [f"prm800k:{train / 'prm800k_phase1_train.stepwise.parquet'}:3"],
        "data.eval.data_root": str(evals),
        "data.eval.benchmarks": ["gsm8k@2"],
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
        "psr.search.max_model_len": 2048,
        "dpo.batch_size": 2,
        "dpo.micro_batch_size": 1,
        "dpo.max_len": 1024,
    }
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(RECIPE), "--runs-dir", str(tmp_path)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    run = tmp_path / "psr_qwen2.5_math_7b"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["recipe"]["psr"]["chat_template"] is False
    stages = ["sft_data", "sft", "eval_m1", "iter_1/search", "iter_1/dpo", "iter_1/eval", "report"]
    assert list(manifest["stages"]) == stages
    assert all(manifest["stages"][s]["state"] == "done" for s in stages), manifest["stages"]

    # SFT trained on raw prompts, rendered exactly as the search sent them (no "User: ... Assistant:" wrapper)
    rows = [json.loads(line) for line in (run / "sft" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 2 * 3
    assert all(r["prompt"] == r["input"] + "\n" and not r["prompt"].startswith("User:") for r in rows)
    assert (run / "sft" / "model" / "config.json").is_file()

    from transformers import AutoTokenizer

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
