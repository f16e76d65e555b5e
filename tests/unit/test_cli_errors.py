"""Bad input from a user gets one line per problem naming the culprit, exit status 2, and no traceback, from every
subcommand, before any heavy module loads.

Each case runs the real command line in a fresh interpreter (``python -m openrlhf_psr.cli.main ...``) with torch,
vLLM, Ray, DeepSpeed and transformers made unimportable: a case that needed them to reject its input would fail
with an ImportError instead of the expected message. Each must answer in under 2 s (of CPU time; see ``_cli``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny_cpu.yaml"
HEAVY = ("torch", "vllm", "ray", "deepspeed", "transformers")


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    """A folder of stand-in packages that refuse to import (put first on PYTHONPATH)."""
    root = tmp_path_factory.mktemp("block-heavy")
    for name in HEAVY:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('blocked: the CLI imported {name}')\n")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad (and good) inputs on disk, made once."""
    d = tmp_path_factory.mktemp("inputs")
    good = [{"question": f"q{i}", "answer": str(i)} for i in range(4)]

    def jsonl(name: str, text: str | bytes) -> Path:
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    lines = "".join(json.dumps(r) + "\n" for r in good)
    out = {
        "good": jsonl("good.jsonl", lines),
        "not_utf8": jsonl(
            "latin1.jsonl", json.dumps(good[0]).encode() + b'\n{"question": "caf\xe9", "answer": "1"}\n'
        ),
        "bad_json": jsonl("broken.jsonl", json.dumps(good[0]) + '\n{"question": "q", "answer": \n'),
        "a_list": jsonl("list.jsonl", "[1, 2]\n"),
        "empty": jsonl("empty.jsonl", ""),
        "no_question": jsonl("noq.jsonl", json.dumps(good[0]) + "\n" + json.dumps({"problem": "p", "answer": "1"})),
        "no_answer_gsm8k": jsonl(
            "gsm_noanswer.jsonl",
            json.dumps({"question": "q", "answer": "x\n#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n",
        ),  # fmt: skip
        "garbage_parquet": jsonl("garbage.parquet", b"PAR1 this is not parquet"),
    }
    recipes = d / "recipes"
    recipes.mkdir()
    out["yaml_syntax"] = recipes / "syntax.yaml"
    out["yaml_syntax"].write_text("name: x\nmodel: [default\n")
    out["yaml_bytes"] = recipes / "bytes.yaml"
    out["yaml_bytes"].write_bytes(b"name: t\nmodel: caf\xe9\n")
    out["yaml_list"] = recipes / "list.yaml"
    out["yaml_list"].write_text("- name: t\n")
    runs = d / "runs"
    for name, manifest in {
        "corrupt": '{"recipe": {',
        "a_list": "[]",
        "bad_recipe": json.dumps({"recipe": {"name": "t"}, "stages": {}}),
    }.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "manifest.json").write_text(manifest)
    (runs / "no_manifest").mkdir()
    (runs / "empty_run").mkdir()
    (runs / "bad_eval" / "m0" / "eval").mkdir(parents=True)
    (runs / "bad_eval" / "m0" / "eval" / "eval.json").write_text("{oops")
    # a recipe whose name's run folder holds a corrupt manifest: `run` must refuse it in one line
    tiny = yaml.safe_load(TINY.read_text())
    (runs / "tiny_cpu").mkdir()
    (runs / "tiny_cpu" / "manifest.json").write_text('{"stages": [')
    out["tiny_recipe"] = recipes / "tiny.yaml"
    out["tiny_recipe"].write_text(yaml.safe_dump(tiny))
    out["runs"] = runs
    out["dir"] = d
    return out


def _dry(*sets: str) -> list[str]:
    """``run TINY --dry-run`` with overrides."""
    return ["run", str(TINY), "--dry-run", *[x for s in sets for x in ("--set", s)]]


# (id, argv, substrings the error must contain). Paths come from the `files` fixture: <name> placeholders.
CASES = [
    # --set values and recipe keys
    ("set-bad-yaml", _dry("psr.search.width=["), ["--set 'psr.search.width=['", "expected a YAML value"]),
    ("set-no-equals", _dry("psr.search.width"), ["--set 'psr.search.width'", "KEY.PATH=VALUE"]),
    ("set-empty-key", _dry("psr..width=3"), ["psr..width=3", "empty key"]),
    ("set-into-a-value", _dry("model.x=3"), ["'model'", "section"]),
    ("misspelt-key", _dry("psr.search.widht=4"), ["psr.search", "'widht'", "did you mean 'width'"]),
    ("wrong-type", _dry("dpo.beta=high"), ["dpo.beta", "found 'high'"]),
    ("name-escapes-runs", _dry("name=../../x"), ["name:", "'../../x'"]),
    ("name-absolute", _dry("name=/tmp/x"), ["name:", "'/tmp/x'"]),
    ("negative-prompt-count", _dry("stages.prompts_per_iteration=[-5]"), ["prompts_per_iteration", "-5"]),
    ("too-few-counts", _dry("stages.iterations=3"), ["prompts_per_iteration has 1 entries for 3 iterations"]),
    ("unknown-eval-judge", _dry("data.eval.judges=[logitt]"), ["data.eval.judges[0]", "'logitt'", "'logit'"]),
    ("unknown-plugin", _dry("psr.judge.name=logitt"), ["psr.judge.name", "did you mean 'logit'"]),
    (
        "judge-setting-typo",
        _dry("psr.judge.settings={batchsize: 4}"),
        ["psr.judge.settings.batchsize", "'batch_size'"],
    ),
    (
        "generator-setting-typo",
        _dry("psr.generator={name: openrlhf_ray, settings: {num_engine: 2}}"),
        ["psr.generator.settings.num_engine", "'num_engines'"],
    ),
    ("generator-missing-setting", _dry("psr.generator={name: openai_http}"), ["psr.generator.settings", "'base_url'"]),
    ("trainer-setting-typo", _dry("psr.trainer.settings={refrence: live}"), ["psr.trainer.settings.refrence"]),
    (
        "trainer-setting-value",
        _dry("psr.trainer.settings={reference: lve}"),
        ["psr.trainer.settings.reference", "'lve'"],
    ),
    ("mistyped-suffix", _dry("data.prompts.source=jsonl:foo.jsnol"), ["data.prompts.source", "foo.jsnol", ".jsonl"]),
    ("missing-data-file", _dry("data.ift=[gsm8k:/no/such/train.jsonl]"), ["data.ift[0]", "/no/such/train.jsonl"]),
    ("unknown-benchmark", _dry('data.eval.benchmarks=["gsm8kk?limit=4"]'), ["data.eval.benchmarks[0]", "'gsm8kk'"]),
    ("zero-benchmark-limit", _dry('data.eval.benchmarks=["arith?n=0"]'), ["data.eval.benchmarks[0]", "positive"]),
    ("recipe-missing", ["run", "/no/such/recipe.yaml", "--dry-run"], ["/no/such/recipe.yaml"]),
    (
        "recipe-yaml-syntax",
        ["run", "<yaml_syntax>", "--dry-run"],
        ["syntax.yaml:3:1", "expected valid YAML", "flow sequence at line 2"],
    ),
    ("recipe-not-utf8", ["run", "<yaml_bytes>", "--dry-run"], ["bytes.yaml:2", "UTF-8", "0xe9"]),
    ("recipe-not-a-mapping", ["run", "<yaml_list>", "--dry-run"], ["list.yaml", "mapping"]),
    # data files, opened by the preflight
    ("data-not-utf8", _dry("data.prompts.source=jsonl:<not_utf8>"), ["latin1.jsonl:2", "UTF-8", "0xe9"]),
    ("data-bad-json", _dry("data.prompts.source=jsonl:<bad_json>"), ["broken.jsonl:2", "not valid JSON"]),
    ("data-not-object", _dry("data.prompts.source=jsonl:<a_list>"), ["list.jsonl:1", "expected a JSON object"]),
    ("data-empty", _dry("data.prompts.source=jsonl:<empty>"), ["data.prompts.source", "empty.jsonl", "empty"]),
    ("data-missing-field", _dry("data.prompts.source=jsonl:<no_question>"), ["noq.jsonl", "row 2", "'question'"]),
    (
        "data-too-few-problems",
        _dry("data.prompts.source=jsonl:<good>", "stages.prompts_per_iteration=[5]"),
        ["stages.prompts_per_iteration", "need 5", "found 4"],
    ),
    (
        "eval-file-bad-json",
        _dry('data.eval.benchmarks=["arith=jsonl:<bad_json>?limit=2"]'),
        ["data.eval.benchmarks[0]", "broken.jsonl:2"],
    ),
    (
        "ift-row-without-answer",
        _dry("data.ift=[gsm8k:<no_answer_gsm8k>]"),
        ["data.ift[0]", "gsm_noanswer.jsonl", "row 2"],
    ),
    ("eft-garbage-parquet", _dry("data.eft=[prm800k:<garbage_parquet>]"), ["data.eft[0]", "garbage.parquet"]),
    (
        "judge-set-garbage-parquet",
        _dry('data.eval.judge_sets=["prm800k:<garbage_parquet>?limit=2"]'),
        ["data.eval.judge_sets[0]", "garbage.parquet"],
    ),
    # run folders and manifests
    ("status-corrupt-manifest", ["status", "<runs>/corrupt"], ["corrupt/manifest.json:1:", "invalid JSON"]),
    ("status-manifest-not-object", ["status", "<runs>/a_list"], ["a_list/manifest.json", "found list"]),
    ("status-manifest-bad-recipe", ["status", "<runs>/bad_recipe"], ["bad_recipe/manifest.json: recipe", "model"]),
    ("status-no-manifest", ["status", "<runs>/no_manifest"], ["no_manifest", "manifest.json"]),
    ("status-no-folder", ["status", "<runs>/nothing"], ["nothing", "no such folder"]),
    ("run-corrupt-manifest", ["run", "<tiny_recipe>", "--runs-dir", "<runs>"], ["tiny_cpu/manifest.json:1:"]),
    ("report-empty-folder", ["report", "<runs>/empty_run"], ["empty_run", "found none"]),
    ("report-no-folder", ["report", "<runs>/nothing"], ["nothing", "run folder"]),
    ("report-corrupt-eval", ["report", "<runs>/bad_eval"], ["m0/eval/eval.json:1:", "invalid JSON"]),
    # flags
    ("search-bool-word", ["search", "--out", "<dir>/s", "--chat-template", "true"], ["--chat-template", "'true'"]),
    ("search-bool-unknown", ["search", "--out", "<dir>/s", "--both-orders", "maybe"], ["--both-orders", "'maybe'"]),
    ("search-settings-not-object", ["search", "--out", "<dir>/s", "--judge-settings", "[1]"], ["--judge-settings"]),
    ("search-negative-limit", ["search", "--out", "<dir>/s", "--limit", "-5"], ["--limit", "'-5'"]),
    ("search-bad-subset", ["search", "--out", "<dir>/s", "--subset", "0:-5"], ["--subset", "'0:-5'"]),
    ("search-width-one", ["search", "--out", "<dir>/s", "--width", "1"], ["--width", "width"]),
    (
        "search-mistyped-suffix",
        ["search", "--out", "<dir>/s", "--problems", "jsonl:foo.jsnol"],
        ["foo.jsnol", ".jsonl"],
    ),  # fmt: skip
    (
        "search-empty-problems",
        ["search", "--out", "<dir>/s", "--problems", "jsonl:<empty>"],
        ["--problems", "found none"],
    ),  # fmt: skip
    ("search-unknown-judge", ["search", "--out", "<dir>/s", "--judge", "logitt"], ["'logitt'", "did you mean"]),
    ("search-missing-out", ["search"], ["--out"]),
    ("evaluate-bool", ["evaluate", "--model", "m", "--out", "<dir>/e", "--chat-template", "yes"], ["--chat-template"]),
    (
        "evaluate-unknown-judge",
        ["evaluate", "--model", "m", "--out", "<dir>/e", "--judge-set", "builtin:arith?n=2", "--judge", "logitt"],
        ["--judge logitt", "did you mean 'logit'"],
    ),  # fmt: skip
    (
        "evaluate-bad-limit",
        ["evaluate", "--model", "m", "--out", "<dir>/e", "--benchmark", "gsm8k?limit=x"],
        ["gsm8k?limit=x"],
    ),  # fmt: skip
    ("sft-data-unknown-kind", ["sft-data", "--out", "<dir>/o.jsonl", "--ift", "nope:3"], ["--ift 'nope:3'", "'nope'"]),
    ("sft-data-bool", ["sft-data", "--out", "<dir>/o.jsonl", "--chat-template", "1"], ["--chat-template", "'1'"]),
    ("unknown-command", ["serach"], ["'serach'"]),
]


def _fill(text: str, files: dict[str, Path]) -> str:
    for key, path in files.items():
        text = text.replace(f"<{key}>", str(path))
    return text


def _argv(template: list[str], files: dict[str, Path]) -> list[str]:
    return [_fill(part, files) for part in template]


def _cli(
    argv: list[str], blocker: Path, module: str = "openrlhf_psr.cli.main"
) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI; also returns the CPU seconds it used (user + system: unlike wall time, not inflated by other
    work on a busy machine, so the 2 s bound is a property of the command, not of the test machine's load)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize(
    ("argv", "culprit"), [(argv, culprit) for _, argv, culprit in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_naming_the_culprit_with_status_2(argv, culprit, files, blocker):
    proc, seconds = _cli(_argv(argv, files), blocker)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors and all(line.startswith("openrlhf-psr: error: ") for line in errors), proc.stderr
    text = "\n".join(errors)
    for part in culprit:
        assert _fill(part, files) in text, (part, text)
    assert seconds < 2.0, f"{seconds:.2f} CPU seconds to reject bad input"


def test_the_dry_run_reports_every_problem_at_once(files, blocker):
    recipe_level = _dry(
        "data.eval.judges=[logitt]", "psr.judge.settings={batchsize: 4}", "data.ift=[gsm8k:/no/such.jsonl]"
    )
    data_level = _dry("data.prompts.source=jsonl:<empty>", 'data.eval.benchmarks=["arith=jsonl:<bad_json>?limit=2"]',
                      "data.eft=[prm800k:<garbage_parquet>]")  # fmt: skip
    for argv, parts in (
        (recipe_level, ["data.eval.judges[0]", "psr.judge.settings.batchsize", "data.ift[0]"]),
        (data_level, ["data.prompts.source", "data.eval.benchmarks[0]", "data.eft[0]"]),
    ):
        proc, _ = _cli(_argv(argv, files), blocker)
        errors = proc.stderr.splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == len(parts) and all(e.startswith("openrlhf-psr: error: ") for e in errors), errors
        for part in parts:
            assert sum(part in e for e in errors) == 1, (part, errors)


def test_debug_shows_the_traceback_of_a_user_error(files, blocker):
    proc, _ = _cli(["--debug", *_dry("psr.search.width=[")], blocker)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RecipeError" in proc.stderr
    proc, _ = _cli([*_dry("psr.search.width=["), "--debug"], blocker)  # also after the subcommand
    assert "Traceback" in proc.stderr


def test_module_entry_points_go_through_the_same_handler(files, blocker):
    for module, argv, culprit in (
        (
            "openrlhf_psr.cli.search",
            ["--out", "x", "--both-orders", "on", "--chat-template", "maybe"],
            "--chat-template",
        ),
        ("openrlhf_psr.cli.evaluate", ["--model", "m", "--out", "x", "--chat-template", "true"], "--chat-template"),
        ("openrlhf_psr.cli.report", [str(files["runs"] / "empty_run")], "empty_run"),
        ("openrlhf_psr.cli.sft_data", ["--out", "x", "--eft", "nope:2"], "'nope'"),
        ("openrlhf_psr.cli.status", [str(files["runs"] / "corrupt")], "manifest.json:1:"),
    ):
        proc, _ = _cli(argv, blocker, module=module)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (module, proc.stderr)
        assert proc.stderr.startswith("openrlhf-psr: error: ") and culprit in proc.stderr, (module, proc.stderr)


def test_a_good_recipe_passes_the_preflight_and_prints_every_command(files, blocker, tmp_path):
    argv = _dry("data.prompts.source=jsonl:<good>", "stages.prompts_per_iteration=[4]")
    proc, _ = _cli([*_argv(argv, files), "--runs-dir", str(tmp_path)], blocker)
    assert proc.returncode == 0, proc.stderr
    assert "# preflight: data.prompts.source" in proc.stdout and "4 problems (4 needed)" in proc.stdout
    assert "# iter_1/search" in proc.stdout and "--chat-template on" in proc.stdout
