"""What a resume finds on disk after a kill at each point of a save: DeepSpeed checkpoints (only a tag marked
complete is loaded; ``latest`` is made to agree), their rotation, evaluation parts, and the pause points that let
the integration tests kill at those exact states."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openrlhf_psr import pause
from openrlhf_psr.eval import parts as eval_parts
from openrlhf_psr.eval.parts import EvalParts
from openrlhf_psr.fingerprint import model_fingerprint
from openrlhf_psr.trainers import checkpoints
from openrlhf_psr.trainers.checkpoints import MARKER, mark_complete, prepare_resume, rotate

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_doctests():
    for module in (checkpoints, pause, eval_parts):
        assert doctest.testmod(module).failed == 0, module.__name__


def _tag(root: Path, step: int, *, complete: bool, files=("mp_rank_00_model_states.pt",)) -> None:
    (root / f"global_step{step}").mkdir(parents=True)
    for name in files:
        (root / f"global_step{step}" / name).write_bytes(b"x" * 10)
    if complete:
        mark_complete(root, f"global_step{step}", {"consumed_samples": 4 * step})


def _latest(root: Path, text: str | None) -> None:
    if text is not None:
        (root / "latest").write_text(text)


# (what the kill interrupted, tags present as (step, complete), DeepSpeed's `latest`, expected tag, ignored tags)
KILLS = [
    ("nothing of step 2 yet", [(1, True)], "global_step1", "global_step1", []),
    ("step 2's first file", [(1, True), (2, False)], "global_step1", "global_step1", ["global_step2"]),
    ("after DeepSpeed moved latest, before the marker", [(1, True), (2, False)], "global_step2", "global_step1",
     ["global_step2"]),
    ("DeepSpeed's write of latest (truncated)", [(1, True), (2, False)], "", "global_step1", ["global_step2"]),
    ("no latest at all", [(1, True)], None, "global_step1", []),
    ("old rotation deleted the only whole tag", [(2, False)], "global_step1", None, ["global_step2"]),
    ("the first save", [(1, False)], None, None, ["global_step1"]),
    ("steps ordered as numbers", [(2, True), (10, True), (12, False)], "global_step2", "global_step10",
     ["global_step12"]),
]  # fmt: skip


@pytest.mark.parametrize("case", KILLS, ids=[k[0] for k in KILLS])
def test_resume_loads_the_last_complete_tag_and_points_latest_at_it(tmp_path, case):
    _, tags, latest, expected, ignored = case
    for step, complete in tags:
        _tag(tmp_path, step, complete=complete)
    _latest(tmp_path, latest)
    assert prepare_resume(tmp_path) == (expected, ignored)
    if expected is None:
        assert not (tmp_path / "latest").exists()  # nothing for DeepSpeed or zero_to_fp32 to follow
    else:
        assert (tmp_path / "latest").read_text() == expected
    for tag in ignored:
        assert (tmp_path / tag).is_dir()  # ignored, not deleted: the next save of that tag replaces it


def test_a_marker_being_written_does_not_count(tmp_path):
    _tag(tmp_path, 1, complete=True)
    _tag(tmp_path, 2, complete=False)
    (tmp_path / "global_step2" / f".{MARKER}.tmp123").write_text('{"tag": "global_step2"}')  # killed mid-rename
    assert prepare_resume(tmp_path) == ("global_step1", ["global_step2"])


def test_no_checkpoint_folder_means_a_fresh_start(tmp_path):
    assert prepare_resume(tmp_path / "absent") == (None, [])


def test_rotation_keeps_the_newest_complete_tags_and_never_touches_a_half_written_one(tmp_path):
    for step in (1, 2, 3):
        _tag(tmp_path, step, complete=True)
    (tmp_path / "global_step1_hf").mkdir()
    _tag(tmp_path, 4, complete=False)
    (tmp_path / "reference_logps-abc.json").write_text("{}")
    assert rotate(tmp_path, max_num=2) == ["global_step1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step2", "global_step3", "global_step4",
                                                          "reference_logps-abc.json"]  # fmt: skip
    assert rotate(tmp_path, max_num=0) == ["global_step2"]  # at least the newest whole one stays
    assert rotate(tmp_path, max_num=5, max_mem_gib=0) == []  # even when it alone exceeds the memory cap


def test_rotation_by_memory_removes_the_oldest_first(tmp_path):
    for step in (1, 2, 3):
        _tag(tmp_path, step, complete=True, files=("a.pt", "b.pt"))
    per_tag = sum(f.stat().st_size for f in (tmp_path / "global_step1").iterdir())
    assert rotate(tmp_path, max_num=10, max_mem_gib=2.5 * per_tag / 1024**3) == ["global_step1"]


def test_an_evaluation_part_is_reused_only_for_the_same_model_files_and_inputs(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1" * 8)
    before = model_fingerprint(str(model))
    parts = EvalParts(tmp_path / "out", settings={"model_files": before})
    parts.put("benchmark-arith", ["p1"], {"metrics": {"accuracy": 1.0}})
    assert parts.get("benchmark-arith", ["p1"]) == {"metrics": {"accuracy": 1.0}}
    (model / "model.safetensors").write_bytes(b"2" * 9)  # retrained into the same folder
    retrained = EvalParts(tmp_path / "out", settings={"model_files": model_fingerprint(str(model))})
    assert model_fingerprint(str(model)) != before and retrained.get("benchmark-arith", ["p1"]) is None


def test_an_unreadable_part_is_recomputed_and_judge_names_make_safe_file_names(tmp_path):
    parts = EvalParts(tmp_path, settings={})
    parts.put("judge-my_pkg.judges:Longer-builtin", [1], {"accuracy": 0.5})
    [path] = (tmp_path / "parts").iterdir()
    assert path.name == "judge-my_pkg.judges_Longer-builtin.json"
    assert parts.get("judge-my_pkg.judges:Longer-builtin", [1]) == {"accuracy": 0.5}
    path.write_text('{"version": 1, "key": ')  # e.g. written by hand and cut
    assert parts.get("judge-my_pkg.judges:Longer-builtin", [1]) is None


PAUSE_SCRIPT = "from openrlhf_psr.pause import pause_at; pause_at('ckpt-complete:global_step1'); print('went on')"


def _pause_script(env_value: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != pause.ENV}
    env["PYTHONPATH"] = str(REPO)
    if env_value is not None:
        env[pause.ENV] = env_value
    return subprocess.Popen([sys.executable, "-S", "-c", PAUSE_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)


def test_a_pause_point_holds_the_process_until_it_is_killed():
    proc = _pause_script("eval-part:benchmark-arith, ckpt-complete:global_step1")
    try:
        assert proc.stdout.readline() == f"[openrlhf-psr] paused at ckpt-complete:global_step1 ({pause.ENV})\n"
        time.sleep(0.3)
        assert proc.poll() is None  # still there
    finally:
        proc.kill()
        proc.wait()
    for value in (None, "ckpt-complete:global_step2"):
        out, _ = _pause_script(value).communicate(timeout=60)
        assert out == "went on\n"
