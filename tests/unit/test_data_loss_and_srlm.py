"""No silent data loss (issue 10, point 8) and the SRLM baseline's own judging task (point 7): pure logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrlhf_psr.data.problems import load_problems
from openrlhf_psr.testing import CharTokenizer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- point 8: data -------------------------------------------------------------------------------------------------
def test_builtin_task_subset_has_any_size_and_iterations_do_not_overlap():
    first = load_problems("builtin:arith", subset=(0, 400), subset_seed=42)
    second = load_problems("builtin:arith", subset=(400, 1200), subset_seed=42)
    assert len(first) == 400 and len(second) == 800
    assert not {p.id for p in first} & {p.id for p in second}
    assert len({p.question for p in first + second}) > 1100  # real problems, not repeats
    assert load_problems("builtin:arith", limit=100)[:5] == first[:5]  # same problems as without a subset


def test_file_subset_is_a_seeded_shuffle_and_disjoint(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(30)])
    a = load_problems(f"jsonl:{path}", subset=(0, 10), subset_seed=1)
    b = load_problems(f"jsonl:{path}", subset=(10, 30), subset_seed=1)
    assert len(a) == 10 and len(b) == 20 and {p.id for p in a}.isdisjoint({p.id for p in b})
    assert [p.id for p in a] != [f"p-{i}" for i in range(10)]  # shuffled


def test_search_cli_subset_reaches_every_requested_builtin_problem():
    from openrlhf_psr.cli.search import _parse_subset

    start, end = _parse_subset("400:1200")
    assert len(load_problems("builtin:arith", subset=(start, end))) == 800


def test_arith_eval_file_is_kept_whole_unless_a_limit_is_given(tmp_path):
    from openrlhf_psr.cli.evaluate import load_eval_problems

    path = _jsonl(tmp_path / "arith.jsonl", [{"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(40)])
    assert len(load_eval_problems(f"arith=jsonl:{path}", None, 0)[1]) == 40
    assert len(load_eval_problems(f"arith=jsonl:{path}?limit=10", None, 0)[1]) == 10
    assert len(load_eval_problems("arith?n=30", None, 0)[1]) == 30  # the built-in task: any size


def test_benchmark_file_is_kept_whole(tmp_path):
    from openrlhf_psr.eval.benchmarks import load_benchmark

    path = _jsonl(tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": f"{i}.0"} for i in range(50)])
    assert len(load_benchmark("amc23", source=f"jsonl:{path}")) == 50


def test_benchmark_without_any_gold_answer_is_an_error_naming_file_and_field(tmp_path):
    from openrlhf_psr.eval.benchmarks import load_benchmark

    # a GSM8K file whose answers are plain numbers: the gsm8k rule ("#### n") finds none
    path = _jsonl(tmp_path / "gsm.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(5)])
    with pytest.raises(ValueError, match=r"gsm\.jsonl: no row has a gold answer in field 'answer' under rule 'gsm8k'"):
        load_benchmark("gsm8k", source=f"jsonl:{path}")


def test_some_missing_gold_answers_are_counted_and_reported(tmp_path, capsys):
    rows = [{"question": "q0", "answer": "a\n#### 3"}, {"question": "q1", "answer": None}]
    problems = load_problems(f"jsonl:{_jsonl(tmp_path / 'g.jsonl', rows)}", answer_rule="gsm8k")
    assert [p.answer for p in problems] == ["3", None]
    assert "1 of 2 rows have no gold answer in field 'answer'" in capsys.readouterr().err


def test_null_question_is_an_error_naming_file_and_row(tmp_path):
    path = _jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "1"}, {"question": None, "answer": "2"}])
    with pytest.raises(ValueError, match=r"n\.jsonl: row 2: field 'question' is null"):
        load_problems(f"jsonl:{path}")


def test_null_step_pair_field_is_an_error_naming_file_and_line(tmp_path):
    from openrlhf_psr.data.step_pairs import pairs_from_jsonl

    row = {"prompt": "1 + 1?", "prefix_steps": [], "chosen": "Step 1: 2", "rejected": None}
    path = _jsonl(tmp_path / "pairs.jsonl", [{**row, "rejected": "Step 1: 3"}, row])
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: field 'rejected' is null"):
        list(pairs_from_jsonl(path, CharTokenizer(), chat_template=False))
    path = _jsonl(tmp_path / "prefix.jsonl", [{**row, "rejected": "Step 1: 3", "prefix_steps": [None]}])
    with pytest.raises(ValueError, match=r"prefix\.jsonl:1: field 'prefix_steps' holds a null step"):
        list(pairs_from_jsonl(path, CharTokenizer(), chat_template=False))


def test_over_long_search_pair_keeps_the_question_and_the_latest_steps(tmp_path):
    from openrlhf_psr.data.step_pairs import StepPairDataset, load_step_pairs
    from openrlhf_psr.io import ShardStore

    question = [1, 2, 3]
    pair = {"problem_id": "p", "step_index": 2, "prompt_ids": question + [10, 11, 12, 13], "prefix_steps": ["a", "b"],
            "chosen_ids": [8, 9], "rejected_ids": [7]}  # fmt: skip
    ShardStore(tmp_path).commit({"pairs": [pair], "trajectories": [{"problem_id": "p", "prompt_ids": question}]})
    dataset = StepPairDataset(load_step_pairs(tmp_path), max_len=8, pad_token_id=0)
    ids, segments, _ = dataset.items[0]
    assert ids == [1, 2, 3, 12, 13, 8, 9, 7] and segments == [1, 1, 1, 1, 1, 2, 2, 3]
    assert dataset.stats.truncated_prefix == 1 and dataset.stats.truncated_tokens == 2
    # the question and both steps alone do not fit: dropped and counted, never cut into the question
    dataset = StepPairDataset(load_step_pairs(tmp_path), max_len=5, pad_token_id=0)
    assert len(dataset) == 0 and dataset.stats.dropped_too_long == 1


def test_over_long_plain_pair_keeps_the_rendered_question(tmp_path):
    from openrlhf_psr.data.step_pairs import StepPairDataset, pairs_from_jsonl
    from openrlhf_psr.prompts import render_step_prompt

    row = {"prompt": "What is 2 + 2?", "prefix_steps": ["Step 1: " + "x" * 200], "chosen": "Step 2: 4",
           "rejected": "Step 2: 5"}  # fmt: skip
    pairs = list(pairs_from_jsonl(_jsonl(tmp_path / "p.jsonl", [row]), CharTokenizer(), chat_template=False))
    question = render_step_prompt(row["prompt"])
    dataset = StepPairDataset(pairs, max_len=len(question) + 40, pad_token_id=0)
    ids, segments, _ = dataset.items[0]
    prefix = "".join(chr(i) for i, s in zip(ids, segments, strict=True) if s == 1)
    assert prefix.startswith(question) and prefix.endswith("x" * 10 + "\n")
    assert dataset.stats.truncated_prefix == 1


# -- point 7: SRLM -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["Score: 10", "Score: 3.5", "Score: -1", "Score: 6", "Score: 5/10", "Score: 4 no, Score: 12"]
)
def test_srlm_score_parser_is_strict(text):
    from openrlhf_psr.srlm import parse_score

    assert parse_score(text) is None


@pytest.mark.parametrize(("text", "score"), [("Score: 0", 0.0), ("Score: **4**", 4.0), ("x\nScore: 3/5.", 3.0),
                                             ("Score: 1 then\nScore: 5", 5.0)])  # fmt: skip
def test_srlm_score_parser_reads_the_last_integer_score(text, score):
    from openrlhf_psr.srlm import parse_score

    assert parse_score(text) == score


def test_srlm_scoring_eft_source_trains_the_baselines_own_task():
    from openrlhf_psr.cli.sft_data import build
    from openrlhf_psr.prompts import SRLM_SCORE_PROMPT
    from openrlhf_psr.srlm import parse_score

    records = build([], ["srlm-builtin:arith?n=8"], seed=3)
    head = SRLM_SCORE_PROMPT.split("{question}")[0]
    assert len(records) == 48 and all(r["input"].startswith(head) and r["kind"] == "eft" for r in records)
    grades = [parse_score(r["output"]) for r in records]
    assert sorted(grades) == sorted([float(g) for g in range(6)] * 8)  # every grade, exactly balanced
    # the grade matches what the solution is: the correct reference earns 5, another problem's solution 0
    by_grade = {g: [r for r, x in zip(records, grades, strict=True) if x == g] for g in (0.0, 5.0)}
    assert all("boxed" in r["input"] for r in by_grade[5.0])


def test_srlm_scoring_eft_from_gsm8k(tmp_path):
    from openrlhf_psr.cli.sft_data import build

    rows = [{"question": f"Tom has {i} cats and buys 2 more, then doubles them. How many?",
             "answer": f"He has {i}+2=<<{i}+2={i + 2}>>{i + 2} cats.\nThen 2*{i + 2}={2 * i + 4}.\n#### {2 * i + 4}"}
            for i in range(5)]  # fmt: skip
    records = build([], [f"srlm-gsm8k:{_jsonl(tmp_path / 'g.jsonl', rows)}?limit=3"], seed=0)
    assert len(records) == 18 and sum(r["output"].endswith("Score: 5") for r in records) == 3
    with pytest.raises(ValueError, match="unknown source kind 'srlm-nope'"):
        build([], ["srlm-nope:3"], seed=0)


def test_srlm_recipe_trains_on_scoring_eft(recipe_data):
    from openrlhf_psr.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "srlm_baseline_7b.yaml", recipe_data)
    assert recipe.psr.method == "srlm"
    assert recipe.data.eft and all(spec.startswith("srlm-") for spec in recipe.data.eft)


def test_gsm8k_ift_rejects_a_null_question_and_counts_rows_it_cannot_segment(capsys):
    from openrlhf_psr.data.sft import gsm8k_ift
    from openrlhf_psr.errors import DataError

    good = {"question": "Ava has 2 pens and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
    with pytest.raises(DataError, match=r"train\.jsonl: row 2: expected a non-empty 'question'.*None"):
        gsm8k_ift([good, {"question": None, "answer": "#### 1"}], source="train.jsonl")
    records = gsm8k_ift([good, {"question": "Q?", "answer": "no final answer"}], source="train.jsonl")
    assert len(records) == 1 and "None" not in records[0]["input"]
    assert "skipped 1 of 2 rows" in capsys.readouterr().err
