"""The LM head's dtype on OpenRLHF's own vLLM engines: upstream's ``create_vllm_engines`` takes no ``hf_overrides``,
so the engines are handed a view of the model whose config says ``head_dtype`` (``engines/head_dtype.py``). The
integration test ``test_vllm_cpu.py`` reads the head dtype back from a real ``RolloutRayActor``."""

from __future__ import annotations

import doctest
import json
import os
import stat

import pytest

from openrlhf_psr.engines import head_dtype
from openrlhf_psr.engines.head_dtype import view_path, with_head_dtype
from openrlhf_psr.errors import UserError
from openrlhf_psr.fingerprint import model_fingerprint
from openrlhf_psr.preflight import head_dtype_problems

pytestmark = pytest.mark.unit


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "iter_1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_doctests():
    assert doctest.testmod(head_dtype).failed == 0


def test_the_view_says_the_head_dtype_and_serves_the_models_own_files(model):
    fingerprint = model_fingerprint(str(model))
    view = with_head_dtype(str(model), "float32")
    assert view == str(view_path(model, "float32")) and view != str(model)
    config = json.loads((model.parent / ".model.head-float32" / "config.json").read_text())
    assert config == {"model_type": "llama", "torch_dtype": "bfloat16", "head_dtype": "float32"}
    assert sorted(os.listdir(view)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert os.readlink(os.path.join(view, "model.safetensors")) == "../model/model.safetensors"  # relative: movable
    assert stat.S_IMODE(os.stat(view).st_mode) == stat.S_IMODE(model.stat().st_mode)  # as readable as the model
    # the model folder is untouched: its config, and the fingerprint the launcher's resume compares
    assert json.loads((model / "config.json").read_text())["model_type"] == "llama"
    assert "head_dtype" not in json.loads((model / "config.json").read_text())
    assert model_fingerprint(str(model)) == fingerprint


def test_the_view_follows_a_rewritten_model_and_is_reused_when_nothing_changed(model):
    view = with_head_dtype(str(model))
    inode = os.stat(view).st_ino
    assert with_head_dtype(str(model)) == view and os.stat(view).st_ino == inode  # reused, not rebuilt
    # a rerun stage rewrites the checkpoint: new weights are seen through the links, a new file and config too
    (model / "model.safetensors").write_bytes(b"weights v2")
    (model / "generation_config.json").write_text("{}")
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert with_head_dtype(str(model)) == view
    assert open(os.path.join(view, "model.safetensors"), "rb").read() == b"weights v2"
    assert os.path.islink(os.path.join(view, "generation_config.json"))
    with open(os.path.join(view, "config.json")) as handle:
        assert json.load(handle) == {"model_type": "qwen2", "head_dtype": "float32"}
    # a file removed from the model leaves no dangling link
    os.remove(model / "tokenizer.json")
    assert "tokenizer.json" not in os.listdir(with_head_dtype(str(model)))
    # no temporary folder is left beside the model (the lock file stays, as the model cache's do)
    assert sorted(os.listdir(model.parent)) == [".model.head-float32", ".model.head-float32.lock", "model"]


def test_no_view_where_none_is_needed_or_possible(model, monkeypatch, capsys):
    assert with_head_dtype(str(model), "model") == str(model)
    (model / "config.json").write_text(json.dumps({"head_dtype": "float32"}))
    assert with_head_dtype(str(model), "float32") == str(model)
    assert not view_path(model, "float32").exists()
    # a hub name: served as it is, said once on stderr
    assert with_head_dtype("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert "Qwen/Qwen2.5-Math-7B: not a local model folder" in capsys.readouterr().err
    # a parent folder it cannot write (a read-only model store; simulated: the suite may run as root, who can write
    # a read-only folder): served as it is, said on stderr
    (model / "config.json").write_text("{}")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(head_dtype.tempfile, "mkdtemp", refuse)
    assert with_head_dtype(str(model)) == str(model)
    assert "cannot write the head_dtype view next to it (Permission denied)" in capsys.readouterr().err


def test_an_unknown_head_dtype_is_refused_naming_the_setting(model):
    with pytest.raises(UserError, match=r"psr.generator.settings.head_dtype: 'fp32' is not one of float32"):
        with_head_dtype(str(model), "fp32")
    assert head_dtype_problems("openrlhf_ray", {"head_dtype": "fp32"})
    assert head_dtype_problems("openrlhf_ray", {}) == []
    assert head_dtype_problems("vllm", {"head_dtype": "model"}) == []
