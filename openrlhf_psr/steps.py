r"""The ``Step n:`` solution format: render, parse, stop strings, finished or not, the boxed answer.

A solution is a list of steps, each one line-initial ``Step n: <text>`` (the text may span several lines), joined
with ``"\n"``. The step-wise search generates **one step at a time** after the accepted prefix, so this module also
decides where a freshly generated step ends (:func:`step_stop_strings`), how it reads with its number fixed
(:func:`normalize_candidate`) and whether it ends the solution (:func:`is_final_step`).

Parsing is lenient because models (and the strong model that segments IFT data) drift from the format: wrong
numbering, ``**Step 2:**`` markdown, ``Step 2.`` separators, a first step without a marker, repeated steps.
Numbers written by the model are never trusted: :func:`parse_steps` ignores them, and the search compares candidates
by their content without marker (:func:`strip_marker`) and shows the judge every step renumbered by position
(:func:`normalize_candidate`). An accepted step's tokens stay exactly as the model generated them (the policy's
prefix and the DPO pair are the model's own tokens), so a wrong number the model wrote stays in those tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum

__all__ = [
    "FinishReason",
    "classify_finish",
    "detect_repetition",
    "extract_boxed",
    "format_step",
    "is_final_step",
    "normalize_candidate",
    "parse_steps",
    "render_solution",
    "step_stop_strings",
    "strip_marker",
]

STEP_SEPARATOR = "\n"


class FinishReason(str, Enum):
    """Why the generation of one candidate step ended.

    A ``str`` enum, so records can store and compare the plain strings (``FinishReason.EOS == "eos"``,
    ``str(FinishReason.EOS) == "eos"``). Not ``enum.StrEnum``: that is Python 3.11+, and the ``gpu`` extra
    supports 3.10 as OpenRLHF does.
    """

    STEP = "step"  # hit a next-step stop string: the step is complete and the solution goes on
    EOS = "eos"  # the model ended its answer (EOS or an end-of-turn stop token): the solution is over
    LENGTH = "length"  # ran into max_tokens_per_step: the step is truncated

    def __str__(self) -> str:  # the value, as StrEnum gives it (records store "eos", not "FinishReason.EOS")
        return self.value

    __format__ = str.__format__


# A line-initial step marker, in the variants models write: "Step 2:", "Step 2.", "Step 2)", "Step 2 -",
# "**Step 2:**", "**Step 2**:", "## Step 2:", "Step 2" alone on its line; case-insensitive. "Step 2 is ..." (no
# separator) is prose, not a marker, and "Step 2.5" is a number, not "Step 2." followed by "5".
_SEP = r"(?:[:：)\-–—]|\.(?!\d))"
_EMPH = r"[*_]{1,2}"
_MARKER_RE = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*)?(?:{_EMPH}[ \t]*)?step[ \t]*(?P<num>\d+)"
    rf"(?:[ \t]*{_SEP}[ \t]*(?:{_EMPH})?|{_EMPH}[ \t]*(?:{_SEP})?|[ \t]*(?=\r?\n|$))[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)

# \boxed{ or \fbox{, not \boxedfoo{; whitespace before the brace is legal LaTeX.
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")


def _squash(text: str) -> str:
    """Whitespace-normalised text: runs of whitespace become one space, ends stripped."""
    return " ".join(text.split())


def format_step(n: int, text: str) -> str:
    """Render one step with its marker.

    >>> format_step(3, "x = 2")
    'Step 3: x = 2'
    """
    return f"Step {n}: {text.lstrip()}"


def render_solution(steps: Sequence[str]) -> str:
    """Join rendered steps into a solution, one step per line.

    >>> render_solution(["Step 1: a", "Step 2: b"])
    'Step 1: a\\nStep 2: b'
    """
    return STEP_SEPARATOR.join(steps)


def step_stop_strings(max_step: int = 40) -> list[str]:
    """Stop strings that end one step at the point where the model starts writing the next one.

    Two families:

    - newline-anchored markers, ``"\\nStep "`` and its markdown variants (``"\\n**Step "``, ``"\\n## Step "``,
      ...), which catch the format the prompt asks for whatever number the model writes;
    - inline numbered markers ``" Step k:"`` for k in 2..max_step, for models that continue with the next step on
      the same line. They need the number and the colon so that prose such as "the next step is" does not stop.

    The leading newline is what keeps a candidate that opens with its own ``Step l:`` marker from stopping at
    once, so every prompt ends at a line start: the chat template's assistant header, or in raw format the policy
    prompt's final newline (:data:`openrlhf_psr.prompts.RAW_PROMPT_END`), and each accepted non-final step keeps
    its ``"\\n"`` separator. A model that still opens with its own marker after a blank line (``"\\nStep 1:"``)
    or inline after the previous step (``" Step 2:"``) matches at its first character; the search resumes such a
    candidate after that marker. vLLM strips the matched stop string from
    the text (its token ids run through it; the search cuts them at a token boundary at or before the separator),
    so a step never contains the next marker.

    >>> stops = step_stop_strings(3)
    >>> "\\nStep " in stops and "\\n**Step " in stops and " Step 3:" in stops
    True
    >>> any("Step 4" in s for s in stops)
    False
    """
    anchored = [
        "\nStep ",
        "\nstep ",
        "\nSTEP ",
        "\n**Step ",
        "\n*Step ",
        "\n__Step ",
        "\n# Step ",
        "\n## Step ",
        "\n### Step ",
        "\n#### Step ",
    ]
    inline = [f" Step {k}:" for k in range(2, max_step + 1)]
    return anchored + inline


def strip_marker(text: str) -> str:
    """The step's text without its leading ``Step n:`` marker(s) and surrounding whitespace.

    >>> strip_marker("**Step 7:** Let $x=1$.")
    'Let $x=1$.'
    >>> strip_marker("Step 2. Step 2: twice")
    'twice'
    >>> strip_marker("Step 2 is to add.")
    'Step 2 is to add.'
    """
    body = text.strip()
    while (m := _MARKER_RE.match(body)) is not None:
        body = body[m.end() :].strip()
    return body


def parse_steps(text: str) -> list[str]:
    """Split a solution into step texts (markers removed), tolerant of the ways models break the format.

    - Markers are recognised at line starts in the variants of :func:`strip_marker`; their numbers are ignored, so
      wrong or repeated numbering does not matter (renumber with :func:`format_step`).
    - Text before the first marker is the first step (a model that forgets ``Step 1:``).
    - Empty steps are dropped, and so is a step that repeats an earlier one verbatim after whitespace
      normalisation (degenerate loops), keeping the first occurrence.

    >>> parse_steps("Step 1: a\\nStep 1: b\\n**Step 5:** c")
    ['a', 'b', 'c']
    >>> parse_steps("Let x = 1.\\nStep 2. So y = 2.\\nStep 3: So y = 2.")
    ['Let x = 1.', 'So y = 2.']
    >>> parse_steps("Step 1: first line\\nsecond line\\n## Step 2\\n$\\\\boxed{3}$")
    ['first line\\nsecond line', '$\\\\boxed{3}$']
    """
    matches = list(_MARKER_RE.finditer(text))
    bounds = [0] + [m.start() for m in matches] + [len(text)]
    starts = [0] + [m.end() for m in matches]
    steps: list[str] = []
    seen: set[str] = set()
    for start, end in zip(starts, bounds[1:], strict=True):
        body = text[start:end].strip()
        key = _squash(body)
        if not key or key in seen:
            continue
        seen.add(key)
        steps.append(body)
    return steps


def normalize_candidate(text: str, step_no: int) -> str:
    """Clean a freshly generated candidate step and give it the right ``Step {step_no}: `` marker.

    Whatever marker the model wrote (any number, bold, none) is replaced; the content is kept as written apart
    from surrounding whitespace. An empty generation becomes the bare marker ``"Step n:"``.

    >>> normalize_candidate("Step 9: x = 2\\n\\n", 3)
    'Step 3: x = 2'
    >>> normalize_candidate("**Step 3:** x = 2", 3)
    'Step 3: x = 2'
    >>> normalize_candidate(" x = 2", 1)
    'Step 1: x = 2'
    >>> normalize_candidate("", 2)
    'Step 2:'
    """
    return format_step(step_no, strip_marker(text)).rstrip()


def classify_finish(finish_reason: str | None, stop_reason: int | str | None = None) -> FinishReason:
    """Map a vLLM ``CompletionOutput``'s ``finish_reason`` / ``stop_reason`` to a :class:`FinishReason`.

    vLLM reports ``"length"`` for max_tokens, and ``"stop"`` with ``stop_reason`` the matched stop string (a str:
    the next-step marker), a stop token id (an int: an end-of-turn token) or ``None`` (the EOS token).

    >>> classify_finish("stop", "\\nStep ")
    <FinishReason.STEP: 'step'>
    >>> classify_finish("stop", None), classify_finish("stop", 151645), classify_finish("length", None)
    (<FinishReason.EOS: 'eos'>, <FinishReason.EOS: 'eos'>, <FinishReason.LENGTH: 'length'>)
    """
    if finish_reason == "length":
        return FinishReason.LENGTH
    if isinstance(stop_reason, str):
        return FinishReason.STEP
    return FinishReason.EOS


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` or ``\fbox{...}``, with nested braces, or ``None``.

    As in the Qwen2.5-Math harness, only the last box counts; if it is not closed (a truncated step) the result is
    ``None`` rather than an earlier box. Escaped braces ``\{`` ``\}`` do not count towards nesting.

    >>> extract_boxed(r"so $\boxed{\frac{1}{2}}$")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed{1} then \fbox{\{a, b\}}")
    '\\{a, b\\}'
    >>> extract_boxed(r"\boxed{\frac{1}{2}") is None, extract_boxed("no box") is None
    (True, True)
    """
    opens = list(_BOXED_RE.finditer(text))
    if not opens:
        return None
    start = opens[-1].end()
    depth = 1
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character, e.g. \{ or \}
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def is_final_step(text: str, finish_reason: str | None) -> bool:
    r"""Whether a step ends the solution: it holds a complete ``\boxed{}``, or the model stopped with EOS.

    >>> is_final_step(r"Step 4: The answer is $\boxed{42}$.", FinishReason.STEP)
    True
    >>> is_final_step("Step 2: x = 1", "eos"), is_final_step(r"Step 2: \boxed{4", "length")
    (True, False)
    """
    return finish_reason == FinishReason.EOS or extract_boxed(text) is not None


def detect_repetition(steps: Sequence[str]) -> bool:
    """Whether the newest step repeats an earlier step verbatim (markers and whitespace aside).

    A search that accepts a repeated step is looping; the caller can stop or roll back.

    >>> detect_repetition(["Step 1: x = 2", "Step 2: y = 3", "Step 3:  x =\\n2"])
    True
    >>> detect_repetition(["Step 1: x = 2", "Step 2: y = 3"])
    False
    """
    if len(steps) < 2:
        return False
    newest = _squash(strip_marker(steps[-1]))
    return bool(newest) and any(newest == _squash(strip_marker(s)) for s in steps[:-1])
