"""The one source grammar (openrlhf_psr.data.sources): every valid spelling, every error, the round trip, and the
fields that read it (problems, IFT/EFT, judge sets, benchmarks, recipes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from openrlhf_psr.data.sources import (
    EFT,
    IFT,
    JUDGE_PAIRS,
    PROBLEMS,
    BenchmarkSpec,
    Source,
    SourceError,
    parse_benchmark,
    parse_source,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
NAMES = ("gsm8k", "math", "math500", "gaokao2023en", "olympiadbench", "aime24", "amc23", "arith")

VALID = [
    ("builtin:arith", Source("builtin", "arith")),
    ("builtin:arith?seed=11", Source("builtin", "arith", {"seed": 11})),
    ("builtin:arith?n=400&seed=11&ops=2-3", Source("builtin", "arith", {"n": 400, "seed": 11, "ops": (2, 3)})),
    (
        "builtin:arith?ops=1&start=3-10&add=5&groups=2-4&each=2-5&max_value=50&kinds=find,give",
        Source(
            "builtin",
            "arith",
            {
                "ops": (1, 1),
                "start": (3, 10),
                "add": (5, 5),
                "groups": (2, 4),
                "each": (2, 5),
                "max_value": 50,
                "kinds": ("find", "give"),
            },
        ),
    ),  # fmt: skip
    ("jsonl:data/train.jsonl?limit=200", Source("jsonl", "data/train.jsonl", {"limit": 200})),
    ("jsonl:/d/rows.json", Source("jsonl", "/d/rows.json")),
    ("parquet:../d/t.parquet?limit=5", Source("parquet", "../d/t.parquet", {"limit": 5})),
    ("hf:openai/gsm8k:main?split=test", Source("hf", "openai/gsm8k:main", {"split": "test"})),
    (
        "hf:AI-MO/NuminaMath-1.5?limit=10&split=train",
        Source("hf", "AI-MO/NuminaMath-1.5", {"limit": 10, "split": "train"}),
    ),
    ("gsm8k:../d/gsm8k_train.jsonl?limit=2000", Source("gsm8k", "../d/gsm8k_train.jsonl", {"limit": 2000})),
    ("prm800k:/d/prm.stepwise.parquet?limit=2000", Source("prm800k", "/d/prm.stepwise.parquet", {"limit": 2000})),
    ("prm800k:/d/prm.stepwise.parquet", Source("prm800k", "/d/prm.stepwise.parquet")),
    ("srlm-builtin:arith?n=64&ops=2-3", Source("srlm-builtin", "arith", {"n": 64, "ops": (2, 3)})),
    ("srlm-gsm8k:d/g.jsonl?limit=700", Source("srlm-gsm8k", "d/g.jsonl", {"limit": 700})),
]


@pytest.mark.parametrize(("spec", "expected"), VALID, ids=[v[0] for v in VALID])
def test_every_valid_spelling_parses_to_its_typed_source(spec, expected):
    parsed = parse_source(spec)
    assert parsed == expected and hash(parsed) == hash(expected)
    assert parse_source(str(parsed)) == parsed  # round trip
    with pytest.raises(TypeError):
        parsed.options["n"] = 1  # read-only
    with pytest.raises(AttributeError):
        parsed.kind = "jsonl"  # frozen


def test_built_sources_round_trip_through_their_spelling():
    for source in (
        Source("builtin", "arith", {"kinds": ("share",), "ops": (3, 3), "seed": -4}),
        Source("hf", "openai/gsm8k:main", {"split": "test", "limit": 3}),
        Source("jsonl", "/a b/c.jsonl"),
        parse_source("builtin:arith?seed=1").with_options(n=8),
        parse_source("jsonl:d/t.jsonl?limit=2").with_target("/abs/d/t.jsonl"),
    ):
        assert parse_source(str(source)) == source, str(source)
    assert str(parse_source("builtin:arith?ops=2-3&n=5")) == "builtin:arith?n=5&ops=2-3"  # one canonical order


OLD = [
    # the spellings this grammar replaced: each names the new one
    ("builtin:64", "builtin:arith?n=64"),
    ("builtin:64?ops=2-3", "builtin:arith?n=64&ops=2-3"),
    ("builtin@12", "builtin:arith?n=12"),
    ("builtin", "builtin:arith"),
    ("srlm-builtin:8", "srlm-builtin:arith?n=8"),
    ("gsm8k:../d/train.jsonl:2000", "gsm8k:../d/train.jsonl?limit=2000"),
    ("prm800k:d/p.parquet:2000", "prm800k:d/p.parquet?limit=2000"),
    ("srlm-gsm8k:d/g.jsonl:700", "srlm-gsm8k:d/g.jsonl?limit=700"),
    ("prm800k=d/p.parquet@4", "prm800k:d/p.parquet?limit=4"),
    ("prm800k=d/p.parquet", "prm800k:d/p.parquet"),
    ("../shared/data/train/gsm8k_train.jsonl", "jsonl:../shared/data/train/gsm8k_train.jsonl"),
    ("/d/t.parquet", "parquet:/d/t.parquet"),
    ("openai/gsm8k:main", "hf:openai/gsm8k:main"),
    ("AI-MO/NuminaMath-1.5", "hf:AI-MO/NuminaMath-1.5"),
]


@pytest.mark.parametrize(("old", "new"), OLD, ids=[o[0] for o in OLD])
def test_every_old_spelling_names_the_new_one(old, new):
    with pytest.raises(SourceError) as caught:
        parse_source(old)
    assert str(caught.value) == f"{old!r} is the old spelling; write {new!r}"
    parse_source(new)  # and the new one parses


INVALID = [
    ("builtin:arith?opz=2", "'builtin:arith?opz=2': unknown option 'opz' for builtin; did you mean 'ops'?"),
    ("builtin:arith?limit=3", "unknown option 'limit' for builtin; did you mean 'n'?"),
    ("jsonl:t.jsonl?n=3", "unknown option 'n' for jsonl; did you mean 'limit'?"),
    ("hf:a/b?seed=3", "unknown option 'seed' for hf; expected one of split, limit"),
    ("builtin:arith?n=0", "'builtin:arith?n=0': option n='0': expected a positive integer"),
    ("builtin:arith?n=x", "option n='x': expected a positive integer"),
    ("jsonl:t.jsonl?limit=-2", "option limit='-2': expected a positive integer"),
    ("builtin:arith?seed=1.5", "option seed='1.5': expected an integer"),
    ("builtin:arith?ops=two", "option ops='two': expected a number or a range LOW-HIGH"),
    ("builtin:arith?ops=5-2", "'builtin:arith?ops=5-2': built-in task: ops=5-2: expected 1 <= low <= high"),
    ("builtin:arith?kinds=fly", "kinds=fly: expected some of buy_groups,give,double,find,share"),
    ("builtin:arith?max_value=1", "max_value=1: expected >= the lowest start amount"),
    ("builtin:arith?n=3&n=4", "option n is given twice"),
    ("builtin:arith?n", "option n: expected n=VALUE, found 'n'"),
    ("builtin:arith?n=", "option n: expected n=VALUE, found 'n='"),
    ("builtin:algebra", "unknown built-in task 'algebra'; available: arith"),
    ("nope:3", "'nope:3': unknown source kind 'nope'; expected one of builtin, jsonl"),
    ("jsnol:t.jsonl", "unknown source kind 'jsnol'; did you mean 'jsonl'?"),
    ("jsonl:foo.jsnol", "expected a .jsonl or .json file, found suffix '.jsnol' (did you mean 'foo.jsonl'?)"),
    ("jsonl:data", "expected a .jsonl or .json file, found no suffix"),
    ("jsonl:t.parquet", "'jsonl:t.parquet': a .parquet file; write 'parquet:t.parquet'"),
    ("parquet:t.jsonl", "a .jsonl file; write 'jsonl:t.jsonl'"),
    ("prm800k:t.jsonl", "expected a .parquet file, found suffix '.jsonl'"),
    ("gsm8k:t.parquet", "expected a .jsonl or .json file, found suffix '.parquet'"),
    ("jsonl:", "'jsonl:': expected jsonl:PATH?limit=200: a path after 'jsonl:', found none"),
    ("hf:a b", "expected a dataset NAME[:CONFIG]"),
    ("", "expected a source such as builtin:arith or jsonl:PATH, found nothing"),
    ("foo.jsnol", "'foo.jsnol': expected KIND:PATH, e.g. 'jsonl:foo.jsnol' for a .jsonl file"),
    ("arith", "'arith': expected KIND:TARGET[?OPTIONS]"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[i[0] or "empty" for i in INVALID])
def test_bad_specs_are_one_line_errors_naming_the_spec_and_what_was_expected(spec, message):
    with pytest.raises(SourceError) as caught:
        parse_source(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working


def test_each_field_takes_only_its_kinds():
    for kinds, good, bad in (
        (PROBLEMS, ["builtin:arith", "jsonl:t.jsonl", "parquet:t.parquet", "hf:a/b"], ["gsm8k:t.jsonl"]),
        (IFT, ["builtin:arith?n=4", "gsm8k:t.jsonl"], ["prm800k:t.parquet", "jsonl:t.jsonl"]),
        (EFT, ["builtin:arith", "prm800k:t.parquet", "srlm-builtin:arith", "srlm-gsm8k:t.jsonl"], ["gsm8k:t.jsonl"]),
        (JUDGE_PAIRS, ["builtin:arith?n=12", "prm800k:t.parquet?limit=4"], ["jsonl:t.jsonl", "srlm-builtin:arith"]),
    ):
        for spec in good:
            parse_source(spec, kinds)
        for spec in bad:
            with pytest.raises(SourceError, match=f"expected a source of kind .* here, found '{spec.split(':')[0]}'"):
                parse_source(spec, kinds)


def test_built_in_sources_share_the_difficulty_knobs():
    for kind in ("builtin", "srlm-builtin"):
        source = parse_source(f"{kind}:arith?n=8&ops=2-3&max_value=50&kinds=find,give")
        d = source.difficulty()
        assert (d.min_ops, d.max_ops, d.max_value, d.kinds) == (2, 3, 50, ("find", "give"))
    assert parse_source("builtin:arith?n=3").difficulty() == parse_source("builtin:arith").difficulty()


BENCHMARKS = [
    ("gsm8k", BenchmarkSpec("gsm8k"), "jsonl:/R/gsm8k/test.jsonl"),
    ("gsm8k?limit=50", BenchmarkSpec("gsm8k", None, {"limit": 50}), "jsonl:/R/gsm8k/test.jsonl?limit=50"),
    ("arith", BenchmarkSpec("arith"), "builtin:arith?n=24&seed=7"),
    ("arith?n=200&ops=2-3", BenchmarkSpec("arith", None, {"n": 200, "ops": (2, 3)}),
     "builtin:arith?n=200&seed=7&ops=2-3"),
    ("arith?seed=9", BenchmarkSpec("arith", None, {"seed": 9}), "builtin:arith?n=24&seed=9"),
    ("math500=jsonl:/d/t.jsonl?limit=10", BenchmarkSpec("math500", Source("jsonl", "/d/t.jsonl", {"limit": 10})),
     "jsonl:/d/t.jsonl?limit=10"),
    ("gsm8k=hf:openai/gsm8k:main?split=test", BenchmarkSpec("gsm8k", Source("hf", "openai/gsm8k:main",
     {"split": "test"})), "hf:openai/gsm8k:main?split=test"),
    ("arith=builtin:arith?n=5&seed=3", BenchmarkSpec("arith", Source("builtin", "arith", {"n": 5, "seed": 3})),
     "builtin:arith?n=5&seed=3"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected", "resolved"), BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_benchmark_specs_parse_resolve_and_round_trip(spec, expected, resolved):
    parsed = parse_benchmark(spec, names=NAMES)
    assert parsed == expected
    assert str(parsed.resolve("/R")) == resolved
    assert parse_benchmark(str(parsed)) == parsed


BAD_BENCHMARKS = [
    ("gsm8k@50", "'gsm8k@50' is the old spelling; write 'gsm8k?limit=50'"),
    ("arith@24", "'arith@24' is the old spelling; write 'arith?n=24'"),
    (
        "math500=/d/t.jsonl@10",
        "'math500=/d/t.jsonl@10' is the old spelling; write 'math500=jsonl:/d/t.jsonl?limit=10'",
    ),
    ("math500=/d/t.jsonl", "write 'math500=jsonl:/d/t.jsonl'"),
    ("arith=builtin:arith?seed=3@5", "write 'arith=builtin:arith?seed=3&n=5'"),
    ("gsm8k=openai/gsm8k:main", "write 'gsm8k=hf:openai/gsm8k:main'"),
    ("gsm8kk", "benchmark 'gsm8kk': expected one of gsm8k, math, math500"),
    ("gsm8kk?limit=4", "found 'gsm8kk'; did you mean 'gsm8k'?"),
    ("gsm8k?n=3", "unknown option 'n' for jsonl; did you mean 'limit'?"),
    ("arith?limit=3", "unknown option 'limit' for builtin; did you mean 'n'?"),
    ("arith?n=0", "option n='0': expected a positive integer"),
    ("gsm8k=prm800k:p.parquet", "benchmark 'gsm8k': 'prm800k:p.parquet': expected a source of kind builtin, jsonl"),
    ("=jsonl:t.jsonl", "expected a benchmark NAME, NAME?OPTIONS or NAME=SOURCE"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_BENCHMARKS, ids=[b[0] for b in BAD_BENCHMARKS])
def test_bad_benchmark_specs_are_one_line_errors(spec, message):
    with pytest.raises(SourceError) as caught:
        parse_benchmark(spec, names=NAMES)
    assert message in str(caught.value), str(caught.value)


def test_a_benchmark_name_alone_needs_a_data_root():
    with pytest.raises(SourceError, match=r"benchmark 'gsm8k\?limit=3': expected a data root .* or gsm8k=SOURCE"):
        parse_benchmark("gsm8k?limit=3").resolve(None)


# -- the fields that read the grammar ------------------------------------------------------------------------------
def _rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"x\n#### {i}"}) + "\n" for i in range(n)))
    return path


def test_problem_sources_honour_their_options(tmp_path):
    from openrlhf_psr.data.problems import load_problems

    path = _rows(tmp_path / "p.jsonl", 10)
    assert len(load_problems(f"jsonl:{path}?limit=4", answer_rule="gsm8k")) == 4
    assert len(load_problems(f"jsonl:{path}?limit=4", answer_rule="gsm8k", limit=2)) == 2  # the smaller
    assert len(load_problems(f"jsonl:{path}?limit=4", answer_rule="gsm8k", subset=(0, 10))) == 4  # the pool
    assert len(load_problems("builtin:arith?n=5")) == 5
    assert load_problems("builtin:arith?n=5&seed=3") == load_problems(parse_source("builtin:arith?seed=3"), limit=5)
    with pytest.raises(SourceError, match="old spelling; write 'jsonl:"):
        load_problems(str(path))
    with pytest.raises(ValueError, match=r"subset 0:8 of 'builtin:arith\?n=5': expected an end <= n=5"):
        load_problems("builtin:arith?n=5", subset=(0, 8))


def test_ift_eft_and_judge_sets_carry_the_built_in_knobs():
    from openrlhf_psr.cli.evaluate import load_judge_pairs
    from openrlhf_psr.cli.sft_data import build

    ift = build(["builtin:arith?n=6&ops=1"], [])
    assert len(ift) == 6 and all(r["output"].count("Step ") == 1 for r in ift)
    assert build(["builtin:arith?n=3&seed=5"], []) != build(["builtin:arith?n=3"], [])  # seed is the source's
    eft = build([], ["builtin:arith?n=4&ops=1"])
    assert len(eft) == 8 and all(r["kind"] == "eft" for r in eft)  # both orders
    name, pairs = load_judge_pairs("builtin:arith?n=5&ops=1", seed=0)
    assert name == "builtin" and len(pairs) == 5 and all(p.previous_steps == () for p in pairs)
    with pytest.raises(ValueError, match=r"--ift 'builtin:64' is the old spelling; write 'builtin:arith\?n=64'"):
        build(["builtin:64"], [])
    with pytest.raises(ValueError, match=r"--eft 'gsm8k:t.jsonl': expected a source of kind builtin, prm800k"):
        build([], ["gsm8k:t.jsonl"])


def test_evaluate_benchmarks_read_the_grammar(tmp_path):
    from openrlhf_psr.cli.evaluate import load_eval_problems

    (tmp_path / "gsm8k").mkdir()
    _rows(tmp_path / "gsm8k" / "test.jsonl", 9)
    name, problems = load_eval_problems("gsm8k?limit=3", str(tmp_path), seed=0)
    assert name == "gsm8k" and len(problems) == 3 and all(p.id.startswith("gsm8k-") for p in problems)
    assert len(load_eval_problems(f"gsm8k=jsonl:{tmp_path / 'gsm8k' / 'test.jsonl'}", None, 0)[1]) == 9
    assert len(load_eval_problems("arith?n=7&ops=2-3", None, 0)[1]) == 7


# -- recipes ---------------------------------------------------------------------------------------------------------
def test_every_shipped_recipe_loads_and_its_specs_parse(monkeypatch):
    from openrlhf_psr.recipe import load_recipe

    monkeypatch.chdir(REPO)
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        if "../shared" in path.read_text() and not (REPO.parent / "shared" / "data").is_dir():
            continue  # the paper recipes name ../shared/data files, absent outside the project workplace
        d = load_recipe(path).data
        parse_source(d.prompts.source, PROBLEMS)
        for spec in d.ift:
            parse_source(spec, IFT)
        for spec in d.eft:
            parse_source(spec, EFT)
        for spec in d.eval.judge_sets:
            parse_source(spec, JUDGE_PAIRS)
        for spec in d.eval.benchmarks:
            parse_benchmark(spec, names=NAMES)


def test_a_recipe_in_the_old_spellings_names_every_new_one(tmp_path):
    from openrlhf_psr.recipe import RecipeError, load_recipe

    recipe = {"name": "old", "model": "default", "data": {
        "prompts": {"source": "builtin:arith?seed=11"}, "ift": ["builtin:64"], "eft": ["builtin:32"],
        "eval": {"benchmarks": ["arith@24"], "judge_sets": ["builtin@12"]}}}  # fmt: skip
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.problems == [
        f"{path}: data.ift[0]: 'builtin:64' is the old spelling; write 'builtin:arith?n=64'",
        f"{path}: data.eft[0]: 'builtin:32' is the old spelling; write 'builtin:arith?n=32'",
        f"{path}: data.eval.judge_sets[0]: 'builtin@12' is the old spelling; write 'builtin:arith?n=12'",
        f"{path}: data.eval.benchmarks[0]: 'arith@24' is the old spelling; write 'arith?n=24'",
    ]
    recipe["data"]["prompts"]["source"] = "../d/train.jsonl"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        RecipeError, match=r"data.prompts.source: '../d/train.jsonl' is the old spelling; write 'jsonl:"
    ):
        load_recipe(path)


def test_recipe_paths_in_specs_become_absolute_and_keep_their_options(monkeypatch, tmp_path):
    from openrlhf_psr.recipe import absolute_paths, load_recipe

    (tmp_path / "d").mkdir()
    _rows(tmp_path / "d" / "g.jsonl", 3)
    monkeypatch.chdir(tmp_path)
    recipe = {"name": "abs", "model": "default", "data": {
        "prompts": {"source": "jsonl:d/g.jsonl?limit=2"}, "ift": ["gsm8k:d/g.jsonl?limit=2"],
        "eval": {"benchmarks": ["gsm8k=jsonl:d/g.jsonl?limit=1", "arith?n=3"], "judge_sets": []}}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    d = absolute_paths(load_recipe(tmp_path / "r.yaml")).data
    g = tmp_path / "d" / "g.jsonl"
    assert d.prompts.source == f"jsonl:{g}?limit=2" and d.ift == [f"gsm8k:{g}?limit=2"]
    assert d.eval.benchmarks == [f"gsm8k=jsonl:{g}?limit=1", "arith?n=3"]
    with pytest.raises(Exception, match=r"data.ift\[0\]: file .*missing.jsonl does not exist"):
        load_recipe(tmp_path / "r.yaml", ['data.ift=["gsm8k:d/missing.jsonl?limit=2"]'])
