"""Stage fingerprints (issue 10, point 5): a rerun reruns a stage whose inputs or command changed, and the stages
that build on it, says why, and removes the stale outputs; unchanged stages are skipped. Fake stages are small
``python -c`` processes, so this runs the real launcher loop without the training stack."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from openrlhf_psr import fingerprint
from openrlhf_psr.launcher import RecipeRun, Stage
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# argv: NAME --out OUT INPUT...: OUT/result.txt = NAME + every input's text; appends NAME to $CALLS
STAGE_CODE = """
import os, pathlib, sys
name, _, out, *inputs = sys.argv[1:]
text = name
for i in map(pathlib.Path, inputs):
    for f in sorted(i.rglob("*") if i.is_dir() else [i]):
        if f.is_file():
            text += "|" + f.read_text()
out = pathlib.Path(out)
out.mkdir(parents=True, exist_ok=True)
(out / "result.txt").write_text(text)
with open(os.environ["CALLS"], "a") as log:
    log.write(name + "\\n")
"""


class FakeRun(RecipeRun):
    """data -> train -> eval (feeds nothing) -> search (reads the trained model) -> report (reads everything)."""

    def __init__(self, tmp: Path, eval_setting: str = "a", train_setting: str = "lr=1", runs: str = "runs", reads=()):
        super().__init__(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp / runs)
        self.tmp, self.eval_setting, self.train_setting = tmp, eval_setting, train_setting
        self.reads = [self.runs_dir / r for r in reads]  # what train also reads from sibling runs of the runs dir

    def plan(self) -> list[Stage]:
        root, env = self.root, {"CALLS": str(self.tmp / "calls.log")}

        def stage(name, out, *inputs, **kw):
            cmd = [self.python, "-c", STAGE_CODE, name, "--out", str(root / out), *map(str, inputs)]
            return Stage(name, cmd, root / out / "result.txt", env=env, log=root / "logs" / f"{name}.log", **kw)

        return [
            stage("data", "data", self.tmp / "source.txt"),
            stage("train", "model", root / "data", *self.reads, self.train_setting),
            stage("eval", "eval", root / "model", self.eval_setting, feeds_later=False),
            stage("search", "search", root / "model"),
            stage("report", "report", reads_all=True),
        ]


def _calls(tmp: Path) -> list[str]:
    path = tmp / "calls.log"
    calls = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return calls


def _run(run: RecipeRun) -> list[str]:
    lines: list[str] = []
    run.run(progress=lines.append)
    return lines


def test_doctests():
    assert doctest.testmod(fingerprint).failed == 0


def test_unchanged_stages_are_skipped_and_a_copy_with_new_mtimes_changes_nothing(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    _run(run)
    assert _calls(tmp_path) == ["data", "train", "eval", "search", "report"]
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["stages"]["train"]["fingerprint"]["inputs"] == {"<run>/data": fingerprint.ContentHasher().path(
        run.root / "data")}  # fmt: skip
    lines = _run(run)
    assert _calls(tmp_path) == [] and all("done, skipped" in line for line in lines)
    os.utime(tmp_path / "source.txt", ns=(10**18, 10**18))  # same content, new mtime: nothing to redo
    assert _run(run) and _calls(tmp_path) == []


def test_a_copied_runs_dir_resumes_also_where_a_run_reads_a_sibling_run(tmp_path):
    """The evidence driver's arms read M1 from a sibling run folder of the same runs dir; its absolute path in their
    commands made a copied runs dir (an experiment branched from a finished M1) rerun every arm stage (seen: a
    384-prompt search redone, 12 minutes). A copy is not a change; a changed sibling still is."""
    (tmp_path / "source.txt").write_text("v1")
    m1 = tmp_path / "runs" / "m1" / "model"
    m1.mkdir(parents=True)
    (m1 / "weights.txt").write_text("M1")
    _run(FakeRun(tmp_path, reads=["m1/model"]))
    assert _calls(tmp_path) == ["data", "train", "eval", "search", "report"]
    shutil.copytree(tmp_path / "runs", tmp_path / "branch" / "runs", copy_function=shutil.copy)  # new mtimes, as cp
    copied = FakeRun(tmp_path, runs="branch/runs", reads=["m1/model"])
    lines = _run(copied)
    assert _calls(tmp_path) == [] and all("done, skipped" in line for line in lines), lines
    manifest = json.loads(copied.manifest_path.read_text())
    assert "<runs>/m1/model" in manifest["stages"]["train"]["fingerprint"]["inputs"]
    (tmp_path / "branch" / "runs" / "m1" / "model" / "weights.txt").write_text("M1 retrained")
    _run(copied)
    assert _calls(tmp_path) == ["train", "eval", "search", "report"]


def test_a_changed_input_reruns_its_stage_and_every_later_stage_and_says_so(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    _run(run)
    _calls(tmp_path)
    (run.root / "search" / "stale-shard.jsonl").write_text("{}")  # what a resumed search would wrongly reuse
    (tmp_path / "source.txt").write_text("v2")
    assert dict(run.status())["data"].startswith("done (will rerun: changed since it ran: input ")
    lines = _run(run)
    assert _calls(tmp_path) == ["data", "train", "eval", "search", "report"]
    text = "\n".join(lines)
    assert f"data: rerunning from scratch: changed since it ran: input {tmp_path / 'source.txt'}" in text
    assert "train: rerunning from scratch: changed since it ran: input <run>/data" in text
    for name in ("eval", "search", "report"):  # rerun because of the change upstream (whichever reason is given)
        assert f"{name}: rerunning from scratch: " in text
    assert not (run.root / "search" / "stale-shard.jsonl").exists()
    assert (run.root / "search" / "result.txt").read_text() == "search|train|data|v2"


def test_a_model_retrained_in_place_reruns_the_stages_that_read_it(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    _run(run)
    _calls(tmp_path)
    (run.root / "model" / "result.txt").write_text("retrained weights")  # same path, new weights
    lines = _run(run)
    assert _calls(tmp_path) == ["eval", "search", "report"]  # data and train are unchanged
    assert any("search: rerunning from scratch: changed since it ran: input <run>/model" in x for x in lines)
    assert (run.root / "search" / "result.txt").read_text() == "search|retrained weights"


def test_a_changed_command_reruns_the_stage_and_an_evaluation_reruns_nothing_else(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    _run(FakeRun(tmp_path))
    _calls(tmp_path)
    lines = _run(FakeRun(tmp_path, eval_setting="b"))
    assert _calls(tmp_path) == ["eval", "report"]  # the report reads the evaluation; the search does not
    assert any("eval: rerunning from scratch: changed since it ran: its command or settings" in x for x in lines)


def test_a_rerun_stage_reruns_later_stages_even_when_its_output_looks_the_same(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    _run(FakeRun(tmp_path))
    _calls(tmp_path)
    lines = _run(FakeRun(tmp_path, train_setting="lr=2"))  # the fake trainer ignores it: same output bytes
    assert _calls(tmp_path) == ["train", "eval", "search", "report"]
    text = "\n".join(lines)
    assert "train: rerunning from scratch: changed since it ran: its command or settings" in text
    assert "search: rerunning from scratch: an earlier stage it builds on (train) reran" in text


def test_an_interrupted_stage_with_unchanged_inputs_resumes_without_losing_its_work(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    _run(run)
    _calls(tmp_path)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["stages"]["search"]["state"] = "running"  # killed mid-stage
    run.save_manifest(manifest)
    (run.root / "search" / "shard-00000.jsonl").write_text("{}")
    lines = _run(run)
    assert _calls(tmp_path) == ["search", "report"]
    assert any("search: resuming" in x for x in lines) and (run.root / "search" / "shard-00000.jsonl").exists()


def test_an_old_manifest_without_fingerprints_is_adopted_not_rerun(tmp_path):
    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    _run(run)
    _calls(tmp_path)
    manifest = json.loads(run.manifest_path.read_text())
    for record in manifest["stages"].values():
        del record["fingerprint"]
    run.save_manifest(manifest)
    _run(run)
    assert _calls(tmp_path) == []
    assert all("fingerprint" in r for r in json.loads(run.manifest_path.read_text())["stages"].values())


def test_outputs_are_removed_only_inside_the_run_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = FakeRun(tmp_path)
    stage = Stage("x", [sys.executable, "--out", str(outside), "--ckpt.path", str(run.root / "ckpt")],
                  run.root / "x.json")  # fmt: skip
    (run.root / "ckpt").mkdir(parents=True)
    assert run._clear_outputs(stage) == [str(run.root / "ckpt")] and outside.is_dir()


def test_reference_cache_key_follows_the_weights_not_the_path(tmp_path):
    model = tmp_path / "ref"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"old")
    before = fingerprint.model_fingerprint(str(model))
    (model / "model.safetensors").write_bytes(b"new weights")
    assert fingerprint.model_fingerprint(str(model)) != before
    assert fingerprint.model_fingerprint("default").startswith("embedded:")


def test_a_data_file_named_inside_a_source_spec_is_an_input_of_the_stages_that_read_it(tmp_path):
    """Specs name their files inside ``KIND:PATH?OPTIONS`` (and benchmarks as ``NAME=KIND:PATH``), in commands and in
    stage configs; an edited data file must rerun the stage, as a bare path did before the source grammar."""
    problems, ift = tmp_path / "prompts.jsonl", tmp_path / "ift.jsonl"
    bench = tmp_path / "bench.jsonl"
    for f in (problems, ift, bench):
        f.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    recipe = load_recipe(
        RECIPES / "tiny_cpu.yaml",
        [f"data.prompts.source=jsonl:{problems}?limit=1", f'data.ift=["gsm8k:{ift}?limit=1"]',
         f'data.eval.benchmarks=["gsm8k=jsonl:{bench}?limit=1"]'],
    )  # fmt: skip
    run = RecipeRun(recipe, runs_dir=tmp_path / "runs")
    stages = {s.name: s for s in run.plan()}
    hasher = fingerprint.ContentHasher(None)

    def inputs(name):
        return run.fingerprint(stages[name], hasher)["inputs"]

    assert str(problems) in inputs("iter_1/search")
    assert str(ift) in inputs("sft_data")
    assert str(bench) in inputs("eval_m0")
    before = inputs("iter_1/search")[str(problems)]
    problems.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    assert inputs("iter_1/search")[str(problems)] != before


def test_writing_a_stage_config_does_not_change_the_stage_fingerprint(tmp_path):
    """The launcher writes ``<out>/config.json`` when a stage starts; if the file counted as an input, every stage
    run from a config would rerun on the next launch (seen: a resubmitted cluster run redid eval and search)."""
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path / "runs")
    hasher = fingerprint.ContentHasher(None)
    configured = [s for s in run.plan() if s.config]
    assert {s.name for s in configured} >= {"iter_1/search", "eval_m0"}
    for stage in configured:
        before = run.fingerprint(stage, hasher)
        stage.write_config()
        assert run.fingerprint(stage, hasher) == before, stage.name


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_status_reads_back_from_the_manifest_the_stages_the_launcher_ran(tmp_path, name, recipe_data):
    """`status` rebuilds the run from the recipe its manifest recorded; that round trip must give the same stage
    commands and configs, or every finished stage reads as stale ("will rerun: changed since it ran") although
    a launch would skip it (the cluster section's engine settings once differed after the round trip)."""
    launched = RecipeRun(load_recipe(RECIPES / name, recipe_data), runs_dir=tmp_path / "runs")
    launched.root.mkdir(parents=True)
    launched.save_manifest(launched.load_manifest())
    reread = RecipeRun.from_folder(launched.root)
    assert [(s.name, s.command, s.config) for s in reread.plan()] == [
        (s.name, s.command, s.config) for s in launched.plan()
    ]


def test_a_stage_that_failed_then_finished_keeps_no_exit_code_of_the_failure(tmp_path):
    from openrlhf_psr.launcher import StageFailed

    (tmp_path / "source.txt").write_text("v1")
    run = FakeRun(tmp_path)
    run.root.mkdir(parents=True)
    (run.root / "data").write_text("a file where the stage makes its folder")  # the first attempt fails
    with pytest.raises(StageFailed):
        _run(run)
    assert json.loads(run.manifest_path.read_text())["stages"]["data"]["exit_code"] == 1
    (run.root / "data").unlink()
    _run(run)
    record = json.loads(run.manifest_path.read_text())["stages"]["data"]
    assert record["state"] == "done" and "exit_code" not in record
