"""``python -m openrlhf_psr.cli.prepare``: warm everything a first run would otherwise pay for, once.

Called by ``scripts/setup.sh``; safe to run again (each step is idempotent):
1. install the CPU-compatibility ``.pth`` (see :mod:`openrlhf_psr.compat`);
2. convert the embedded default model into its cached safetensors folder;
3. compile DeepSpeed's CPU ops (fused Adam, CPU Adam, shared-memory comm) into the torch extensions cache, which
   otherwise costs 30-100 s inside the first training run.
"""

from __future__ import annotations

import argparse
import time


def _step(label: str):
    print(f"[prepare] {label} ...", flush=True)
    return time.perf_counter()


def build_deepspeed_cpu_ops() -> list[str]:
    """Load (compiling on first use) the DeepSpeed ops a CPU training run needs; returns the ones loaded."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        return []  # GPU machines build their ops at install time (DS_BUILD_OPS) or JIT with nvcc
    loaded = []
    for name in ("FusedAdamBuilder", "CPUAdamBuilder", "ShareMemCommBuilder"):
        builder = accelerator.create_op_builder(name)
        if builder is not None and builder.is_compatible(verbose=False):
            builder.load(verbose=False)
            loaded.append(name)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_psr.cli.prepare", description=__doc__)
    parser.add_argument("--skip-model", action="store_true", help="do not convert the default model")
    parser.add_argument("--skip-ops", action="store_true", help="do not compile DeepSpeed CPU ops")
    args = parser.parse_args(argv)

    from openrlhf_psr.compat.__main__ import main as compat_main

    compat_main(["install-pth"])
    if not args.skip_model:
        from openrlhf_psr.model_cache import DEFAULT_MODEL, resolve_model

        start = _step("default model")
        path = resolve_model(DEFAULT_MODEL)
        print(f"[prepare] default model at {path} ({time.perf_counter() - start:.1f}s)", flush=True)
    if not args.skip_ops:
        start = _step("DeepSpeed CPU ops")
        ops = build_deepspeed_cpu_ops()
        print(f"[prepare] DeepSpeed ops ready: {', '.join(ops) or 'none needed'} ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
