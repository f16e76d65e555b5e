"""Shared fixtures. Heavy ones (a vLLM engine, a Ray cluster) are created once per pytest run."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PSR_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep vLLM's CPU KV cache small: tests hold at most two engines on a 24 GiB machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# This environment's bin dir first on PATH for every process the tests start: torch builds DeepSpeed's CPU ops with
# the first `ninja` on PATH, and the venv's (1.13, from pip) and a system one (1.11) hash build commands differently,
# so processes that alternate between them rebuild fused_adam and the shm comm op (30-110 s each time) on every switch.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def python() -> str:
    """The interpreter of this environment (subprocess tests must use the same one, with its .pth)."""
    return sys.executable


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared benchmark data at {SHARED_DATA} (absent outside the project workplace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def recipe_data(tmp_path_factory) -> list[str]:
    """Recipe overrides under which every recipe in recipes/ loads where ``../shared/data`` is absent.

    The paper recipes name files under ``../shared/data``, and loading a recipe checks that they exist. Tests that
    read a recipe's stage commands, plan or manifest (never its data) take these overrides: none where the shared
    data is present; elsewhere ``cluster.data_root`` pointed at a folder whose ``../shared/data`` holds empty files
    with the names the recipes give, so those tests run outside the workplace too instead of failing to load.
    """
    if SHARED_DATA.is_dir():
        return []
    base = tmp_path_factory.mktemp("recipe_data")
    for recipe in (REPO / "recipes").glob("*.yaml"):
        for name in re.findall(r"\.\./shared/data/[\w./-]+", recipe.read_text(encoding="utf-8")):
            target = base / name.removeprefix("../")
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                target.mkdir(parents=True, exist_ok=True)
    (base / "root").mkdir()
    return [f"cluster.data_root={base / 'root'}"]


@pytest.fixture(scope="session")
def default_model() -> str:
    from openrlhf_psr.model_cache import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from openrlhf_psr.model_cache import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def default_llm(default_model):
    """One in-process vLLM engine on the default model for the whole run."""
    from openrlhf_psr.engines.vllm_local import create_llm

    llm = create_llm(default_model, seed=0, max_model_len=2048)
    yield llm
    del llm


@pytest.fixture(scope="session")
def local_ray():
    from openrlhf_psr.engines.openrlhf_ray import start_local_ray

    ray = start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_default_engine(local_ray, default_model):
    """OpenRLHF's own vLLM engine (a RolloutRayActor) on the default model, wrapped as our Engine."""
    from transformers import AutoTokenizer

    from openrlhf_psr.engines.openrlhf_ray import OpenRLHFRayEngine, create_engines

    engines = create_engines(default_model, num_engines=1, enforce_eager=True, max_model_len=2048)
    engine = OpenRLHFRayEngine(engines, AutoTokenizer.from_pretrained(default_model))
    yield engine
    engine.close()
