"""The evidence comparison (issue 13) from finished runs: gains over the shared M1 with their intervals, the self
judge's accuracy per iteration, and how the oracle sees each arm's training pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrlhf_psr.cli import evidence
from openrlhf_psr.data.arith import make_problem
from openrlhf_psr.errors import UserError

pytestmark = pytest.mark.unit


def _eval(correct: int, n: int, judge: float | None = None) -> dict:
    metrics = {"accuracy": correct / n, "boxed_rate": 1.0, "step_marker_rate": 1.0, "mean_steps": 3.0,
               "mean_step_tokens": 20.0, "n": n}  # fmt: skip
    judges = {}
    if judge is not None:
        judges["logit/builtin"] = {"pairs": 200, "accuracy": judge, "consistency": 0.9, "abstention_rate": 0.0,
                                   "prob_accuracy": judge, "always_a_rate": 0.5}  # fmt: skip
    records = [{"correct": k < correct} for k in range(n)]
    return {"benchmarks": {"arith": {"metrics": metrics, "records": records}}, "judges": judges}


def _write(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))


def _search(run: Path, t: int, pairs: list[dict]) -> None:
    search = run / f"iter_{t}" / "search"
    (search / "pairs").mkdir(parents=True)
    (search / "pairs" / "shard-00000.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (search / "summary.json").write_text(json.dumps({"problems": 300, "pairs": len(pairs), "accuracy": 0.3}))


def _pair(chosen_right: bool) -> dict:
    p = make_problem(0, 0)
    wrong = p.steps[1].replace(p.steps[1].rstrip(".").split()[-1], "999")
    right = p.steps[1]
    return {"question": p.question, "prefix_steps": [p.steps[0]], "chosen": right if chosen_right else wrong,
            "rejected": wrong if chosen_right else right}  # fmt: skip


def _runs(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    base = tmp_path / "ev"
    _write(base / "sft" / "eval", _eval(60, 300, judge=0.6))
    arms = {}
    for arm, final, agree in (("oracle", 120, 1.0), ("random", 63, 0.5), ("self", 80, 0.75)):
        run = arms[arm] = tmp_path / f"ev-{arm}"
        _write(run / "iter_1" / "eval", _eval((60 + final) // 2, 300, judge=0.7 if arm == "self" else None))
        _write(run / "iter_2" / "eval", _eval(final, 300, judge=0.8 if arm == "self" else None))
        for t in (1, 2):
            _search(run, t, [_pair(True)] * int(4 * agree) + [_pair(False)] * (4 - int(4 * agree)))
    return base, arms


def test_gains_over_the_shared_m1_with_disjoint_intervals(tmp_path):
    base, arms = _runs(tmp_path)
    result = evidence.compare(base, arms, {"ev": 10.0})
    oracle, random_arm = result["arms"]["oracle"], result["arms"]["random"]
    assert list(oracle["models"]) == ["M1", "M2", "M3"] and oracle["final"] == "M3"
    assert oracle["gain"]["arith"]["points"] == pytest.approx(20.0)  # 40% - 20%
    assert oracle["gain"]["arith"]["intervals_disjoint"] is True
    assert random_arm["gain"]["arith"]["points"] == pytest.approx(1.0)
    assert random_arm["gain"]["arith"]["intervals_disjoint"] is False
    assert oracle["oracle_agreement"]["iter_1"] == {"pairs": 4, "agree": 4, "disagree": 0, "undecided": 0,
                                                    "agreement": 1.0}  # fmt: skip
    assert random_arm["oracle_agreement"]["iter_2"]["disagree"] == 2
    out = evidence.write(result, tmp_path / "out")
    text = out.read_text()
    row = ("| oracle | 20.0 [15.9, 24.9] (300) | 30.0 [25.1, 35.4] (300) | 40.0 [34.6, 45.6] (300) | +20.0 | yes "
           "| 60 / 0 (of 300) | 1.7e-18 |")  # fmt: skip
    assert row in text
    assert "| random | 20.0 [15.9, 24.9] (300) |" in text and "| +1.0 | no | 3 / 0 (of 300) | 0.25 |" in text
    assert "self gain / oracle gain = 0.33" in text
    assert "| self | M3 | logit/builtin | 80.0" in text  # the self judge per iteration
    assert "| self | M1 | logit/builtin | 60.0" in text  # ... from M1 on
    assert (tmp_path / "out" / "evidence.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "evidence.json").read_text())["arms"]["self"]["final"] == "M3"


def test_the_judge_table_gains_a_tie_column_when_the_self_judge_was_offered_ties(tmp_path):
    base, arms = _runs(tmp_path)
    assert "ties on two wrong steps" not in evidence._markdown(evidence.compare(base, arms))
    tied = _eval(80, 300, judge=0.8)
    tied["judges"]["logit/builtin"].update(tie_rate=0.875, tie_pairs=200, tie_pair_rate=0.8)
    (arms["self"] / "iter_2" / "eval" / "eval.json").write_text(json.dumps(tied))
    text = evidence._markdown(evidence.compare(base, arms))
    assert "| arm | model | judge/set | accuracy | ties on two wrong steps |" in text
    assert "| self | M3 | logit/builtin | 80.0 [73.9, 85.0] (200) | 87.5 |" in text
    assert "| self | M2 | logit/builtin | 70.0 [63.3, 75.9] (200) | - |" in text


def test_the_pairs_table_gains_majority_columns_when_a_search_used_the_majority_filter(tmp_path):
    base, arms = _runs(tmp_path)
    assert "majority right" not in evidence._markdown(evidence.compare(base, arms))
    summary = arms["self"] / "iter_1" / "search" / "summary.json"
    stats = {"majority_decided": 0.875, "majority_agrees": 0.25, "majority_accuracy": 0.5}
    summary.write_text(json.dumps({**json.loads(summary.read_text()), **stats}))
    text = evidence._markdown(evidence.compare(base, arms))
    assert "| votes with a majority | search agrees with it (pairs kept) | majority right |" in text
    assert "| self | iter_1 | 4 | 75.0 | 1 | 0 | - | 30.0 | 87.5 | 25.0 | 50.0 |" in text
    assert "| oracle | iter_1 | 4 | 100.0 | 0 | 0 | - | 30.0 | - | - | - |" in text


def test_the_paired_test_counts_changed_answers_by_problem_id_not_by_position(tmp_path):
    """Two models that each solve 50% of the same four problems but different ones: no gain by accuracy, and the
    paired counts see the two answers that flipped each way (M2's records come in another order)."""
    base, run = tmp_path / "ev", tmp_path / "ev-oracle"
    m1 = [{"id": i, "correct": ok} for i, ok in (("a", True), ("b", True), ("c", False), ("d", False))]
    m2 = [{"id": i, "correct": ok} for i, ok in (("d", True), ("c", True), ("b", False), ("a", False), ("e", True))]
    metrics = {"accuracy": 0.5, "boxed_rate": 1.0, "step_marker_rate": 1.0, "mean_steps": 3.0, "mean_step_tokens": 2}
    _write(base / "sft" / "eval", {"benchmarks": {"arith": {"metrics": metrics, "records": m1}}, "judges": {}})
    _write(run / "iter_1" / "eval", {"benchmarks": {"arith": {"metrics": metrics, "records": m2}}, "judges": {}})
    _search(run, 1, [_pair(True)])
    arm = evidence.compare(base, {"oracle": run})["arms"]["oracle"]
    assert arm["gain"]["arith"]["points"] == 0
    assert arm["paired"]["arith"] == {"n": 4, "gained": 2, "lost": 2, "p_value": 1.0}  # "e" is not M1's


def test_the_slips_table_shows_which_operation_a_stage_fixed_and_which_it_broke(tmp_path):
    """M1 gets a subtraction wrong, M2 gets it right but breaks an addition: the table says so per operation, from
    the evaluation records' texts (operators normalised: × is a multiplication), and the JSON keeps the counts."""
    base, run = tmp_path / "ev", tmp_path / "ev-oracle"
    metrics = {"accuracy": 0.5, "boxed_rate": 1.0, "step_marker_rate": 1.0, "mean_steps": 2.0, "mean_step_tokens": 9}
    m1 = [{"id": "a", "correct": False, "text": "Step 1: 40 - 37 = 15.\nStep 2: 15 × 2 = 30. \\boxed{30}"},
          {"id": "b", "correct": True, "text": "Step 1: 4 + 5 = 9. \\boxed{9}"}]  # fmt: skip
    m2 = [{"id": "a", "correct": True, "text": "Step 1: 40 - 37 = 3.\nStep 2: 3 × 2 = 6. \\boxed{6}"},
          {"id": "b", "correct": False, "text": "Step 1: 4 + 5 = 10. \\boxed{10}"}]  # fmt: skip
    _write(base / "sft" / "eval", {"benchmarks": {"arith": {"metrics": metrics, "records": m1}}, "judges": {}})
    _write(run / "iter_1" / "eval", {"benchmarks": {"arith": {"metrics": metrics, "records": m2}}, "judges": {}})
    _search(run, 1, [_pair(True)])
    result = evidence.compare(base, {"oracle": run})
    assert result["slips"]["M1"]["arith"]["-"] == {"claims": 1, "false": 1, "high": 1}
    assert result["arms"]["oracle"]["slips"]["M2"]["arith"] == {
        "-": {"claims": 1, "false": 0, "high": 0}, "*": {"claims": 1, "false": 0, "high": 0},
        "+": {"claims": 1, "false": 1, "high": 1}}  # fmt: skip
    text = evidence.write(result, tmp_path / "out").read_text()
    assert "| arm | model | benchmark | + | - | * |" in text
    assert "| every arm | M1 | arith | 0.0 (1) | 100.0 (1, 1↑ 0↓) | 0.0 (1) |" in text
    assert "| oracle | M2 | arith | 100.0 (1, 1↑ 0↓) | 0.0 (1) | 0.0 (1) |" in text
    assert evidence._slip_cell({"claims": 4, "false": 1}) == "25.0 (4)"  # a count from before the high/low split


def test_no_slips_table_without_answer_texts(tmp_path):
    base, arms = _runs(tmp_path)  # records without texts: nothing to count, no empty table
    assert "Arithmetic slips" not in evidence.write(evidence.compare(base, arms), tmp_path / "out").read_text()


def test_report_only_keeps_the_wall_times_and_command_of_the_run(tmp_path, monkeypatch, capsys):
    base, arms = _runs(tmp_path)
    result = evidence.compare(base, arms, {"ev": 10.0, "ev-oracle": 20.0})
    result["command"] = "openrlhf-psr evidence recipes/evidence_cpu.yaml --out docs"
    evidence.write(result, tmp_path / "out")
    monkeypatch.setattr("openrlhf_psr.recipe.load_recipe", lambda *a, **k: type("R", (), {"name": "ev"})())
    monkeypatch.setattr(evidence, "absent_judge_sets", lambda *a: [])
    args = evidence.argparse.Namespace(recipe="r.yaml", arms=",".join(arms), set=[], runs_dir=str(tmp_path),
                                       out=str(tmp_path / "out"), report_only=True)  # fmt: skip
    assert evidence.run(args) == 0
    again = json.loads((tmp_path / "out" / "evidence.json").read_text())
    assert again["seconds"] == {"ev": 10.0, "ev-oracle": 20.0}
    assert "Command: `openrlhf-psr evidence recipes/evidence_cpu.yaml --out docs`" in capsys.readouterr().out


def test_wall_time_comes_from_the_manifests_so_a_resumed_evidence_run_keeps_each_runs_cost(tmp_path):
    base, arms = _runs(tmp_path)
    stages = {"iter_1/search": {"state": "done", "started": 100.0, "finished": 160.0},
              "iter_1/dpo": {"state": "done", "started": 160.0, "finished": 190.5},
              "iter_2/search": {"state": "failed", "started": 190.5}}  # fmt: skip
    (arms["oracle"] / "manifest.json").write_text(json.dumps({"stages": stages}))
    result = evidence.compare(base, arms, {"ev-oracle": 2.0, "ev": 10.0})  # 2 s: a launch that skipped every stage
    assert result["seconds"] == {"ev-oracle": 90.5, "ev": 10.0}
    assert "| total | 100 |" in evidence._markdown(result)


def test_a_missing_m1_evaluation_is_a_clear_error(tmp_path):
    base, arms = _runs(tmp_path)
    (base / "sft" / "eval" / "eval.json").unlink()
    (base / "m0" / "eval").mkdir(parents=True)
    (base / "m0" / "eval" / "eval.json").write_text(json.dumps(_eval(1, 300)))
    with pytest.raises(UserError, match="expected M1's evaluation"):
        evidence.compare(base, arms)


def test_every_arm_starts_from_m1_and_only_self_keeps_the_judge_sets():
    m1 = Path("/runs/ev/sft/model")
    for arm in evidence.ARMS:
        sets = evidence.arm_overrides(arm, "ev", m1)
        assert sets[:4] == [f"name=ev-{arm}", f"model={m1}", "stages.sft.enabled=off", "data.eval.before_training=off"]
        assert ("data.eval.judge_sets=[]" in sets) == (arm != "self")
    assert "psr.judge.name=oracle" in evidence.arm_overrides("oracle", "ev", m1)
    assert not [s for s in evidence.arm_overrides("self", "ev", m1) if s.startswith("psr.judge")]


def test_unknown_arms_are_refused(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "evidence_cpu.yaml"
    assert evidence.main([str(recipe), "--arms", "oracle,coin", "--runs-dir", str(tmp_path)]) == 2
    assert "--arms 'oracle,coin'" in capsys.readouterr().err


def test_an_absent_judge_set_file_is_left_out_and_said(capsys):
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "evidence_cpu.yaml")
    given = 'data.eval.judge_sets=["prm800k:/nowhere/pairs.parquet?limit=3", "builtin:arith?n=3"]'
    assert evidence.absent_judge_sets(recipe, [given]) == ['data.eval.judge_sets=["builtin:arith?n=3"]']
    assert "/nowhere/pairs.parquet is absent" in capsys.readouterr().out
    assert evidence.absent_judge_sets(recipe, ['data.eval.judge_sets=["builtin:arith?n=3"]']) == []


def test_doctests():
    import doctest

    assert doctest.testmod(evidence).failed == 0
