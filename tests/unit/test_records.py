"""The record layer (openrlhf_psr/records.py): a JSON round trip per record type, one-line errors naming the field
of a malformed row, version 1 rows still read, and PSR and SRLM outputs both summarised and reported."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from openrlhf_psr.engines.base import Engine, Sample
from openrlhf_psr.errors import DataError, MissingField
from openrlhf_psr.io import ShardStore
from openrlhf_psr.judges.base import PairwiseJudge
from openrlhf_psr.records import (
    JudgedStepPair,
    Judgment,
    PairRecord,
    Problem,
    Step,
    Trajectory,
    Verdict,
    aggregate_pair,
)
from openrlhf_psr.testing import CharTokenizer

pytestmark = pytest.mark.unit


def _exact(answer, gold):  # a grader without the grading pool's processes
    return None if gold is None else answer == gold


def test_doctests():
    import doctest

    import openrlhf_psr.data.step_pairs as step_pairs
    import openrlhf_psr.records as records

    for module in (records, step_pairs):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# -- a round trip per record type --------------------------------------------------------------------------------
RECORDS = [
    Verdict("A", 0.75),
    Verdict(None),
    Judgment(Verdict("B", 0.1), raw="Assistant B is right. [[B]]"),
    PairRecord(
        "p1",
        2,
        1,
        [1, 2, 3],
        [4, 5],
        [6, 0],
        question="q",
        prefix_steps=["Step 1: a\n"],
        chosen="x",
        rejected="y",
        chosen_is_final=False,
        rejected_is_final=True,
        scores=[2.0, 0.5],
        margin=1.5,
        model_id="m",
    ),  # fmt: skip
    Trajectory(
        "p1",
        "q",
        "5",
        [1, 2],
        [Step([3, 10], "Step 1: a\n", "step", False), Step([4, 0], "b", "eos", True)],
        "5",
        True,
        "final",
        1,
        [{"action": "accept", "judge_calls": [], "n_abstentions": 0, "n_consistent": 0, "n_pairs_both_orders": 0}],
        "m",
        3,
        {"width": 2},
    ),  # fmt: skip
    Trajectory(
        "p2",
        "q",
        None,
        [1],
        method="srlm",
        final_answer=None,
        correct=None,
        finish="length",
        solutions=["a", "b"],
        scores=[4.0, None],
        solution_finish=["length", "stop"],
    ),  # fmt: skip
    JudgedStepPair("q", ("Step 1: a",), "Step 2: b", "Step 2: c", rationale="off by one", is_final=False, source="f"),
    JudgedStepPair("q", (), "Step 1: b", "Step 1: c"),
    Problem("arith-1", "2 + 2?", "4", ("Step 1: 2 + 2 = 4. \\boxed{4}",)),
    Problem("x", "?"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_type_survives_a_json_round_trip(record):
    row = json.loads(json.dumps(record.to_json()))  # through real JSON text
    assert row["version"] == type(record).VERSION
    assert type(record).from_json(row) == record


def test_version_1_rows_on_disk_still_read():
    # a PSR trajectory and an SRLM trajectory exactly as version 1 wrote them (SRLM without version or method)
    psr = {
        "version": 1,
        "problem_id": "p",
        "question": "q",
        "gold": "5",
        "prompt_ids": [1],
        "steps": [{"token_ids": [2, 0], "text": "Step 1: \\boxed{5}", "finish": "eos", "final": True}],
        "final_answer": "5",
        "correct": True,
        "finish": "final",
        "rollbacks": 0,
        "rounds": [],
        "model_id": "",
        "seed": 0,
        "config": {},
    }
    srlm = {"problem_id": "p", "question": "q", "gold": "7", "scores": [5.0, 1.0], "solutions": ["GOOD", "bad"],
            "finish": ["stop", "length"], "final_answer": "7"}  # fmt: skip
    t = Trajectory.from_json(psr)
    assert t.method == "psr" and t.steps[0].final and t.to_json()["version"] == 2
    s = Trajectory.from_json(srlm)
    assert s.method == "srlm" and s.solution_finish == ["stop", "length"] and s.finish is None and not s.steps
    pair = {"version": 1, "problem_id": "p", "step_index": 0, "prompt_ids": [1], "chosen_ids": [2], "rejected_ids": []}
    assert PairRecord.from_json(pair).round == 0  # hand-written shards hold only what the dataset needs


@pytest.mark.parametrize(
    ("cls", "row", "error", "message"),
    [
        (PairRecord, {"problem_id": "p", "step_index": 0, "prompt_ids": [1], "chosen_ids": [2]}, MissingField,
         r"shard-00000\.jsonl: record 3: missing field 'rejected_ids' \(a pair record"),
        (PairRecord, {"problem_id": "p", "step_index": 0, "prompt_ids": [1], "chosen_ids": "2", "rejected_ids": [3]},
         DataError, r"record 3: field 'chosen_ids': expected a list of token ids \(integers\), found a string '2'"),
        (PairRecord, {"version": 7, "problem_id": "p"}, DataError, r"field 'version': expected a pair record of "
         r"version 1\.\.1, found 7"),
        (Trajectory, {"problem_id": "p", "steps": [{"token_ids": [1], "text": "a", "final": True}]}, MissingField,
         r"record 3: steps\[0\]: missing field 'finish' \(a step"),
        (Trajectory, {"problem_id": "p", "method": "greedy"}, DataError, r"field 'method': expected 'psr' or 'srlm'"),
        (Trajectory, {"problem_id": "p", "rounds": [{"action": "accept"}]}, MissingField,
         r"rounds\[0\]: missing field 'judge_calls' \(a search round"),
        (Judgment, {"winner": "C", "raw": "?"}, DataError, r"field 'winner': expected 'A', 'B' or null, found a str"),
        (Verdict, {"winner": "A", "p_a": 1.5}, DataError, r"field 'p_a': expected a probability, found 1\.5"),
        (JudgedStepPair, {"prompt": "q", "chosen": "a"}, MissingField, r"missing field 'rejected' \(a judged step"),
        (JudgedStepPair, {"prompt": "q", "chosen": "a", "rejected": None}, DataError,
         r"field 'rejected': expected a string, found null"),
        (Problem, ["q"], DataError, r"record 3: expected a problem \(a JSON object\), found a list"),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else None,
)  # fmt: skip
def test_a_malformed_row_is_a_one_line_error_naming_the_field(cls, row, error, message):
    with pytest.raises(error, match=message) as caught:
        cls.from_json(row, "run/pairs/shard-00000.jsonl: record 3")
    assert len(str(caught.value).splitlines()) == 1


def test_a_malformed_pair_shard_fails_the_step_pair_dataset_naming_file_record_and_field(tmp_path):
    from openrlhf_psr.data.step_pairs import load_step_pairs

    good = PairRecord("p", 0, 0, [1], [2], [3]).to_json()
    ShardStore(tmp_path).commit({"pairs": [good, {**good, "prompt_ids": [1, None]}], "trajectories": []})
    with pytest.raises(
        DataError,
        match=r"shard-00000\.jsonl: record 2: field 'prompt_ids': expected a list of token.*holding null at index 1",
    ):
        list(load_step_pairs(tmp_path))


# -- one both-order aggregation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second", "reward", "votes"),
    [
        (Verdict("A"), Verdict("B"), 1.0, (2, 0)),  # both orders prefer the first candidate
        (Verdict("A"), Verdict("A"), 0.5, (1, 1)),  # pure position bias cancels
        (Verdict(None), Verdict("B"), 1.0, (1, 0)),  # one abstention: the other order decides alone
        (Verdict(None), Verdict(None), 0.5, (0, 0)),
        (Verdict("A", 0.8), Verdict("A", 0.6), 0.6, (1, 1)),  # probabilities: mean P(first better)
        (Verdict("A", math.nan), Verdict("B", 0.1), 1.0, (2, 0)),  # a NaN probability falls back to verdicts
    ],
)
def test_the_one_aggregation_serves_tournament_judge_accuracy_and_reward(first, second, reward, votes):
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy
    from openrlhf_psr.rewards.pairwise_reward import pairwise_rewards
    from openrlhf_psr.tournament import aggregate_pair as tournament_aggregate

    assert tournament_aggregate is aggregate_pair
    outcome = aggregate_pair(0, 1, first, second, aggregate="prob")
    assert (outcome.votes_i, outcome.votes_j) == votes

    class Scripted(PairwiseJudge):
        def judge(self, comparisons):
            return [Judgment(first), Judgment(second)]

    assert pairwise_rewards(Scripted(), ["q"], ["r"], ["ref"]) == [pytest.approx(reward)]
    metrics = judge_accuracy(Scripted(), [JudgedStepPair("q", (), "better", "worse")])
    assert metrics["accuracy"] == votes[0] / 2 and metrics["pair_accuracy"] == (votes[0] == 2)
    assert metrics["abstention_rate"] == (2 - sum(votes)) / 2


# -- PSR and SRLM outputs both summarise and report ----------------------------------------------------------------
def _sample(text, finish="step"):
    ids = [ord(c) for c in text]
    if finish == "step":
        return Sample(text, tuple(ids + [ord(c) for c in "\nStep "]), "stop", "\nStep ")
    return Sample(text, tuple(ids + [0]), "stop", None)


class StepEngine(Engine):
    """Two candidate steps per round, 'good' and 'bad'; the second step is final."""

    def __init__(self):
        self.tokenizer = CharTokenizer()

    def generate(self, requests):
        out = []
        for r in requests:
            n = self.tokenizer.decode(r.prompt_token_ids).count("Step ") - 1
            if n == 0:
                out.append([_sample("Step 1: good"), _sample("Step 1: bad")][: r.n])
            else:
                out.append([_sample("Step 2: good \\boxed{5}.", "eos"), _sample("Step 2: bad \\boxed{4}.", "eos")])
        return out


class GoodJudge(PairwiseJudge):
    def judge(self, comparisons):
        return [Judgment(Verdict("A" if "good" in c.step_a else "B")) for c in comparisons]


class SolutionEngine(Engine):
    """Whole solutions 'GOOD'/'bad'; as its own scorer it gives GOOD 5 and bad 1."""

    def __init__(self):
        self.tokenizer = CharTokenizer()

    def generate(self, requests):
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_token_ids)
            if "Score: <points>" in prompt:
                out.append([Sample(f"Score: {5 if 'GOOD' in prompt else 1}", (1,), "stop")] * r.n)
            else:
                texts = ["GOOD \\boxed{5}", "bad \\boxed{4}", "bad", "GOOD \\boxed{5}"]
                out.append([Sample(t, tuple(map(ord, t)), "stop") for t in texts[: r.n]])
        return out


def test_psr_and_srlm_search_outputs_both_summarise_and_report(tmp_path):
    from openrlhf_psr.cli.report import build_report
    from openrlhf_psr.data.problems import Problem as LoadedProblem
    from openrlhf_psr.layout import RunLayout
    from openrlhf_psr.search import SearchConfig, StepSearch, summarize
    from openrlhf_psr.srlm import SRLMConfig, srlm_pairs

    problems = [LoadedProblem(f"p{i}", f"q{i}", "5") for i in range(2)]
    run = RunLayout(tmp_path / "run")
    psr_dir, srlm_dir = run.search(1), run.search(2)
    StepSearch(StepEngine(), GoodJudge(), SearchConfig(width=2, max_rounds=4), grader=_exact).run(
        problems, psr_dir, progress=False
    )
    assert srlm_pairs(SolutionEngine(), problems, srlm_dir, SRLMConfig(n=4, score_samples=1), grader=_exact) == (2, 2)

    psr, srlm = summarize(ShardStore(psr_dir)), summarize(ShardStore(srlm_dir))
    assert psr["methods"] == {"psr": 2} and srlm["methods"] == {"srlm": 2}
    assert psr["problems"] == srlm["problems"] == 2 and psr["pairs"] == 4 and srlm["pairs"] == 2
    assert psr["mean_steps"] == 2.0 and psr["accuracy"] == 1.0 and psr["position_consistency"] == 1.0
    # SRLM has no steps or pairwise judge calls: those statistics are absent, not zero; its answers are graded
    assert srlm["mean_steps"] is None and srlm["judge_calls_per_accepted_step"] is None
    assert srlm["accuracy"] == 1.0 and srlm["boxed_rate"] == 1.0 and srlm["finish"] == {"final": 2}
    for t in ShardStore(srlm_dir).read("trajectories"):
        assert t["method"] == "srlm" and t["version"] == 2 and t["scores"] == [5.0, 1.0, 1.0, 5.0]

    for folder, summary in ((psr_dir, psr), (srlm_dir, srlm)):  # as the search command writes them
        (folder / "summary.json").write_text(json.dumps(summary))
    report = build_report(run.root)
    assert set(report["search"]) == {"iter_1", "iter_2"}
    table = run.report_markdown().read_text().split("## Self-judged search per iteration")[1]
    rows = [line for line in table.splitlines() if line.startswith("| iter_")]
    assert rows[0].startswith("| iter_1 | 2 | 4 | 2.00 | 0 |") and rows[1].startswith("| iter_2 | 2 | 2 | 1.00 | 0 |")


def test_the_record_module_imports_without_heavy_packages():
    code = (
        "import sys\n"
        "for name in ('torch', 'vllm', 'ray', 'deepspeed', 'transformers'):\n"
        "    sys.modules[name] = None  # importing it raises ImportError\n"
        "import openrlhf_psr.records, openrlhf_psr.tournament, openrlhf_psr.judges.base\n"
        "import openrlhf_psr.data.step_pairs, openrlhf_psr.judges.verdict\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_prm800k_positions_become_judged_step_pairs_for_eft_and_judge_accuracy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from openrlhf_psr.data.prm800k import human_step_pairs
    from openrlhf_psr.data.sft import prm800k_eft
    from openrlhf_psr.eval.builtin_judge import prm800k_judge_pairs

    rows = [  # one position (problem + previous steps) with a +1 and a -1 rated next step; one with only +1
        {"instruction": "2+3*4?", "responses": ["3*4 = 12."], "next_response": "2 + 12 = 14.", "rating": 1,
         "error_reason": None},
        {"instruction": "2+3*4?", "responses": ["3*4 = 12."], "next_response": "2 + 12 = 15.", "rating": -1,
         "error_reason": "wrong sum"},
        {"instruction": "1+1?", "responses": [], "next_response": "2", "rating": 1, "error_reason": None},
    ]  # fmt: skip
    path = tmp_path / "prm.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    [pair] = human_step_pairs(path)
    assert pair == JudgedStepPair("2+3*4?", ("Step 1: 3*4 = 12.",), "Step 2: 2 + 12 = 14.", "Step 2: 2 + 12 = 15.",
                                  rationale="wrong sum", source="prm.parquet#0")  # fmt: skip
    assert JudgedStepPair.from_json(json.loads(json.dumps(pair.to_json()))) == pair
    assert prm800k_judge_pairs(str(path)) == [pair]
    first, second = prm800k_eft(path)
    assert first["output"].startswith("Assistant B's step is wrong: wrong sum") and first["output"].endswith("[[A]]")
    assert "Step 2: 2 + 12 = 15." in first["input"] and second["output"].endswith("[[B]]")
    assert "wrong sum" not in prm800k_eft(path, rationale=False)[0]["output"]
