"""The CPU compatibility layer: its decision, the patch mechanics, and that the patches fit the pinned upstream."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

import openrlhf_psr.compat as compat
from openrlhf_psr.compat import loader, patching
from openrlhf_psr.compat.patching import PatchError, apply_patch, parse_patch

pytestmark = pytest.mark.unit

TARGET = "openrlhf.models.ring_attn_utils"


def test_doctests():
    for module in (compat, patching):
        assert doctest.testmod(module).failed == 0


def test_decision_changes_nothing_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(loader, "_cuda_available", lambda: True)
    assert loader.PatchingFinder(mode="auto").find_spec(TARGET) is None
    # ... and every patched module is left to the normal import system
    for name in loader.target_modules():
        assert loader.PatchingFinder(mode="auto").find_spec(name) is None


def test_decision_patches_without_cuda(monkeypatch):
    if importlib.util.find_spec("openrlhf") is None:
        pytest.skip("openrlhf is not installed")
    monkeypatch.setattr(loader, "_cuda_available", lambda: False)
    spec = loader.PatchingFinder(mode="auto").find_spec(TARGET)
    assert spec is not None and isinstance(spec.loader, loader._PatchedSourceLoader)
    assert loader.PatchingFinder(mode="off").find_spec(TARGET) is None
    assert loader.PatchingFinder(mode="auto").find_spec("openrlhf.cli.train_dpo") is None  # not a patched module


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="OPENRLHF_PSR_COMPAT='sometimes'"):
        compat.needs_cpu_compat(False, mode="sometimes")


def test_patches_exist_and_name_upstream_modules():
    files = compat.patch_files()
    assert [f.name[:4] for f in files] == ["0001", "0002", "0003", "0004", "0005"]
    modules = loader.target_modules()
    assert modules == [
        "openrlhf.cli.train_sft",
        "openrlhf.models.ring_attn_utils",
        "openrlhf.trainer.ray.vllm_engine",
        "openrlhf.utils.deepspeed.deepspeed",
        "openrlhf.utils.distributed_util",
    ]


def test_every_patch_applies_exactly_to_the_installed_upstream():
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        pytest.skip("openrlhf is not installed")
    site = Path(next(iter(spec.submodule_search_locations))).parent
    for path in compat.patch_files():
        for file_patch in parse_patch(path.read_text()):
            original = (site / file_patch.path).read_text()
            patched = apply_patch(original, file_patch)
            assert patched != original
            compile(patched, file_patch.path, "exec")  # still valid Python


def test_apply_patch_rejects_a_hunk_that_does_not_match():
    diff = "--- a/m.py\n+++ b/m.py\n@@ -1,1 +1,1 @@\n-x = 1\n+x = 2\n"
    [file_patch] = parse_patch(diff)
    assert apply_patch("y = 0\nx = 1\n", file_patch) == "y = 0\nx = 2\n"
    with pytest.raises(PatchError, match="hunk 1 .* not found"):
        apply_patch("x = 3\n", file_patch)
    with pytest.raises(PatchError, match="found 2 times"):
        apply_patch("x = 1\nx = 1\n", file_patch)


def test_module_name_of_a_file_patch():
    [fp] = parse_patch("--- a/openrlhf/models/__init__.py\n+++ b/openrlhf/models/__init__.py\n@@ -1 +1 @@\n-a\n+b\n")
    assert fp.module == "openrlhf.models"
