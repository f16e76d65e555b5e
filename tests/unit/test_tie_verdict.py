"""The tie verdict ("[[C]]": neither step is better): the prompt that offers it, the logit and generative judges
that read it as an abstention, the search's tournament that then makes no pair of two wrong steps, the built-in
EFT that teaches it, and the evaluation setting that asks for it. Scripted engines, no model."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from openrlhf_psr.engines.base import Engine, Sample
from openrlhf_psr.judges.base import Comparison
from openrlhf_psr.judges.generative import GenerativeJudge
from openrlhf_psr.judges.logit import LogitJudge
from openrlhf_psr.testing import CharTokenizer
from openrlhf_psr.tournament import make_state

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TIE_OFFER = '"[[C]]" for a tie'
RIGHT, WRONG_1, WRONG_2 = "Step 1: 3 + 4 = 7.", "Step 1: 3 + 4 = 8.", "Step 1: 3 + 4 = 9."


class LetterLogprobs(Engine):
    """``next_token_logprobs`` of a judge that knows the right step: it prefers it and, when both steps are
    wrong, puts most mass on "C" (if asked for it; else it still has to pick one)."""

    tokenizer = CharTokenizer()

    def __init__(self):
        self.token_ids: list[list[int]] = []
        self.prompts: list[str] = []

    def generate(self, requests):
        raise AssertionError("the logit judge without reason_tokens never generates")

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        self.token_ids.append(list(token_ids))
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            a = text.split("Assistant A's Next Reasoning Step]\n", 1)[1]
            a_right, b_right = RIGHT in a.split("[The End", 1)[0], RIGHT in a.split("[The End", 1)[1]
            probs = {"A": 0.8 if a_right else 0.1, "B": 0.8 if b_right else 0.1}
            probs["C"] = 0.1 if a_right or b_right else 0.7
            if not (a_right or b_right):  # it leans to the smaller error, but mostly says neither
                a_closer = WRONG_1 in a.split("[The End", 1)[0]
                probs["A"], probs["B"] = (0.2, 0.1) if a_closer else (0.1, 0.2)
            out.append([math.log(probs[chr(t)]) for t in token_ids])
        return out


def _comparisons(steps: list[str], pairs) -> list[Comparison]:
    return [Comparison("What is 3 + 4?", (), steps[i], steps[j]) for i, j in pairs]


def _tournament(judge, steps: list[str]):
    state = make_state("round_robin", len(steps), aggregate="prob")
    while not state.done:
        pairs = state.pending()
        state.submit([j.verdict for j in judge.judge(_comparisons(steps, pairs))])
    return state.result()


def test_the_logit_judge_with_a_tie_offer_reads_c_and_abstains_where_it_is_likeliest():
    engine = LetterLogprobs()
    judge = LogitJudge(engine=engine, chat_template=False, tie=True)
    right_wrong, wrong_wrong = judge.judge(_comparisons([RIGHT, WRONG_1, WRONG_2], [(0, 1), (1, 2)]))
    assert engine.token_ids == [[ord("A"), ord("B"), ord("C")]]  # one call, the three letters
    assert all(TIE_OFFER in p for p in engine.prompts)
    assert right_wrong.verdict.winner == "A" and right_wrong.verdict.p_a == pytest.approx(0.8 / 0.9)
    assert wrong_wrong.verdict.winner is None and wrong_wrong.verdict.p_a is None  # a tie: no preference at all
    plain = LetterLogprobs()
    assert (
        LogitJudge(engine=plain, chat_template=False)
        .judge(_comparisons([WRONG_1, WRONG_2], [(0, 1)]))[0]
        .verdict.winner
        == "A"
    )  # the paper's prompt: it must pick one (here the smaller error, shown as A)
    assert plain.token_ids == [[ord("A"), ord("B")]] and not any(TIE_OFFER in p for p in plain.prompts)


def test_with_ties_the_search_makes_no_pair_of_two_wrong_steps():
    tie_judge = LogitJudge(engine=LetterLogprobs(), chat_template=False, tie=True)
    forced = LogitJudge(engine=LetterLogprobs(), chat_template=False)
    # all candidates wrong: the paper's judge still ranks them (a pair of two wrong steps); with ties, a rollback
    assert _tournament(forced, [WRONG_1, WRONG_2]).best is not None
    assert _tournament(tie_judge, [WRONG_1, WRONG_2]).is_tie
    # one right candidate: it is still chosen, over a wrong one
    result = _tournament(tie_judge, [WRONG_1, RIGHT, WRONG_2])
    assert result.best == 1 and result.worst in (0, 2)


class Scripted(Engine):
    tokenizer = CharTokenizer()

    def __init__(self, text: str):
        self.text, self.prompts = text, []

    def generate(self, requests):
        self.prompts += [self.tokenizer.decode(r.prompt_token_ids) for r in requests]
        return [[Sample(self.text, (), "stop")] for _ in requests]


@pytest.mark.parametrize(("tie", "winner"), [(True, None), (False, "A")])
def test_the_generative_judge_reads_a_last_c_as_a_tie_only_when_offered(tie, winner):
    engine = Scripted("A's result looks right [[A]], but 3 + 4 = 7: both are wrong. [[C]]")
    [judgment] = GenerativeJudge(engine, chat_template=False, tie=tie).judge(
        _comparisons([WRONG_1, WRONG_2], [(0, 1)])
    )
    assert judgment.verdict.winner == winner
    assert (TIE_OFFER in engine.prompts[0]) is tie


def _blocks(prompt: str) -> tuple[str, list[str], str, str]:
    context = re.search(r"\[Question and Intermediate Reasoning Steps Provided\] (.*?)\n\n", prompt, re.S)[1]
    question, *previous = context.split("\n")
    a, b = re.findall(r"\[The Start of Assistant [AB]'s Next Reasoning Step\]\n(.*?)\n\[The End", prompt, re.S)
    return question, previous, a, b


def test_builtin_eft_with_ties_teaches_c_on_two_wrong_steps_in_the_tie_prompt():
    from openrlhf_psr.data.sft import builtin_sft
    from openrlhf_psr.judges.oracle import check_step

    plain = builtin_sft(n_ift=0, n_eft=6, seed=1)
    rows = builtin_sft(n_ift=0, n_eft=6, seed=1, ties=5)
    assert len(plain) == 12 and len(rows) == 12 + 10
    assert not any(TIE_OFFER in r["input"] for r in plain)
    assert all(TIE_OFFER in r["input"] for r in rows)  # every row in the prompt the tie judge reads
    # the right/wrong rows are the plain ones, only their prompt changed
    assert [r["output"] for r in rows[:12]] == [r["output"] for r in plain]
    ties = [r for r in rows if r["output"].endswith("[[C]]")]
    assert len(ties) == 10
    for row in ties:
        question, previous, a, b = _blocks(row["input"])
        assert a != b
        assert [check_step(question, previous, s).label for s in (a, b)] == ["wrong", "wrong"]
        assert "Neither step is better" in row["output"] and row["output"].count(": wrong.") == 2
        # exactly the text a tie judge sends for these steps
        assert Comparison(question, tuple(previous), a, b).prompt(tie=True) == row["input"]
    # both orders of every tie pair
    assert sorted(_blocks(r["input"])[2:] for r in ties) == sorted(_blocks(r["input"])[:1:-1] for r in ties)


def test_ties_is_an_eft_option_and_reaches_the_sft_data():
    from openrlhf_psr.cli.sft_data import build
    from openrlhf_psr.data.sources import EFT, PROBLEMS, SourceError, parse_source

    assert parse_source("builtin:arith?n=4&ties=3", EFT).get("ties") == 3
    with pytest.raises(SourceError, match="option ties is for EFT sources only"):
        parse_source("builtin:arith?n=4&ties=3", PROBLEMS)
    with pytest.raises(SourceError, match="ties=-1.*expected a count"):
        parse_source("builtin:arith?n=4&ties=-1", EFT)
    records = build([], ["builtin:arith?n=4&ties=3"])
    assert sum(r["output"].endswith("[[C]]") for r in records) == 6 and len(records) == 14


def test_the_recipes_judge_tie_reaches_the_evaluation_judges(tmp_path):
    from openrlhf_psr.cli.evaluate import _judge_settings
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import EvaluateConfig, load_recipe

    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", ["data.eval.judge_tie=true"])
    stages = {s.name: s for s in RecipeRun(recipe, runs_dir=tmp_path).plan()}
    config = EvaluateConfig(**stages["eval_m1"].config)
    assert _judge_settings("logit", config)["tie"] is True and _judge_settings("generative", config)["tie"] is True
    plain = EvaluateConfig(**{**stages["eval_m1"].config, "judge_tie": False})
    assert "tie" not in _judge_settings("logit", plain)


class CheckingLetters(Engine):
    """A judge engine that checks each step exactly (``judges.oracle.check_step``): the right step's letter
    likeliest; with two wrong steps, "C" when offered, else "A"."""

    tokenizer = CharTokenizer()

    def generate(self, requests):
        raise AssertionError("not asked to generate")

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        from openrlhf_psr.judges.oracle import check_step

        out = []
        for ids in prompts:
            question, previous, a, b = _blocks(self.tokenizer.decode(ids))
            right = [check_step(question, previous, s).label == "right" for s in (a, b)]
            best = "A" if right[0] else "B" if right[1] else "C"
            out.append([-0.1 if chr(t) == best else -5.0 - k for k, t in enumerate(token_ids)])
        return out


def test_evaluation_measures_how_often_a_tie_judge_calls_two_wrong_steps_a_tie():
    from openrlhf_psr.cli.evaluate import load_tie_pairs
    from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs
    from openrlhf_psr.eval.judge_accuracy import judge_accuracy, tie_rate
    from openrlhf_psr.judges.oracle import check_step

    spec = "builtin:arith?n=12&seed=1000&ops=2-3&max_value=50"
    ties, pairs = load_tie_pairs(spec), builtin_judge_pairs(12, 1000, parse_difficulty(spec))
    assert len(ties) == 12 and load_tie_pairs("prm800k:x.parquet?limit=3") == []
    for tie, pair in zip(ties, pairs, strict=True):  # the same problems and steps, the right one replaced
        assert (tie.question, tie.previous_steps, tie.better) == (pair.question, pair.previous_steps, pair.worse)
        steps = (tie.better, tie.worse)
        assert [check_step(tie.question, tie.previous_steps, s).label for s in steps] == ["wrong", "wrong"]
        assert tie.better != tie.worse
    judge = LogitJudge(engine=CheckingLetters(), chat_template=False, tie=True)
    assert judge_accuracy(judge, pairs)["accuracy"] == 1.0
    assert tie_rate(judge, ties) == {"tie_pairs": 12, "tie_rate": 1.0, "tie_pair_rate": 1.0}
    forced = LogitJudge(engine=CheckingLetters(), chat_template=False)
    assert tie_rate(forced, ties)["tie_rate"] == 0.0


def parse_difficulty(spec: str):
    from openrlhf_psr.data.sources import JUDGE_PAIRS, parse_source

    return parse_source(spec, JUDGE_PAIRS).difficulty()


@pytest.mark.parametrize("tie", [True, False])
def test_evaluate_writes_the_tie_rate_beside_judge_accuracy_when_asked(monkeypatch, tmp_path, tie):
    import json

    from openrlhf_psr.cli import evaluate
    from openrlhf_psr.registry import GENERATORS

    class Checking(CheckingLetters):
        max_model_len = 4096

        @classmethod
        def from_config(cls, model, **settings):
            return cls()

    monkeypatch.setitem(GENERATORS._items, "vllm", Checking)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["--model", str(model), "--out", str(tmp_path / "eval"), "--judge", "logit", "--chat-template", "off",
            "--judge-set", "builtin:arith?n=6&seed=1000", "--judge-tie", "on" if tie else "off"]  # fmt: skip
    assert evaluate.main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["judges"]["logit/builtin"]
    assert metrics["accuracy"] == 1.0
    if tie:
        assert (metrics["tie_pairs"], metrics["tie_rate"], metrics["tie_pair_rate"]) == (6, 1.0, 1.0)
    else:
        assert "tie_rate" not in metrics


def test_evaluate_shows_a_progress_bar_for_each_long_engine_call(monkeypatch, tmp_path):
    """Issue 13: while a stage runs the launcher shows its log's last line. An evaluation's greedy solutions and each
    judge set are one engine call apiece (minutes at 1,000 problems), and they ran without a bar, so the launcher
    showed a vLLM start-up line meanwhile; the engine now shows one for each such call."""
    from openrlhf_psr.cli import evaluate
    from openrlhf_psr.registry import GENERATORS

    seen = []

    class Recording(CheckingLetters):
        max_model_len = 4096

        @classmethod
        def from_config(cls, model, **settings):
            return cls()

        def generate(self, requests):
            seen.append(("solutions", self.progress))
            return [[Sample("Step 1: 1 + 1 = 2\nThe answer is \\boxed{2}", (1,), "stop")] for _ in requests]

        def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
            seen.append(("judge", self.progress))
            return super().next_token_logprobs(prompts, token_ids, affinity=affinity)

    monkeypatch.setitem(GENERATORS._items, "vllm", Recording)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["--model", str(model), "--out", str(tmp_path / "eval"), "--judge", "logit", "--chat-template", "off",
            "--benchmark", "arith?n=3&seed=7", "--judge-set", "builtin:arith?n=4&seed=1000"]  # fmt: skip
    assert evaluate.main(argv) == 0
    assert seen == [("solutions", True), ("judge", True)]
