"""The paper's prompts: verbatim text, the right fields, and safe rendering."""

from __future__ import annotations

import doctest
import hashlib
import string

import pytest

from openrlhf_psr import prompts
from openrlhf_psr.prompts import (
    JUDGE_PROMPT,
    SEGMENT_PROMPT,
    SRLM_SCORE_PROMPT,
    STEP_PROMPT,
    render_judge_prompt,
    render_segment_prompt,
    render_srlm_prompt,
    render_step_prompt,
)

pytestmark = pytest.mark.unit

# sha256 of the three templates, checked character for character against the appendix text in SPEC.md when they
# were written. Any edit (a "fixed" typo, a changed newline) changes what the models are trained on.
VERBATIM_SHA256 = {
    "STEP_PROMPT": "c4098b4f1c35540ad91b4d1894ccfe29fca495729aa5ccb612fbd0f8781a1941",
    "SEGMENT_PROMPT": "65b4f47265c554308794f6991b4504c63cd0d7d5d5dcdc18bd818bec86e47c85",
    "JUDGE_PROMPT": "0e7cda7e4d71c655cd8850a71424bf95c14ad84f273256819a7df4f9185454c2",
}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize("name", sorted(VERBATIM_SHA256))
def test_paper_prompts_are_verbatim(name: str) -> None:
    assert hashlib.sha256(getattr(prompts, name).encode()).hexdigest() == VERBATIM_SHA256[name]


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        (STEP_PROMPT, {"problem"}),
        (SEGMENT_PROMPT, {"question", "solution"}),
        (JUDGE_PROMPT, {"question_and_previous_steps", "step_a", "step_b"}),
        (SRLM_SCORE_PROMPT, {"question", "solution"}),
    ],
)
def test_templates_have_exactly_their_fields(template: str, fields: set[str]) -> None:
    assert _fields(template) == fields


def test_step_prompt_layout_and_literal_braces() -> None:
    problem = r"Compute $\frac{1}{2} + x^{2}$ where {step_a} is not a field."
    p = render_step_prompt("\n" + problem + "\n")
    assert p.startswith("Let's think step by step")
    assert p.endswith("\n\nProblem: " + problem)


def test_judge_prompt_context_is_problem_then_previous_steps_one_per_line() -> None:
    p = render_judge_prompt("What is 2+2?", ["Step 1: 2+2 = 4.", "Step 2: Check."], "Step 3: A", "Step 3: B")
    context = "What is 2+2?\nStep 1: 2+2 = 4.\nStep 2: Check."
    assert f"[Question and Intermediate Reasoning Steps Provided] {context}\n\n" in p
    assert "[The Start of Assistant A's Next Reasoning Step]\nStep 3: A\n[The End of Assistant A's" in p
    assert "[The Start of Assistant B's Next Reasoning Step]\nStep 3: B\n[The End of Assistant B's" in p
    assert p.index("Step 3: A") < p.index("Step 3: B")


def test_judge_prompt_without_previous_steps_is_the_problem_alone() -> None:
    p = render_judge_prompt("Q?", [], "x", "y")
    assert "[Question and Intermediate Reasoning Steps Provided] Q?\n\n[The Start of Assistant A's" in p


def test_field_values_cannot_inject_into_later_fields() -> None:
    p = render_judge_prompt("{step_b}", [], "first", "second")
    assert "Provided] {step_b}\n" in p
    assert p.count("second") == 1


def test_segment_prompt_layout() -> None:
    p = render_segment_prompt("Q?", "Since x = 1, $\\boxed{1}$.")
    assert "[The Start of Question Provided] Q?\n[The End of Question Provided]\n\n" in p
    assert p.endswith("[The Start of Solution Provided] Since x = 1, $\\boxed{1}$.\n[The End of Solution Provided]")


def test_srlm_prompt_is_additive_five_points_and_asks_for_score() -> None:
    p = render_srlm_prompt("Q?", "Step 1: $\\boxed{3}$")
    assert "additive 5-point" in p
    rubric = p[: p.index("[The Start of Problem]")]
    verbs = [line.split()[1] for line in rubric.splitlines() if line.startswith("- ")]
    assert verbs == ["Add", "Add", "Award", "Grant", "Bestow"]
    assert p.rstrip().endswith('"Score: <points>"')
    assert p.index("Q?") < p.index("Step 1: $\\boxed{3}$") < p.index("Score: <points>")


def test_doctests() -> None:
    assert doctest.testmod(prompts).failed == 0


class _CharTokenizer:
    """One token per character (id = code point + 10); ``<s>`` (id 1) and ``</s>`` (id 2) are special tokens."""

    chat_template = None
    bos_token, bos_token_id, eos_token, eos_token_id = "<s>", 1, "</s>", 2

    def __init__(self, adds_bos: bool):
        self.adds_bos = adds_bos

    def encode(self, text, add_special_tokens=True):
        ids, k = [], 0
        while k < len(text):
            special = next((t for t in ("<s>", "</s>") if text.startswith(t, k)), None)
            ids.append({"<s>": 1, "</s>": 2}[special] if special else ord(text[k]) + 10)
            k += len(special) if special else 1
        return ([1] if add_special_tokens and self.adds_bos else []) + ids


@pytest.mark.parametrize("adds_bos", [False, True])
def test_raw_rendering_ends_at_a_line_start_and_keeps_the_tokenizers_bos(adds_bos) -> None:
    tok = _CharTokenizer(adds_bos)
    user = prompts.render_step_prompt("What is 1+1?")
    text = prompts.render_prompt(tok, user, chat_template=False)
    assert text == ("<s>" if adds_bos else "") + user + "\n"  # the model writes "Step 1:" at a line start
    # the ids are the tokenizer's own encoding (BOS included when it adds one), and SFT's: text without specials
    assert (
        prompts.prompt_token_ids(tok, user, chat_template=False)
        == tok.encode(user + "\n")
        == tok.encode(text, add_special_tokens=False)
    )
    assert prompts.prompt_token_ids(tok, user, chat_template=True) == tok.encode(user + "\n")  # no template: raw
    row = prompts.render_sft_row(tok, user, "Step 1: $\\boxed{2}$", chat_template=False)
    assert row == {"prompt": text, "response": "Step 1: $\\boxed{2}$</s>"}  # EOS as text: no " " before it
