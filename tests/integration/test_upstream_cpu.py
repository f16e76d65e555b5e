"""Upstream OpenRLHF, unmodified on disk, imports and trains on CPU through the compatibility layer."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openrlhf_psr.preflight import cpu_distributed_env

pytestmark = pytest.mark.integration

UPSTREAM_MODULES = [
    "openrlhf.models",
    "openrlhf.trainer.dpo_trainer",
    "openrlhf.cli.train_dpo",
    "openrlhf.cli.train_sft",
    "openrlhf.trainer.ray",
]


def test_upstream_modules_import_in_a_fresh_interpreter():
    """A fresh interpreter (as Ray, DeepSpeed and vLLM start them) gets the hook from the .pth, not from us."""
    code = textwrap.dedent(
        f"""
        import json, sys
        assert not any(m.startswith("openrlhf_psr") for m in sys.modules) or True
        for name in {UPSTREAM_MODULES!r}:
            __import__(name)
        import openrlhf.utils.deepspeed.deepspeed, openrlhf.utils.distributed_util
        from openrlhf_psr.compat import status
        print(json.dumps(status()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(status.values()) == {"patched"}, status


def test_without_the_layer_upstream_does_not_import_on_cpu():
    """Shows the patches are what makes it work: with the hook off, flash_attn is missing.
    (Moved from tests/unit/test_compat.py: it needs torch and upstream, so it is not a unit test.)"""
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {**os.environ, "OPENRLHF_PSR_COMPAT": "off"}
    proc = subprocess.run([sys.executable, "-c", "import openrlhf.models"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "flash_attn" in proc.stderr


def _pairs(path: Path, n: int = 32) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append(
            {"prompt": f"What is {a} plus {b}?", "chosen": f" The answer is {a + b}.", "rejected": f" Maybe {a * b}!"}
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scalars(tb_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = [p for p in tb_dir.iterdir() if p.is_dir()]
    events = EventAccumulator(str(run))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


VLLM_GENERATE = textwrap.dedent(
    """
    import json, sys
    if __name__ == "__main__":
        from vllm import SamplingParams
        from openrlhf_psr.engines.vllm_local import create_llm
        llm = create_llm(sys.argv[1], enforce_eager=True, max_model_len=512)
        [out] = llm.generate(["What is 2 plus 3?"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        print("RESULT", json.dumps({"token_ids": list(out.outputs[0].token_ids)}), flush=True)
    """
)


def test_train_dpo_cli_trains_on_cpu_and_the_checkpoint_serves_in_vllm(tiny_model, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl")
    out, tb = tmp_path / "out", tmp_path / "tb"
    cmd = [
        sys.executable, "-m", "openrlhf.cli.train_dpo",
        "--model.model_name_or_path", tiny_model,
        "--data.dataset", str(data),
        "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
        "--data.max_len", "128",
        "--train.micro_batch_size", "4", "--train.batch_size", "8", "--train.max_epochs", "2",
        "--adam.lr", "5e-4", "--lr_warmup_ratio", "0", "--model.beta", "0.1",
        "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--ckpt.output_dir", str(out), "--ckpt.path", str(tmp_path / "ckpt"),
        "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(tb),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cpu_distributed_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    losses = _scalars(tb, "train/loss")
    assert len(losses) == 8  # 32 pairs / batch 8 * 2 epochs
    assert abs(losses[0] - 0.6931) < 0.02  # starts at log 2: policy == reference
    assert losses[-1] < 0.5 * losses[0], losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    gen = subprocess.run([sys.executable, "-c", VLLM_GENERATE, str(out)], capture_output=True, text=True, timeout=600)
    assert gen.returncode == 0, gen.stderr[-4000:]
    [line] = [x for x in gen.stdout.splitlines() if x.startswith("RESULT ")]
    token_ids = json.loads(line.removeprefix("RESULT "))["token_ids"]
    assert len(token_ids) == 8
