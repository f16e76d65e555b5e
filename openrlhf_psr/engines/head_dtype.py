"""The LM head's dtype on OpenRLHF's own vLLM engines, which take no ``hf_overrides``.

The logit judge reads P("A")/P("B") from the engine's next-token log-probs; in bf16, close logits round to equal
ones (SPEC asks for the verdict logits in fp32). The in-process engine passes vLLM's
``hf_overrides={"head_dtype": "float32"}``. Upstream's ``create_vllm_engines`` builds its ``RolloutRayActor`` engine
arguments itself (dtype bfloat16, nothing passed through), but vLLM reads ``head_dtype`` from the model's HF config
(``ModelConfig.head_dtype``), so those engines are handed a *view* of the model instead: a sibling folder
``.<name>.head-<dtype>`` holding a copy of ``config.json`` with ``head_dtype`` added and relative symlinks to every
other file. It sits next to the model (on the cluster's shared storage when the model is), outside the model folder
(whose stat fingerprint the launcher's resume reads), is rebuilt when the model's files or config change (in a
temporary folder, then swapped in, under a file lock), and leaves the model itself untouched. Where no view can be
made (a hub name, a read-only parent folder) the model is served as it is, with one line on stderr saying that its
head runs in the model's dtype.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from openrlhf_psr.io import umask_mode
from openrlhf_psr.model_cache import _file_lock

HEAD_DTYPES = ("float32", "bfloat16", "float16", "model")  # "model": the model's own dtype (vLLM's default)


def head_dtype_problem(value: str) -> str | None:
    """The one-line refusal of a ``head_dtype`` these engines cannot serve (preflight and engine start say the same).

    >>> head_dtype_problem("fp32")
    "psr.generator.settings.head_dtype: 'fp32' is not one of float32, bfloat16, float16, model"
    >>> head_dtype_problem("model") is None
    True
    """
    if value in HEAD_DTYPES:
        return None
    return f"psr.generator.settings.head_dtype: {value!r} is not one of {', '.join(HEAD_DTYPES)}"


def view_path(model: str | os.PathLike, head_dtype: str) -> Path:
    """Where the view of ``model`` with ``head_dtype`` lives.

    >>> view_path("/runs/psr/iter_1/model", "float32").as_posix()
    '/runs/psr/iter_1/.model.head-float32'
    """
    model = Path(model)
    return model.parent / f".{model.name}.head-{head_dtype}"


def _wanted(model: Path, config: dict) -> tuple[dict[str, str], str]:
    links = {name: f"../{model.name}/{name}" for name in sorted(os.listdir(model)) if name != "config.json"}
    return links, json.dumps(config, indent=2, sort_keys=True) + "\n"


def _matches(view: Path, links: dict[str, str], config_text: str) -> bool:
    try:
        names = set(os.listdir(view))
        if names != {*links, "config.json"} or (view / "config.json").read_text() != config_text:
            return False
        return all(os.readlink(view / name) == target for name, target in links.items())
    except OSError:
        return False


def _note(message: str) -> None:
    print(f"openrlhf-psr: {message}", file=sys.stderr)


def with_head_dtype(model: str, head_dtype: str = "float32") -> str:
    """The model folder to hand upstream's engines so that vLLM runs their LM head in ``head_dtype``.

    ``model`` itself where nothing has to change (``"model"``, or its config already says so) or nothing can be
    done (not a local folder, parent not writable: said on stderr); else the view (see the module docstring).

    >>> import tempfile
    >>> model = Path(tempfile.mkdtemp()) / "model"
    >>> model.mkdir()
    >>> _ = (model / "config.json").write_text('{"model_type": "llama"}')
    >>> _ = (model / "model.safetensors").write_bytes(b"weights")
    >>> view = Path(with_head_dtype(str(model)))
    >>> view.name, json.loads((view / "config.json").read_text())["head_dtype"]
    ('.model.head-float32', 'float32')
    >>> (view / "model.safetensors").read_bytes(), json.loads((model / "config.json").read_text())
    (b'weights', {'model_type': 'llama'})
    >>> with_head_dtype(str(model), "model") == str(model)
    True
    """
    if problem := head_dtype_problem(head_dtype):
        from openrlhf_psr.errors import UserError

        raise UserError(problem)
    if head_dtype == "model":
        return model
    source = Path(model)
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        _note(f"{model}: not a local model folder with a readable config.json, so OpenRLHF's vLLM engines (which take "
              f"no hf_overrides) run its LM head in the model's dtype, not {head_dtype}; download it to a folder "
              "to get the head_dtype view")  # fmt: skip
        return model
    if config.get("head_dtype") == head_dtype:
        return model
    view = view_path(source, head_dtype)
    links, config_text = _wanted(source, {**config, "head_dtype": head_dtype})
    if _matches(view, links, config_text):
        return str(view)
    try:
        # two drivers serving the same model at once build it once (the second finds it ready under the lock)
        with _file_lock(source.parent / f"{view.name}.lock"):
            if not _matches(view, links, config_text):
                _build(view, links, config_text)
    except OSError as exc:
        _note(f"{model}: cannot write the head_dtype view next to it ({exc.strerror or exc}), so OpenRLHF's vLLM "
              f"engines run its LM head in the model's dtype, not {head_dtype}")  # fmt: skip
        return model
    return str(view)


def _build(view: Path, links: dict[str, str], config_text: str) -> None:
    """Write the view in a temporary folder beside it, then swap it in (a killed build leaves no half view)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{view.name}.", dir=view.parent))
    try:
        os.chmod(tmp, umask_mode(directory=True))  # not mkdtemp's 0700: the engines' view lives in the runs dir
        for name, target in links.items():
            os.symlink(target, tmp / name)
        (tmp / "config.json").write_text(config_text)
        if view.exists():
            shutil.rmtree(view)
        os.replace(tmp, view)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
