"""bench/gpu_step_dpo.py is run by hand on a lent GPU; this keeps it runnable (CPU, tiny shape, fp32)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_step_dpo.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_step_dpo", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_runs_on_cpu_and_its_shared_prefix_matches_two_forwards(tmp_path):
    out = tmp_path / "r.json"
    argv = ["--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--iters", "1", "--batch", "3"]
    assert _load().main([*argv, "--prefix", "40", "--step", "8", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["shapes"]
    assert row["attention"] == "sdpa"  # the launcher's choice for step DPO, not FlashAttention-2
    assert row["exact_float32"]["max_abs_diff_branch_sum"] < 1e-4
    assert row["exact_float32"]["mean_branch_logp"] < 0
    train = row["train"]
    # prefix sharing does fewer model FLOPs than two full forwards on the same pairs
    assert train["shared_prefix"]["model_tflops_per_step"] < train["two_forwards"]["model_tflops_per_step"]
    assert train["shared_prefix"]["pair_tokens_per_s"] > 0


def test_step_flops_counts_layers_head_and_attention():
    bench = _load()
    shape = bench.SHAPES["tiny"]
    base = bench.step_flops(shape, 10, 0, [])
    assert base == 6 * shape.layers * shape.layer_params * 10
    assert bench.step_flops(shape, 10, 2, []) - base == 6 * shape.vocab * shape.hidden * 2
    assert bench.step_flops(shape, 10, 0, [4]) - base == 12 * shape.layers * shape.hidden * 16
