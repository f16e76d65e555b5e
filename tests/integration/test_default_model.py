"""The embedded default model: converted once, safely when two processes ask at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

RESOLVE = "from openrlhf_psr.model_cache import resolve_model; print(resolve_model('default'))"


def test_two_processes_converting_at_once_produce_one_valid_folder(tmp_path):
    env = {**os.environ, "OPENRLHF_PSR_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RESOLVE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode()[-2000:] for _, err in results]
    paths = {out.decode().strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    folder = tmp_path / "models"
    entries = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
    assert entries == [os.path.basename(paths.pop())]  # no half-written temporary folder left behind
    model_dir = folder / entries[0]
    marker = json.loads((model_dir / "openrlhf_psr_conversion.json").read_text())
    assert entries[0].endswith(marker["sha256"][:12])
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["num_attention_heads"] == 9 and config["hidden_size"] == 576  # SmolLM2-135M
