"""Issue 13's judge arms (oracle, random, likelihood) and the built-in task's difficulty knobs."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from openrlhf_psr.data.arith import Difficulty, make_problem, make_problems, trace_question
from openrlhf_psr.data.problems import Problem, load_problems
from openrlhf_psr.data.sft import corrupt_step
from openrlhf_psr.engines.base import Engine, Sample, UnsupportedByEngine
from openrlhf_psr.eval.builtin_judge import builtin_judge_pairs
from openrlhf_psr.eval.judge_accuracy import LabelledPair, judge_accuracy
from openrlhf_psr.judges.base import Comparison, JudgeContext, build_judge
from openrlhf_psr.judges.likelihood import LikelihoodJudge
from openrlhf_psr.judges.oracle import OracleJudge, arithmetic_claims, check_step, slips_by_operator
from openrlhf_psr.judges.random_judge import RandomJudge
from openrlhf_psr.registry import JUDGES
from openrlhf_psr.testing import CharTokenizer

pytestmark = pytest.mark.unit


def test_doctests():
    import doctest

    import openrlhf_psr.data.arith as arith
    import openrlhf_psr.judges.likelihood as likelihood
    import openrlhf_psr.judges.oracle as oracle
    import openrlhf_psr.judges.random_judge as random_judge

    for module in (arith, oracle, random_judge, likelihood):
        assert doctest.testmod(module).failed == 0, module.__name__


# -- difficulty knobs -------------------------------------------------------------------------------------------


def test_default_knobs_reproduce_the_original_problems_exactly():
    # digest of 1,800 problems as generated before the knobs existed (ids, questions, steps, answers)
    digest = hashlib.sha256()
    for seed in (0, 1, 7, 11, 1000, 7919):
        for index in range(300):
            p = make_problem(seed, index)
            digest.update(json.dumps([p.id, p.question, p.steps, p.answer]).encode())
    assert digest.hexdigest() == "7f3c2b7d93a5dabc2b24c7d6387a50ee9ff166591a565422e06869afb6e4d5d3"
    assert make_problems(5, seed=3) == make_problems(5, seed=3, difficulty=Difficulty())
    assert make_problem(3, 4, 2, 4) == make_problem(3, 4)  # the old positional min_ops/max_ops still work


def test_source_options_set_the_knobs_and_keep_plain_sources_unchanged():
    plain = load_problems("builtin:arith?seed=11", limit=6)
    assert [p.id for p in plain] == [f"arith-11-{i}" for i in range(6)]
    assert plain[0].question == make_problem(11, 0).question
    easy = load_problems("builtin:arith?seed=11&ops=2-3&max_value=50", limit=200)
    assert len({p.id for p in easy} & {p.id for p in load_problems("builtin:arith?seed=11", limit=200)}) == 0
    for p in easy:
        trace = trace_question(p.question)
        assert 2 <= len(p.reference_steps) <= 3 and max(trace.totals) <= 50 and str(trace.totals[-1]) == p.answer
    single = load_problems("builtin:arith?seed=2&ops=1&kinds=find&add=5-5", limit=20)
    assert all(p.question.count("finds 5 more") == 1 and len(p.reference_steps) == 1 for p in single)


def test_bad_source_options_are_one_line_errors_naming_the_source():
    with pytest.raises(ValueError, match=r"builtin:arith\?opz=2.*unknown option 'opz'.*did you mean 'ops'"):
        load_problems("builtin:arith?opz=2", limit=2)
    with pytest.raises(ValueError, match=r"ops='two'.*expected a number or a range"):
        load_problems("builtin:arith?ops=two", limit=2)
    with pytest.raises(ValueError, match=r"kinds=fly.*expected some of"):
        load_problems("builtin:arith?kinds=fly", limit=2)
    with pytest.raises(ValueError, match=r"ops=3-2"):
        Difficulty(min_ops=3, max_ops=2)


def test_harder_knobs_give_longer_problems_with_larger_numbers():
    hard = Difficulty.from_options({"ops": "4-6", "start": "100-500", "each": "10-30"})
    problems = make_problems(100, seed=5, difficulty=hard)
    assert all(4 <= len(p.steps) <= 6 for p in problems)
    assert sum(p.answer for p in problems) > 3 * sum(p.answer for p in make_problems(100, seed=5))
    assert Difficulty.from_options({"ops": hard.spelling().split("&")[0].split("=")[1]}).max_ops == 6


# -- oracle -----------------------------------------------------------------------------------------------------


def test_oracle_is_always_right_and_never_abstains_on_held_out_built_in_pairs():
    metrics = judge_accuracy(OracleJudge(), builtin_judge_pairs(400))
    assert metrics["accuracy"] == 1.0 and metrics["abstention_rate"] == 0.0 and metrics["consistency"] == 1.0
    strict = judge_accuracy(OracleJudge(decide_unknown=False), builtin_judge_pairs(200, seed=77))
    assert strict["accuracy"] == 1.0 and strict["abstention_rate"] == 0.0


def test_oracle_checks_pairs_of_other_difficulties_against_the_recomputed_question():
    rng = random.Random(0)
    pairs = []
    for p in make_problems(150, seed=9, difficulty=Difficulty.from_options({"ops": "3-6", "start": "50-300"})):
        k = rng.randrange(len(p.steps))
        pairs.append(LabelledPair(p.question, p.steps[:k], p.steps[k], corrupt_step(p.steps[k], rng)))
    assert judge_accuracy(OracleJudge(), pairs)["accuracy"] == 1.0


def test_every_reference_step_checks_right_in_place():
    for p in make_problems(300, seed=4):
        for k in range(len(p.steps)):
            assert check_step(p.question, p.steps[:k], p.steps[k]).label == "right", (p, k)


def test_oracle_catches_a_true_equation_on_the_wrong_numbers_and_a_step_that_makes_no_progress():
    p = make_problem(0, 0)  # Hugo has 25 coins, splits them into 5 boxes and keeps one (5), finds 17 more (22), ...
    assert trace_question(p.question).totals == (25, 5, 22, 11, 6)
    step1 = p.steps[0]
    assert check_step(p.question, (), step1).label == "right"
    wrong_numbers = "Step 1: One of 5 equal boxes holds 25 / 5 = 5 coins, so Hugo has 5 + 17 = 22 coins."
    assert check_step(p.question, (), wrong_numbers).label == "right"  # two operations in one step: fine
    wrong_numbers = "Step 1: One of 4 equal boxes holds 28 / 4 = 7 coins."  # true, but not this problem's numbers
    assert check_step(p.question, (), wrong_numbers).label == "wrong"
    coincidence = "Step 1: Hugo has 25 - 20 = 5 coins."  # the right total, but not by the problem's operation
    assert check_step(p.question, (), coincidence).label == "unknown"
    assert check_step(p.question, (step1,), step1.replace("Step 1", "Step 2")).label == "unknown"  # a repeat
    assert check_step(p.question, (), "Step 1: Let us read the problem carefully.").label == "unknown"
    [judgment] = OracleJudge().judge([Comparison(p.question, (), "Step 1: Let us think.", wrong_numbers)])
    assert judgment.verdict.winner == "A" and judgment.verdict.p_a == 1.0 and "false" not in judgment.raw
    [undecided] = OracleJudge(decide_unknown=False).judge([Comparison(p.question, (), "Step 1: Hm.", step1)])
    assert undecided.verdict.winner is None and undecided.verdict.p_a == 0.5


def test_oracle_as_a_generic_verifier_checks_claims_and_the_gold_answer():
    q = "Tom buys 3 boxes of 12 eggs and eats 5. How many are left?"
    good = "Step 1: He has 3 * 12 = 36 eggs, and 36 - 5 = 31 remain. The answer is \\boxed{31}."
    bad = "Step 1: He has 3 * 12 = 36 eggs, and 36 - 5 = 32 remain. The answer is \\boxed{32}."
    verdicts = OracleJudge().judge([Comparison(q, (), good, bad, gold="31"), Comparison(q, (), bad, good, "31")])
    assert [j.verdict.winner for j in verdicts] == ["A", "B"]
    both_right = OracleJudge().judge([Comparison(q, (), good, good.replace("Step 1: He", "Step 1: So he"))])
    assert both_right[0].verdict.winner is None
    # outside the built-in task, "its equations hold" does not beat "nothing to check" unless asked to
    vague = "Step 1: Count the eggs he has left."
    assert OracleJudge().judge([Comparison(q, (), good, vague, "31")])[0].verdict.winner is None
    assert OracleJudge(decide_unknown=True).judge([Comparison(q, (), good, vague, "31")])[0].verdict.winner == "A"
    assert OracleJudge().judge([Comparison(q, (), vague, bad, "31")])[0].verdict.winner is None
    assert check_step(q, (), "Step 1: 36 - 5 = 31, \\boxed{30}", gold="31").label == "wrong"
    assert check_step(q, (), "Step 1: total $1,200 / 4 = $300 each.").label == "right"
    assert [c.holds for c in arithmetic_claims("7 / 2 = 3.5; 10 / 3 = 3.3; 2 × 3 ÷ 4 = 1.5; 5 x 3 = 16")] == [
        True, True, True, False,
    ]  # fmt: skip


def test_slips_by_operator_counts_each_operation_once_per_claim_and_skips_what_it_cannot_read():
    texts = ["Step 1: 12 \\div 4 = 3 and 7 − 2 = 6", "Step 2: 6 \\cdot 2 = 12, 2 + 3 * 4 = 20",
             "Step 2: " + "1" * 5000 + " + 1 = 2", "eval('1+1') = 2"]  # fmt: skip
    right, high = {"claims": 1, "false": 0, "high": 0}, {"claims": 1, "false": 1, "high": 1}
    assert slips_by_operator(texts) == {"/": right, "-": high, "*": right, "chain": high}
    # a decimal rounded up (0.67 > 2/3) is right, not a high slip; a result below the true one is a low slip
    assert slips_by_operator(["2 / 3 = 0.67 and 10 / 4 = 2.6 and 9 - 4 = 4"]) == {
        "/": {"claims": 2, "false": 1, "high": 1}, "-": {"claims": 1, "false": 1, "high": 0}}  # fmt: skip


def test_oracle_never_evaluates_step_text():
    hostile = "Step 1: __import__('os').system('echo pwned') = 0; 2**10 = 1024; 1e9 * 1e9 = 1"
    assert arithmetic_claims(hostile) == []  # nothing there is a plain-number equation; nothing is run
    assert check_step("What?", (), hostile).label == "unknown"


@pytest.mark.parametrize(
    "hostile",
    [
        "Step 2: " + "1" * 5000 + " + 1 = 2",  # Fraction() of a 5,000-digit string raises (int-string limit)
        "Step 2: so the answer is \\boxed{1e30000000}.",  # Fraction("1e30000000") alone takes over 30 s
        "Step 2: 3 + 4 = " + "7" * 5000 + ". \\boxed{" + "9" * 5000 + "}",
    ],
    ids=["5000-digit-operand", "exponent-boxed", "5000-digit-result-and-box"],
)
def test_oracle_labels_hostile_numbers_unknown_or_wrong_instead_of_crashing_or_hanging(hostile):
    p = make_problem(0, 0)
    comparison = Comparison(p.question, (p.steps[0],), hostile, p.steps[1], str(p.answer))
    [judgment] = OracleJudge().judge([comparison])  # returns at once (a hang would time the suite out)
    assert judgment.verdict.winner == "B"  # the reference step beats whatever the hostile one is labelled


class BuiltinCandidates(Engine):
    """Candidates for the next step of a built-in problem: the reference step and two corruptions of it."""

    def __init__(self, problems):
        self.tokenizer = CharTokenizer()
        self.by_question = {p.question: p for p in problems}

    def generate(self, requests):
        out = []
        for r in requests:
            prefix = self.tokenizer.decode(r.prompt_token_ids)
            p = self.by_question[prefix.split("Problem: ", 1)[1].split("\n", 1)[0]]
            k = prefix.count("Step ") - 1
            rng = random.Random(k + 31 * len(prefix))
            texts = [corrupt_step(p.reference_steps[k], rng), p.reference_steps[k], corrupt_step(p.reference_steps[k],
                     rng)]  # fmt: skip
            final = k == len(p.reference_steps) - 1
            out.append([
                Sample(t, tuple(ord(c) for c in t) + ((0,) if final else tuple(ord(c) for c in "\nStep ")), "stop",
                       None if final else "\nStep ")
                for t in texts
            ][: r.n])  # fmt: skip
        return out


def test_a_search_judged_by_the_oracle_writes_pairs_whose_chosen_step_is_the_correct_one(tmp_path):
    from openrlhf_psr.io import ShardStore
    from openrlhf_psr.search import SearchConfig, StepSearch

    problems = load_problems("builtin:arith?seed=21&ops=2-3", limit=6)
    summary = StepSearch(BuiltinCandidates(problems), OracleJudge(), SearchConfig(width=3, max_rounds=8)).run(
        problems, tmp_path, progress=False
    )
    pairs = list(ShardStore(tmp_path).read("pairs"))
    assert summary["accuracy"] == 1.0 and len(pairs) == sum(len(p.reference_steps) for p in problems)
    for pair in pairs:
        prev = tuple(s.strip() for s in pair["prefix_steps"])
        assert check_step(pair["question"], prev, pair["chosen"].strip()).label == "right"
        assert check_step(pair["question"], prev, pair["rejected"].strip()).label == "wrong"


# -- random -----------------------------------------------------------------------------------------------------


def _comparisons(n=300):
    out = []
    for p in builtin_judge_pairs(n, seed=5):
        out += [Comparison(p.question, p.previous_steps, p.better, p.worse),
                Comparison(p.question, p.previous_steps, p.worse, p.better)]  # fmt: skip
    return out


def test_random_judge_is_deterministic_per_comparison_whatever_the_batching():
    comparisons = _comparisons(100)
    batch = [j.verdict.winner for j in RandomJudge(seed=3).judge(comparisons)]
    one_by_one = [RandomJudge(seed=3).judge([c])[0].verdict.winner for c in comparisons]
    shuffled = list(range(len(comparisons)))
    random.Random(0).shuffle(shuffled)
    again = RandomJudge(seed=3).judge([comparisons[k] for k in shuffled])
    assert batch == one_by_one == [w for _, w in sorted(zip(shuffled, [j.verdict.winner for j in again], strict=True))]
    other = [j.verdict.winner for j in RandomJudge(seed=4).judge(comparisons)]
    assert 0.3 < sum(a != b for a, b in zip(batch, other, strict=True)) / len(batch) < 0.7


def test_random_judge_agrees_with_the_truth_about_half_the_time_and_names_one_candidate_in_both_orders():
    metrics = judge_accuracy(RandomJudge(seed=0), builtin_judge_pairs(400, seed=5))
    assert 0.42 < metrics["accuracy"] < 0.58 and metrics["consistency"] == 1.0 and metrics["abstention_rate"] == 0
    loose = judge_accuracy(RandomJudge(seed=0, consistent=False), builtin_judge_pairs(400, seed=5))
    assert 0.42 < loose["accuracy"] < 0.58 and 0.35 < loose["consistency"] < 0.65
    [same] = RandomJudge().judge([Comparison("q", (), "x", "x")])
    assert same.verdict.winner is None


# -- likelihood (logic, with a scripted scorer; the real vLLM engine is in integration) ---------------------------


class ScoringEngine(Engine):
    """Scores continuations by a rule (default: -0.1 per token when the text holds "right", else -1), counting
    calls and the items scored."""

    def __init__(self, per_token=None):
        self.tokenizer = CharTokenizer()
        self.calls, self.items = 0, []
        self.per_token = per_token or (lambda text: [-0.1 if "right" in text else -1.0] * len(text))

    def generate(self, requests):
        raise AssertionError("the likelihood judge must not generate")

    def continuation_logprobs(self, items):
        self.calls += 1
        self.items += items
        return [self.per_token("".join(chr(i) for i in cont)) for _, cont in items]


def test_likelihood_judge_prefers_the_likelier_step_in_one_scoring_call_and_caches():
    engine = ScoringEngine()
    judge = LikelihoodJudge(engine)
    comparisons = [Comparison("q", ("Step 1: a",), "Step 2: right", "Step 2: wrong one"),
                   Comparison("q", ("Step 1: a",), "Step 2: wrong one", "Step 2: right")]  # fmt: skip
    verdicts = [j.verdict for j in judge.judge(comparisons)]
    assert [v.winner for v in verdicts] == ["A", "B"] and verdicts[0].p_a > 0.7 and verdicts[1].p_a < 0.3
    assert engine.calls == 1 and len(engine.items) == 2  # each distinct candidate scored once
    context, continuation = engine.items[0]
    assert "".join(map(chr, context)).endswith("Problem: q\nStep 1: a\n")  # step prompt + accepted steps
    assert "".join(map(chr, continuation)) == "Step 2: right"
    judge.judge(comparisons)
    assert engine.calls == 1  # cached


def test_likelihood_judge_length_normalises_by_default_and_can_sum():
    engine = ScoringEngine(lambda text: [-1.0] * len(text))
    short, long = "Step 2: ab", "Step 2: abcdef"
    [mean] = LikelihoodJudge(engine).judge([Comparison("q", (), short, long)])
    [total] = LikelihoodJudge(engine, score="sum").judge([Comparison("q", (), short, long)])
    assert mean.verdict.winner is None and total.verdict.winner == "A"


def test_implicit_reward_compares_against_the_reference_engine():
    policy = ScoringEngine(lambda text: [-1.0] * len(text))
    reference = ScoringEngine(lambda text: [-2.0 if "b" in text else -0.5] * len(text))
    judge = LikelihoodJudge(policy, score="implicit", reference_engine=reference, beta=0.5)
    [v] = judge.judge([Comparison("q", (), "Step 1: a", "Step 1: b")])
    assert v.verdict.winner == "B" and reference.calls == 1
    with pytest.raises(ValueError, match="needs a reference model"):
        LikelihoodJudge(policy, score="implicit")


def test_likelihood_judge_on_an_engine_that_cannot_score_is_a_clear_error():
    class GenerateOnly(Engine):
        tokenizer = ScoringEngine().tokenizer

        def generate(self, requests):
            return []

    judge = build_judge("likelihood", JudgeContext(model="m", engine=GenerateOnly()))
    with pytest.raises(UnsupportedByEngine, match="GenerateOnly cannot score.*'vllm' generator"):
        judge.judge([Comparison("q", (), "a", "b")])
    with pytest.raises(ValueError, match="score 'best'"):
        build_judge("likelihood", JudgeContext(model="m", engine=GenerateOnly()), score="best")


# -- registry and recipes ---------------------------------------------------------------------------------------


def test_the_arms_are_registered_and_recipes_can_name_them(tmp_path):
    import yaml

    from openrlhf_psr.recipe import load_recipe

    assert {"oracle", "random", "likelihood"} <= set(JUDGES.names())
    for name, settings in (("oracle", {}), ("random", {"seed": 7}), ("likelihood", {"score": "sum"})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "model": "default", "data": {"eval": {"benchmarks": []}},
                                        "psr": {"judge": {"name": name, "settings": settings}}}))  # fmt: skip
        recipe = load_recipe(path)
        judge = build_judge(recipe.psr.judge.name, JudgeContext(model="default", engine=ScoringEngine()),
                            **recipe.psr.judge.settings)  # fmt: skip
        assert judge.name == name
    assert build_judge("random", JudgeContext(model="default"), seed=7).seed == 7


def test_problem_ids_of_the_built_in_task_stay_stable():
    assert [p.id for p in load_problems("builtin:arith", limit=3)] == ["arith-0-0", "arith-0-1", "arith-0-2"]
    assert isinstance(load_problems("builtin:arith", limit=1)[0], Problem)
