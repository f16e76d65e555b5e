"""One rendering of prompts for every stage, checked with the real SmolLM2 tokenizer and upstream's own SFT dataset:
the prompt ids SFT trains on are the ids the search, its judge and the evaluation send, in chat and raw format; and
accepted steps end on a token boundary at or before the next step's marker (no dangling ``" Step"``).

Light: a tokenizer, upstream's ``SFTDataset`` and a recording stand-in engine; no vLLM, DeepSpeed or training.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_psr.engines.base import Engine, Sample
from openrlhf_psr.search import SearchConfig, StepSearch, trim_step

pytestmark = pytest.mark.integration
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


class RecordingEngine(Engine):
    """Records every prompt it is sent and answers each with one final step (boxed, then EOS)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts: list[list[int]] = []

    def generate(self, requests):
        out = []
        for r in requests:
            self.prompts.append(list(r.prompt_token_ids))
            ids = self.tokenizer.encode("Step 1: \\boxed{1}", add_special_tokens=False) + [self.tokenizer.eos_token_id]
            out.append([Sample("Step 1: \\boxed{1}", tuple(ids), "stop", None)] * r.n)
        return out


class ExplainingEngine(RecordingEngine):
    """Writes ``answer`` as vLLM returns it under the stop string ``[[`` (the text before it) and records the prompts
    whose next-token log-probs it is asked for."""

    def __init__(self, tokenizer, answer: str):
        super().__init__(tokenizer)
        self.answer, self.scored = answer, []

    def generate(self, requests):
        text = self.answer.split("[[")[0]
        return [[Sample(text, tuple(self.tokenizer.encode(text, add_special_tokens=False)), "stop", "[[")]] * len(
            requests
        )

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        self.scored += [list(p) for p in prompts]
        return [[-1.0, -1.0] for _ in prompts]


def _upstream_sft_dataset(command: list[str], tokenizer):
    """Upstream ``SFTDataset`` built exactly as ``openrlhf.cli.train_sft`` builds it from this command line."""
    from datasets import Dataset
    from openrlhf.datasets import SFTDataset
    from openrlhf.utils.config import hierarchize

    from openrlhf_psr.cli.train_step_dpo import upstream_parser
    from openrlhf_psr.launcher import _resolve_model_flags

    argv = _resolve_model_flags(command)
    argv = argv[argv.index("openrlhf.cli.train_sft") + 1 :]
    args = hierarchize(upstream_parser("openrlhf.cli.train_sft").parse_args(argv))
    if args.data.input_template and "{}" not in args.data.input_template:  # upstream's own post-parse rule
        args.data.input_template = None
    rows = [json.loads(line) for line in Path(args.data.dataset).read_text().splitlines()]
    dataset = SFTDataset(
        Dataset.from_list(rows),
        tokenizer,
        args.data.max_len,
        SimpleNamespace(args=args),
        input_template=args.data.input_template,
        num_processors=1,
    )
    return rows, dataset


@pytest.mark.parametrize("chat_template", [False, True], ids=["raw", "chat"])
def test_sft_trains_exactly_the_prompt_ids_that_search_judges_and_evaluation_send(tmp_path, tokenizer, chat_template):
    from openrlhf_psr.cli import sft_data
    from openrlhf_psr.data.problems import Problem
    from openrlhf_psr.eval.generate import greedy_solutions
    from openrlhf_psr.judges.generative import GenerativeJudge
    from openrlhf_psr.judges.logit import LogitJudge
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import load_recipe

    overrides = [
        f"psr.chat_template={str(chat_template).lower()}",
        'data.ift=["builtin:arith?n=6"]',
        'data.eft=["builtin:arith?n=3"]',
    ]
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", overrides), runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    data_cmd = stages["sft_data"].command
    assert sft_data.main(data_cmd[data_cmd.index("openrlhf_psr.cli.sft_data") + 1 :]) == 0
    rows, dataset = _upstream_sft_dataset(stages["sft"].command, tokenizer)
    assert len(dataset) == len(rows) == 6 + 2 * 3  # nothing filtered out

    search_chat = stages["iter_1/search"].config["chat_template"]
    eval_chat = stages["eval_m0"].config["chat_template"]
    assert search_chat == eval_chat == chat_template
    for k, row in enumerate(rows):
        input_ids, _, loss_mask = dataset[k]
        ids = input_ids[0].tolist()
        n_prompt = dataset.prompt_ids_lens[k]
        trained_prompt = ids[:n_prompt]
        assert loss_mask[0, : n_prompt - 1].sum() == 0 and loss_mask[0, n_prompt - 1 : -1].all()
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[-2:-1]).strip()  # no stray " " before EOS
        if row["kind"] == "ift":
            question = row["input"].split("\n\nProblem: ", 1)[1]
            search_engine, eval_engine = RecordingEngine(tokenizer), RecordingEngine(tokenizer)
            config = SearchConfig(width=2, max_rounds=1, chat_template=search_chat)
            problems = [Problem("p", question, None)]
            StepSearch(search_engine, None, config).run(problems, tmp_path / f"s{k}", progress=False)
            greedy_solutions(eval_engine, problems, chat_template=eval_chat)
            assert trained_prompt == search_engine.prompts[0] == eval_engine.prompts[0], row["input"]
        else:
            judge_engine = RecordingEngine(tokenizer)
            comparison = SimpleNamespace(prompt=lambda row=row: row["input"], step_a="a", step_b="b")
            GenerativeJudge(judge_engine, chat_template=search_chat).judge([comparison])
            assert trained_prompt == judge_engine.prompts[0], row["input"]
            # the logit judge that writes its check first reads the verdict exactly where SFT trained the letter
            explaining = ExplainingEngine(tokenizer, row["output"])
            judge = LogitJudge(engine=explaining, chat_template=search_chat, reason_tokens=96)
            judge.judge([SimpleNamespace(prompt=comparison.prompt, question="q")])
            (read_at,) = explaining.scored
            assert ids[: len(read_at)] == read_at and ids[len(read_at)] in judge.verdict_ids, row["output"]
            assert tokenizer.decode([ids[len(read_at)]]) == row["output"][-3]
        if not chat_template:
            assert tokenizer.decode(trained_prompt).endswith("\n")  # raw: the answer starts at a line start


def _vllm_like(tokenizer, generated: str, stop: str) -> Sample:
    """What vLLM returns when ``generated`` (which contains ``stop``) is cut at the stop string: the text before it,
    and the token ids up to the token that completed it."""
    ids = tokenizer.encode(generated, add_special_tokens=False)
    end = generated.index(stop) + len(stop)
    n = next(m for m in range(1, len(ids) + 1) if len(tokenizer.decode(ids[:m])) >= end)
    return Sample(generated[: generated.index(stop)], tuple(ids[:n]), "stop", stop)


def test_a_step_ending_at_an_inline_marker_round_trips_without_the_marker(tokenizer):
    step = trim_step(tokenizer, _vllm_like(tokenizer, "Step 1: He has 3 apples. Step 2: He eats one.", " Step 2:"))
    assert step.text == "Step 1: He has 3 apples." and not step.final
    assert tokenizer.decode(step.token_ids) == step.text
    assert step.token_ids == tokenizer.encode(step.text, add_special_tokens=False)  # a token boundary


def test_a_step_ending_at_a_newline_marker_keeps_its_newline(tokenizer):
    step = trim_step(tokenizer, _vllm_like(tokenizer, "Step 1: He has 3 apples.\nStep 2: He eats one.", "\nStep "))
    assert step.text == "Step 1: He has 3 apples.\n" and tokenizer.decode(step.token_ids) == step.text
    final = trim_step(tokenizer, _vllm_like(tokenizer, "Step 2: So $\\boxed{2}$. Step 3: done", " Step 3:"))
    assert final.final and final.text == "Step 2: So $\\boxed{2}$."
    assert final.token_ids[-1] == tokenizer.eos_token_id and tokenizer.decode(final.token_ids[:-1]) == final.text


class TwoAnswerEngine(RecordingEngine):
    """Two different final candidates per step request (so the search has something to judge)."""

    def generate(self, requests):
        out = []
        for r in requests:
            self.prompts.append(list(r.prompt_token_ids))
            texts = [f"Step 1: \\boxed{{{k}}}" for k in range(r.n)]
            eos = [self.tokenizer.eos_token_id]
            out.append([Sample(t, tuple(self.tokenizer.encode(t, add_special_tokens=False) + eos), "stop", None)
                        for t in texts])  # fmt: skip
        return out


@pytest.mark.parametrize("chat_template", [False, True], ids=["raw", "chat"])
def test_evaluation_judges_and_test_time_scaling_follow_the_recipe_format(tmp_path, tokenizer, monkeypatch,
                                                                         chat_template):  # fmt: skip
    from openrlhf_psr.cli import evaluate
    from openrlhf_psr.engines import vllm_local
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import load_recipe

    engine = TwoAnswerEngine(tokenizer)

    class Generator:  # the `vllm` generator plugin, as evaluation builds it (registry -> from_config)
        @classmethod
        def from_config(cls, model, **settings):
            return engine

    monkeypatch.setattr(vllm_local, "VLLMLocalEngine", Generator)
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", [f"psr.chat_template={str(chat_template).lower()}",
                                                     'data.eval.judges=["generative"]'])  # fmt: skip
    stage = RecipeRun(recipe, runs_dir=tmp_path).plan()[0]  # eval_m0, as the launcher runs it
    stage.write_config()
    command = stage.command
    argv = command[command.index("openrlhf_psr.cli.evaluate") + 1 :]
    argv += ["--tts-benchmark", "arith", "--tts-width", "2", "--tts-max-rounds", "1"]  # the default TTS judge
    assert evaluate.main(argv) == 0
    texts = [tokenizer.decode(ids) for ids in engine.prompts]
    judge_prompts = [t for t in texts if "[The Start of Assistant A's Next Reasoning Step]" in t]
    assert len(judge_prompts) > 2 * 12  # the 12 judge-set pairs in both orders, and the test-time search's judge
    assert all(("<|im_start|>" in t) == chat_template for t in texts)
