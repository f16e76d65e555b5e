"""A miniature of the evidence harness (issue 13): the real driver, the real launcher, three arms from one M1.

The evidence recipe shrunk by ``--set`` (a few problems, one iteration, tiny evaluations) and run by
``python -m openrlhf_psr.cli.evidence`` with the oracle, random and self arms. It checks the plumbing (every run,
the comparison's JSON/markdown/plot), that every pair the oracle arm trained on has the arithmetically correct step
as chosen, and that step DPO on those oracle pairs raises the chosen-minus-rejected log-probability margin of the
pairs it trained on (the check that no chosen/rejected swap hides between search and DPO). Its M1 also serves
the majority filter's real-engine test: unlike the untrained default model, it boxes its answers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TASK = "ops=2-3&max_value=50"
MINI = [
    "name=evidence_mini",
    f'data.ift=["builtin:arith?n=40&{TASK}"]',  # the step format only: the self arm's logit judge needs no EFT
    "data.eft=[]",
    f'data.eval.benchmarks=["arith?n=4&seed=7&{TASK}"]',
    f'data.eval.judge_sets=["builtin:arith?n=4&seed=1000&{TASK}"]',
    "data.eval.judges=[logit]",
    "data.eval.max_tokens=128",
    # packed 2 rows at a time, as the recipe trains (openrlhf.sft: ds.packing_samples)
    "stages.sft={enabled: true, epochs: 2, lr: 1.0e-4, batch_size: 8, micro_batch_size: 2, max_len: 512}",
    "stages.iterations=1",
    "stages.prompts_per_iteration=[8]",
    "psr.search.width=3",
    "psr.search.max_rounds=4",
    "psr.search.max_tokens_per_step=40",
    "dpo={epochs: 2, lr: 5.0e-5, batch_size: 2, micro_batch_size: 2, beta: 0.1, reference: previous, max_len: 768}",
]


@pytest.fixture(scope="module")
def evidence(tmp_path_factory, default_model):
    from openrlhf_psr.cli import evidence

    runs = tmp_path_factory.mktemp("evidence")
    argv = [str(ROOT / "recipes" / "evidence_cpu.yaml"), "--arms", "oracle,random,self", "--runs-dir", str(runs),
            "--out", str(runs / "out")]  # fmt: skip
    for override in MINI:
        argv += ["--set", override]
    assert evidence.main(argv) == 0
    return runs


def test_every_arm_runs_from_the_same_m1_and_the_comparison_is_written(evidence):
    result = json.loads((evidence / "out" / "evidence.json").read_text())
    assert list(result["arms"]) == ["oracle", "random", "self"]
    m1 = str(evidence / "evidence_mini" / "sft" / "model")
    for arm, a in result["arms"].items():
        manifest = json.loads((evidence / f"evidence_mini-{arm}" / "manifest.json").read_text())
        assert manifest["recipe"]["model"] == m1  # every arm starts from the one M1
        assert "sft" not in manifest["stages"]
        assert list(a["models"]) == ["M1", "M2"]
        cell = a["models"]["M2"]["accuracy_ci95"]["arith"]
        assert cell["n"] == 4 and cell["ci95"] is not None
        assert a["search"]["iter_1"]["problems"] == 8
    # same prompts for every arm: the same problem ids were searched
    ids = {arm: sorted(json.loads(line)["problem_id"] for shard in
                       (evidence / f"evidence_mini-{arm}" / "iter_1" / "search" / "trajectories").glob("*.jsonl")
                       for line in shard.read_text().splitlines()) for arm in result["arms"]}  # fmt: skip
    assert ids["oracle"] == ids["random"] == ids["self"] and len(ids["oracle"]) == 8
    assert "logit/builtin" in result["arms"]["self"]["models"]["M2"]["judge_accuracy_ci95"]
    # the slips table reads the real evaluation records: M1 (trained on the task's steps) writes checkable claims
    assert sum(c["claims"] for c in (result["slips"]["M1"]["arith"] or {}).values()) >= 4
    assert all(list(a["slips"]) == ["M2"] for a in result["arms"].values())
    text = (evidence / "out" / "evidence.md").read_text()
    assert "| oracle |" in text and "| random |" in text and "| self |" in text
    assert (evidence / "out" / "evidence.png").stat().st_size > 0


def _pairs(run: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted((run / "iter_1" / "search" / "pairs").glob("shard-*.jsonl"))
            for line in shard.read_text().splitlines()]  # fmt: skip


def test_every_oracle_pair_has_the_arithmetically_correct_step_as_chosen(evidence):
    from openrlhf_psr.judges.oracle import check_step

    pairs = _pairs(evidence / "evidence_mini-oracle")
    assert pairs, "the oracle arm wrote no pairs: nothing to check"
    for pair in pairs:
        chosen = check_step(pair["question"], pair["prefix_steps"], pair["chosen"])
        rejected = check_step(pair["question"], pair["prefix_steps"], pair["rejected"])
        assert chosen.label != "wrong", (pair["chosen"], chosen.reason)
        assert (chosen.label, rejected.label) in {("right", "unknown"), ("right", "wrong"), ("unknown", "wrong")}
    summary = json.loads((evidence / "out" / "evidence.json").read_text())
    agreement = summary["arms"]["oracle"]["oracle_agreement"]["iter_1"]
    assert agreement["agree"] == agreement["pairs"] == len(pairs)


def test_the_oracle_search_folder_is_an_on_policy_eft_source(evidence):
    """``search:DIR`` on what the real search wrote: every oracle pair whose prefix and steps check right/wrong
    gives at least its round's rows; each row's verdict names the step the checker finds right (read back from the
    row's judge prompt), the other step checks wrong."""
    from openrlhf_psr.cli.sft_data import build
    from openrlhf_psr.data.own_steps import read_trajectories
    from openrlhf_psr.judges.oracle import check_step

    pairs = _pairs(evidence / "evidence_mini-oracle")
    labelled = 0
    for pair in pairs:
        q, previous = pair["question"], pair["prefix_steps"]
        prefix_right = all(check_step(q, previous[:i], s).label == "right" for i, s in enumerate(previous))
        labels = (check_step(q, previous, pair["chosen"]).label, check_step(q, previous, pair["rejected"]).label)
        labelled += prefix_right and labels == ("right", "wrong")
    if not labelled:
        pytest.skip("this miniature's oracle search made no right-vs-wrong pair after a right prefix")
    search = evidence / "evidence_mini-oracle" / "iter_1" / "search"
    rows = build([], [f"search:{search}"])
    assert len(rows) >= 2 * labelled
    questions = {t.question for t in read_trajectories(search)}  # a rolled-back step's pair is not in pairs/
    for row in rows:
        [q] = [q for q in questions if q in row["input"]]
        context = row["input"].split("[The Start of Assistant A's Next Reasoning Step]")[0]
        previous = re.findall(r"^Step \d+: .*$", context.split(q, 1)[1], re.M)
        steps = dict(re.findall(r"\[The Start of Assistant ([AB])'s Next Reasoning Step\]\n(.*?)\n\[The End",
                                row["input"], re.S))  # fmt: skip
        verdict = row["output"][-3]
        assert check_step(q, previous, steps[verdict]).label == "right", row["output"]
        assert check_step(q, previous, steps["B" if verdict == "A" else "A"]).label == "wrong", row["output"]


def _margin(model: str, pairs: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) given the rendered prompt and the previous steps, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt

    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def logp(context: list[int], step: str) -> float:
        ids = tokenizer.encode(step, add_special_tokens=False)
        tokens = torch.tensor([context + ids])
        with torch.no_grad():
            logits = net(tokens).logits[0, len(context) - 1 : -1].log_softmax(-1)
        return logits.gather(1, torch.tensor(ids).unsqueeze(1)).sum().item()

    margins = []
    for pair in pairs:
        question = pair["question"] if "question" in pair else pair["prompt"]  # search pair / builtin pair
        context = prompt_token_ids(tokenizer, render_step_prompt(question))
        context += tokenizer.encode("".join(s + "\n" for s in pair["prefix_steps"]), add_special_tokens=False)
        margins.append(logp(context, pair["chosen"]) - logp(context, pair["rejected"]))
    return sum(margins) / len(margins)


def test_dpo_on_oracle_pairs_raises_their_margin(evidence):
    """A chosen/rejected swap anywhere between search and DPO would lower it. (Held-out oracle-labelled pairs were
    checked here before: after DPO on this miniature's handful of pairs the held-out margin moves by a few
    hundredths of a nat either way: 9.097 -> 9.070 in one CI run; the at-scale runs in docs/evidence.md measure
    the held-out effect on 1,000 problems.)"""
    trained = _pairs(evidence / "evidence_mini-oracle")
    assert trained, "the oracle arm wrote no pairs: nothing to check"
    m1 = evidence / "evidence_mini" / "sft" / "model"
    m2 = evidence / "evidence_mini-oracle" / "iter_1" / "model"
    before, after = _margin(str(m1), trained), _margin(str(m2), trained)
    assert after > before, (before, after)


def _unfiltered_pair_count(trajectory) -> int:
    """How many pairs a trajectory writes without an outcome filter, from its round log replayed as the search held
    its prefix (``own_steps.replay``): a final step has a pair when the last round that accepted it was a judged
    ``accept`` (a unanimous one has none; a rolled-back step's pair went with it)."""
    from openrlhf_psr.data.own_steps import replay

    judged_at: dict[int, bool] = {}
    for prefix, r in replay(trajectory):
        if r["action"] in ("accept", "accept_unanimous"):
            judged_at[len(prefix)] = r["action"] == "accept"
    return sum(judged_at[i] for i in range(len(trajectory.steps)))


def test_the_majority_filter_on_vllm_cpu_keeps_exactly_the_pairs_of_trajectories_that_agree_with_the_votes(
    evidence, tmp_path
):
    """``psr.search.majority_filter`` on the real engine with a model that boxes its answers (this miniature's M1;
    the untrained default model boxes none, so its votes would all be empty): k whole solutions per problem vote,
    the recorded majority is what their answers give, and a trajectory writes all of its pairs when its final answer
    is that majority and none otherwise. Both sides must occur, or the check would be empty: the problems are
    one-operation ones, which this weak M1 answers consistently enough to agree with its votes on about 5 of 12
    (probed on two tasks and two judges), and the seeded random judge makes a pair in every round with two distinct
    candidates, so agreeing trajectories have pairs to keep."""
    from openrlhf_psr.data.own_steps import read_trajectories
    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.grading import is_correct
    from openrlhf_psr.io import ShardStore
    from openrlhf_psr.judges.random_judge import RandomJudge
    from openrlhf_psr.search import SearchConfig, StepSearch, majority_answer

    problems = load_problems("builtin:arith?seed=11&ops=1&max_value=10", limit=16)
    config = SearchConfig(width=3, max_rounds=6, max_tokens_per_step=40, seed=1, majority_filter=5,
                          majority_max_tokens=160)  # fmt: skip
    engine = VLLMLocalEngine.from_config(str(evidence / "evidence_mini" / "sft" / "model"), max_model_len=2048)
    try:
        summary = StepSearch(engine, RandomJudge(seed=1), config).run(problems, tmp_path, progress=False)
    finally:
        engine.close()
    trajectories = {t.problem_id: t for t in read_trajectories(tmp_path)}
    written = Counter(pair["problem_id"] for pair in ShardStore(tmp_path).read("pairs"))
    assert set(trajectories) == {p.id for p in problems}
    same = lambda a, b: is_correct(a, b) is True  # noqa: E731 - the search's own equivalence
    kept = dropped = 0
    for pid, t in trajectories.items():
        m = t.majority
        assert len(m["votes"]) == 5
        assert m["answer"] == majority_answer(m["votes"], same)
        assert m["agrees"] == (m["answer"] is not None and t.final_answer is not None
                               and same(t.final_answer, m["answer"]))  # fmt: skip
        would_write = _unfiltered_pair_count(t)
        assert written[pid] == (would_write if m["agrees"] else 0), (pid, m, would_write)
        kept += would_write if m["agrees"] else 0
        dropped += 0 if m["agrees"] else would_write
    votes = [v for t in trajectories.values() for v in t.majority["votes"]]
    assert sum(v is not None for v in votes) > len(votes) // 2, votes  # the M1 boxes its answers: the votes count
    assert kept and dropped, (kept, dropped)
    assert summary["run_majority_samples"] == 5 * len(problems) and 0 < summary["majority_agrees"] < 1
