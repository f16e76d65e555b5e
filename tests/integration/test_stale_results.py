"""Stale results after a change (issue 10, point 5) on the real stack: a reference model retrained in place gets
its reference log-probs recomputed, and the stages after it rerun; the reference cache key follows the weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def _retrain_in_place(model: Path) -> None:
    """Change the weights file where it is (as a training run writing its output folder again would)."""
    from safetensors.torch import load_file, save_file

    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.endswith("norm.weight"))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, weights, metadata={"format": "pt"})


def test_reference_cache_key_changes_when_the_reference_is_retrained_in_place(tiny_model, tmp_path):
    from openrlhf_psr.data.step_pairs import StepPair, StepPairDataset
    from openrlhf_psr.trainers.step_dpo import dataset_fingerprint

    model = Path(shutil.copytree(tiny_model, tmp_path / "ref"))
    dataset = StepPairDataset([StepPair((1, 2, 3), (4, 5), (6,), "x")], max_len=64, pad_token_id=0)
    before = dataset_fingerprint(dataset, str(model), "torch.float32")
    assert dataset_fingerprint(dataset, str(model), "torch.float32") == before  # stable while nothing changes
    _retrain_in_place(model)
    assert dataset_fingerprint(dataset, str(model), "torch.float32") != before


def _run(recipe: Path, runs: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.main", "run", str(recipe), "--runs-dir", str(runs)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def test_a_reference_retrained_in_place_reruns_the_search_and_recomputes_reference_logprobs(tiny_model, tmp_path):
    m0 = Path(shutil.copytree(tiny_model, tmp_path / "m0"))  # M0 = M1 (no SFT): iteration 1's policy and reference
    recipe = tmp_path / "stale.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "stale",
        "model": str(m0),
        "data": {"prompts": {"source": "builtin:arith?seed=5"}, "eval": {"benchmarks": []}},
        "stages": {"sft": {"enabled": False}, "iterations": 1, "prompts_per_iteration": [6]},
        "psr": {"generator": {"name": "vllm", "settings": {"enforce_eager": True}, "max_model_len": 1024},
                "judge": {"name": "logit"},
                "search": {"width": 3, "max_tokens_per_step": 12, "max_rounds": 4, "aggregate": "prob"}},
        "dpo": {"epochs": 1, "lr": 1e-4, "batch_size": 2, "micro_batch_size": 2, "max_len": 1024},
    }))  # fmt: skip
    runs = tmp_path / "runs"
    run = runs / "stale"
    ckpt = run / "iter_1" / "dpo" / "ckpt"
    log = run / "logs" / "iter_1_dpo.log"

    first = _run(recipe, runs)
    assert first.returncode == 0, first.stderr[-4000:]
    old_cache = sorted(p.name for p in ckpt.glob("reference_logps-*.json"))
    assert len(old_cache) == 1 and log.read_text().count("reference log-probs") >= 1
    computed_before = log.read_text().count("reference log-probs")
    old_model = (run / "iter_1" / "model" / "model.safetensors").stat().st_mtime_ns

    unchanged = _run(recipe, runs)  # nothing changed: everything is skipped
    assert unchanged.returncode == 0, unchanged.stderr[-4000:]
    assert unchanged.stdout.count("done, skipped") == 3, unchanged.stdout

    _retrain_in_place(m0)
    second = _run(recipe, runs)
    assert second.returncode == 0, second.stderr[-4000:]
    out = second.stdout
    assert f"iter_1/search: rerunning from scratch: changed since it ran: input {m0}" in out, out
    assert "iter_1/dpo: rerunning from scratch: changed since it ran: " in out, out
    assert "report: rerunning from scratch" in out and "done, skipped" not in out, out
    new_cache = sorted(p.name for p in ckpt.glob("reference_logps-*.json"))
    assert len(new_cache) == 1 and new_cache != old_cache  # recomputed under the new weights' key
    assert log.read_text().count("reference log-probs") > computed_before
    assert (run / "iter_1" / "model" / "model.safetensors").stat().st_mtime_ns != old_model  # M2 retrained
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["state"] == "done" and "fingerprint" in s for s in manifest["stages"].values())
    assert any(str(m0) in key for key in manifest["stages"]["iter_1/dpo"]["fingerprint"]["inputs"])
