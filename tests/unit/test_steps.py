"""The "Step n:" format: parsing, stop strings, candidate clean-up, final-step detection, boxed answers."""

from __future__ import annotations

import doctest

import pytest

from openrlhf_psr import steps
from openrlhf_psr.steps import (
    FinishReason,
    classify_finish,
    detect_repetition,
    extract_boxed,
    format_step,
    is_final_step,
    normalize_candidate,
    parse_steps,
    render_solution,
    step_stop_strings,
    strip_marker,
)

pytestmark = pytest.mark.unit


def _generate_until_stop(text: str, stops: list[str]) -> str:
    """What vLLM returns for a generation ``text`` with these stop strings (the stop string is not included)."""
    cuts = [k for k in (text.find(s) for s in stops) if k >= 0]
    return text[: min(cuts)] if cuts else text


# ---- rendering and parsing ---------------------------------------------------------------------------------------


def test_render_and_parse_round_trip() -> None:
    bodies = ["Let $x = 2$.", "Then\n$$x^{2} = 4$$", r"So the answer is $\boxed{4}$."]
    solution = render_solution([format_step(k + 1, b) for k, b in enumerate(bodies)])
    assert solution.startswith("Step 1: Let $x = 2$.\nStep 2: Then\n")
    assert parse_steps(solution) == bodies


def test_parse_ignores_wrong_numbering() -> None:
    assert parse_steps("Step 3: a\nStep 1: b\nStep 1: c\nStep 10: d") == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "marker",
    ["Step 2:", "Step 2.", "Step 2)", "Step 2 -", "**Step 2:**", "**Step 2**:", "**Step 2**", "## Step 2:", "step 2:"],
)
def test_parse_accepts_marker_variants(marker: str) -> None:
    assert parse_steps(f"Step 1: first\n{marker} second") == ["first", "second"]


def test_parse_marker_alone_on_its_line() -> None:
    assert parse_steps("### Step 1\nx = 1\n**Step 2**\nx = 2") == ["x = 1", "x = 2"]


def test_parse_first_step_without_marker() -> None:
    assert parse_steps("We start with x = 1.\nStep 2: Then y = 2.") == ["We start with x = 1.", "Then y = 2."]


def test_parse_drops_repeated_and_empty_steps() -> None:
    text = "Step 1: x = 1\nStep 2: y = 2\nStep 3: y  =  2\nStep 4:\nStep 5: y = 2\nStep 6: z = 3"
    assert parse_steps(text) == ["x = 1", "y = 2", "z = 3"]


def test_parse_does_not_split_on_prose_or_mid_line_mentions() -> None:
    text = "Step 1: Step 2 is to add.\nStep 2.5 liters remain, as in Step 1: above."
    assert parse_steps(text) == ["Step 2 is to add.\nStep 2.5 liters remain, as in Step 1: above."]


def test_strip_marker() -> None:
    assert strip_marker("  **Step 12:** x") == "x"
    assert strip_marker("x = Step") == "x = Step"


# ---- one generated step ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Step 5: x = 2\n\n", "Step 3: x = 2"),
        ("**Step 3:** x = 2", "Step 3: x = 2"),
        ("Step 3. x = 2", "Step 3: x = 2"),
        ("x = 2", "Step 3: x = 2"),
        ("\n  x = 2\n  y = 3  \n", "Step 3: x = 2\n  y = 3"),
        ("", "Step 3:"),
    ],
)
def test_normalize_candidate(raw: str, expected: str) -> None:
    assert normalize_candidate(raw, 3) == expected


@pytest.mark.parametrize(
    "continuation",
    ["\nStep 4: next", "\n\nStep 4: next", "\n**Step 4:** next", "\n## Step 4: next", " Step 4: next", "\nstep 4: n"],
)
def test_stop_strings_end_the_step_where_the_next_begins(continuation: str) -> None:
    stops = step_stop_strings()
    generated = "Step 3: We have\n$$x = 1$$ so y = 2." + continuation
    assert _generate_until_stop(generated, stops).rstrip() == "Step 3: We have\n$$x = 1$$ so y = 2."


def test_stop_strings_do_not_fire_on_the_candidates_own_marker_or_prose() -> None:
    stops = step_stop_strings()
    for generated in ["Step 3: x = 1", "**Step 3:** x = 1", "Step 3: the next step is to add.\nThus y = 2."]:
        assert _generate_until_stop(generated, stops) == generated


def test_stop_strings_respect_max_step() -> None:
    assert " Step 40:" in step_stop_strings() and " Step 41:" not in step_stop_strings()
    assert " Step 6:" not in step_stop_strings(max_step=5)
    assert len(set(step_stop_strings())) == len(step_stop_strings())


def test_classify_finish_from_vllm_fields() -> None:
    assert classify_finish("stop", "\nStep ") is FinishReason.STEP
    assert classify_finish("stop", None) is FinishReason.EOS
    assert classify_finish("stop", 151645) is FinishReason.EOS  # a stop token id such as <|im_end|>
    assert classify_finish("length", None) is FinishReason.LENGTH
    assert FinishReason.EOS == "eos" and FinishReason.STEP == "step" and FinishReason.LENGTH == "length"


@pytest.mark.parametrize(
    ("text", "finish", "final"),
    [
        (r"Step 4: The answer is $\boxed{\frac{1}{2}}$.", FinishReason.STEP, True),
        (r"Step 4: The answer is $\boxed{\frac{1}{2}", FinishReason.LENGTH, False),  # truncated inside the box
        ("Step 4: So we are done.", FinishReason.EOS, True),
        ("Step 4: So we are done.", "eos", True),
        ("Step 4: x = 1", FinishReason.STEP, False),
        ("Step 4: x = 1 and we put it in boxed form", FinishReason.LENGTH, False),
    ],
)
def test_is_final_step(text: str, finish: str, final: bool) -> None:
    assert is_final_step(text, finish) is final


# ---- answers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1}, finally \boxed{2}", "2"),
        (r"\fbox{7}", "7"),
        (r"\boxed {x+1}", "x+1"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),
        (r"\boxed{1} then \boxed{\frac{1}{2}", None),  # the last box is unclosed
        (r"\boxedx{3}", None),
        ("no answer", None),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text: str, answer: str | None) -> None:
    assert extract_boxed(text) == answer


def test_detect_repetition() -> None:
    assert detect_repetition(["Step 1: x = 2", "Step 2: y = 3", "Step 3:   x = 2 "])
    assert not detect_repetition(["Step 1: x = 2", "Step 2: y = 3", "Step 3: x = 3"])
    assert not detect_repetition(["Step 1: x = 2"])
    assert not detect_repetition(["Step 1:", "Step 2:"])  # empty steps are not a loop


def test_doctests() -> None:
    assert doctest.testmod(steps).failed == 0
