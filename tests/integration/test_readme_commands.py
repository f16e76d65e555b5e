"""The README's stage commands, run by hand exactly as written (scaled down): search -> step DPO -> evaluate ->
report. Step DPO runs with no launcher environment at all (no RANK/LOCAL_RANK/MASTER_*): it must set up the
single-process distributed environment itself instead of dying in DeepSpeed's MPI discovery (mpi4py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "DS_ACCELERATOR",
)


def _openrlhf_psr() -> list[str]:
    """The installed ``openrlhf-psr`` console script (as the README types it), else its module."""
    script = Path(sys.executable).parent / "openrlhf-psr"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "openrlhf_psr.cli.main"]


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}  # by hand: no launcher set anything
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_readme_stage_commands_run_by_hand(default_model, tmp_path):
    problems = tmp_path / "gsm8k_like.jsonl"
    rows = [
        {"question": "Ava has 3 boxes with 4 pens each. How many pens does she have?", "answer": "3*4=12\n#### 12"},
        {"question": "Tom had 10 apples and ate 3. How many are left?", "answer": "10-3=7\n#### 7"},
    ]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    search = tmp_path / "runs" / "search_only"
    # openrlhf-psr search --model default --problems ... --answer-rule gsm8k --limit 8 --judge logit --aggregate prob
    _run([*_openrlhf_psr(), "search", "--model", "default", "--problems", f"jsonl:{problems}",
          "--answer-rule", "gsm8k", "--limit", "2", "--judge", "logit", "--aggregate", "prob", "--out", str(search),
          "--width", "3", "--temperature", "1.0", "--max-rounds", "2", "--max-tokens-per-step", "24",
          "--max-model-len", "1024"], timeout=900)  # fmt: skip
    summary = json.loads((search / "summary.json").read_text())
    assert summary["pairs"] >= 1, summary

    # python -m openrlhf_psr.cli.train_step_dpo --model.model_name_or_path default --data.dataset runs/search_only ...
    model = tmp_path / "runs" / "m2"
    proc = _run([sys.executable, "-m", "openrlhf_psr.cli.train_step_dpo", "--model.model_name_or_path", "default",
                 "--data.dataset", str(search), "--train.batch_size", "1", "--train.micro_batch_size", "1",
                 "--train.max_epochs", "1", "--data.max_len", "512", "--ds.zero_stage", "2",
                 "--ckpt.output_dir", str(model), "--ckpt.path", str(tmp_path / "ckpt")], timeout=900)  # fmt: skip
    assert "no launcher: single process" in proc.stderr and "mpi4py" not in proc.stderr
    assert (model / "config.json").is_file()

    # python -m openrlhf_psr.cli.evaluate (the launcher's evaluation stage), then openrlhf-psr report RUN
    run = tmp_path / "runs" / "by_hand"
    evaluation = run / "iter_1" / "eval"
    _run([sys.executable, "-m", "openrlhf_psr.cli.evaluate", "--model", str(model), "--out", str(evaluation),
          "--benchmark", "arith?n=2", "--max-tokens", "48", "--max-model-len", "1024"], timeout=900)  # fmt: skip
    report = _run([*_openrlhf_psr(), "report", str(run)], timeout=300)
    assert "| M2 |" in report.stdout and (run / "report" / "summary.json").is_file()


def test_train_step_dpo_answers_bad_input_in_one_line_before_loading_a_model(tmp_path):
    base = [sys.executable, "-m", "openrlhf_psr.cli.train_step_dpo", "--model.model_name_or_path", "default"]
    for extra, culprit in (
        (["--data.dataset", str(tmp_path), "--psr.chat_template", "maybe"], "argument --psr.chat_template"),
        (["--data.dataset", str(tmp_path / "nothing")], f"--data.dataset {tmp_path / 'nothing'}"),
    ):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("openrlhf-psr: error: ")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(errors) == 1 and culprit in errors[0], proc.stderr[-3000:]
        assert "Loading weights" not in proc.stderr  # rejected before any model loads
