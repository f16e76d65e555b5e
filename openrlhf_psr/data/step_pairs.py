"""The step-pair dataset for step-level DPO (SPEC "Step-wise DPO").

Sources:
- a search output directory (``pairs/shard-*.jsonl``): prompt and step token ids are used exactly as generated;
- a plain JSONL of ``{prompt, prefix_steps, chosen, rejected}`` rows (Step-DPO-style data): the problem is rendered
  (paper's step prompt by default) and wrapped in the chat template (knob), the prefix steps are tokenised after it,
  each step is tokenised on its own, and the ids are concatenated, so the prompt mask is exact even where BPE would
  merge across the boundary. A step's own delimiter/whitespace stays in its text; EOS is appended to a final step
  only (``is_final`` field, else "holds a complete ``\\boxed{}``").

Rows whose chosen or rejected step is empty, or where both are identical, are skipped and counted; a ``null``
field is an error naming the file and line. Rows longer than ``max_len`` keep the question (the rendered problem
prompt with its chat header) and both steps, and lose the *oldest* accepted-step tokens right after the question
(counted); they are dropped (counted) when the question and the steps alone do not fit, or when the end of the
question is unknown. Nothing is lost silently: :class:`PairStats` is printed and saved by the trainer.

Each item is one packed row for :mod:`openrlhf_psr.trainers.shared_prefix`. ``collate_fn`` fills the five slots of
OpenRLHF's ``DPOTrainer`` loop as ``(ids, segments, positions, reference_logps, meta)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from openrlhf_psr.errors import DataError, MissingField
from openrlhf_psr.io import ShardStore, read_jsonl
from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt
from openrlhf_psr.records import JudgedStepPair, PairRecord, Trajectory, read_records
from openrlhf_psr.steps import extract_boxed

PAD, PREFIX, CHOSEN, REJECTED = 0, 1, 2, 3  # segment ids of a packed row


def pack_pair(prefix: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]):
    """(ids, segments, positions) of one packed pair, as lists: both branches restart where the prefix ends.

    >>> pack_pair([7, 8], [9], [5, 6])
    ([7, 8, 9, 5, 6], [1, 1, 2, 3, 3], [0, 1, 2, 2, 3])
    """
    ids = list(prefix) + list(chosen) + list(rejected)
    segments = [PREFIX] * len(prefix) + [CHOSEN] * len(chosen) + [REJECTED] * len(rejected)
    p = len(prefix)
    positions = list(range(p)) + list(range(p, p + len(chosen))) + list(range(p, p + len(rejected)))
    return ids, segments, positions


@dataclass(frozen=True)
class StepPair:
    prompt_ids: tuple[int, ...]  # problem (+ chat template) + accepted prefix
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    source: str  # "file:line" or "problem_id/step", for error messages
    question_len: int | None = None  # leading prompt ids that are the problem prompt (kept whole); None: unknown


@dataclass
class PairStats:
    rows: int = 0
    kept: int = 0
    skipped_empty: int = 0
    skipped_identical: int = 0
    truncated_prefix: int = 0
    truncated_tokens: int = 0
    dropped_too_long: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, source: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(source)

    def as_dict(self) -> dict:
        return asdict(self)


def pairs_from_search(directory: str | Path) -> Iterator[StepPair]:
    """Pair records as generated; where the question ends comes from the problem's trajectory (its
    ``prompt_ids``), or is the whole prompt for a pair without accepted prefix steps (SRLM)."""
    store = ShardStore(directory)
    trajectories = read_records(store.read_located("trajectories"), Trajectory)
    question = {t.problem_id: t.prompt_ids for t in trajectories if t.prompt_ids}
    for record in read_records(store.read_located("pairs"), PairRecord):
        prompt = tuple(record.prompt_ids)
        head = question.get(record.problem_id)
        if head is not None and tuple(head) == prompt[: len(head)]:
            question_len = len(head)
        else:
            question_len = len(prompt) if not record.prefix_steps and head is None else None
        yield StepPair(prompt, tuple(record.chosen_ids), tuple(record.rejected_ids), record.source, question_len)


def pairs_from_jsonl(
    path: str | Path,
    tokenizer,
    *,
    prompt_key: str = "prompt",
    prefix_key: str = "prefix_steps",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    final_key: str = "is_final",
    prompt_template: str = "psr",
    chat_template: bool = True,
) -> Iterator[StepPair]:
    """Tokenise plain step-pair rows; a missing field is an error naming the file and line."""
    if prompt_template not in ("psr", "raw"):
        raise ValueError(f"prompt_template {prompt_template!r}: expected 'psr' (the paper's step prompt) or 'raw'")
    for line, row in enumerate(read_jsonl(Path(path)), 1):
        for key in (prompt_key, chosen_key, rejected_key):
            if key not in row:
                raise MissingField(f"{path}:{line}: missing field {key!r} (fields: {sorted(row)})")
            if row[key] is None:
                raise DataError(f"{path}:{line}: field {key!r} is null; expected text")
        prefix = row.get(prefix_key) or []
        if isinstance(prefix, str):
            prefix = [prefix]
        if any(s is None for s in prefix):
            raise DataError(f"{path}:{line}: field {prefix_key!r} holds a null step; expected text")
        final = bool(row[final_key]) if final_key in row else None
        pair = JudgedStepPair(str(row[prompt_key]), tuple(map(str, prefix)), str(row[chosen_key]),
                              str(row[rejected_key]), is_final=final, source=f"{path}:{line}")  # fmt: skip
        yield tokenize_pair(pair, tokenizer, prompt_template=prompt_template, chat_template=chat_template)


def tokenize_pair(
    pair: JudgedStepPair, tokenizer, *, prompt_template: str = "psr", chat_template: bool = True
) -> StepPair:
    """A judged step pair as token ids: the problem rendered (``psr``: the paper's step prompt; ``raw``: as is) and
    wrapped in the chat template (knob), the prefix steps tokenised after it (a step without trailing whitespace gets
    ``"\\n"``), each step on its own (so the prompt mask is exact even where BPE would merge across the boundary),
    EOS after a final step only (``is_final``, else "holds a complete ``\\boxed{}``")."""
    text = render_step_prompt(pair.question) if prompt_template == "psr" else pair.question
    ids = prompt_token_ids(tokenizer, text, chat_template=chat_template)
    question_len = len(ids)
    prefix_text = "".join(s if s.endswith(("\n", " ")) else s + "\n" for s in pair.previous_steps)
    if prefix_text:
        ids = ids + tokenizer.encode(prefix_text, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    steps = []
    for step in (pair.better, pair.worse):
        final = pair.is_final if pair.is_final is not None else extract_boxed(step) is not None
        step_ids = tokenizer.encode(step, add_special_tokens=False) if step.strip() else []
        if step_ids and final and eos is not None:
            step_ids = step_ids + [eos]
        steps.append(tuple(step_ids))
    return StepPair(tuple(ids), steps[0], steps[1], pair.source, question_len)


def load_step_pairs(source: str | Path, tokenizer=None, **jsonl_options) -> Iterator[StepPair]:
    """A search directory, a JSONL file of plain rows, or several of either separated by commas."""
    for part in str(source).split(","):
        path = Path(part.strip())
        if path.is_dir():
            if not (path / "pairs").is_dir():
                raise FileNotFoundError(f"{path}: not a search output directory (no pairs/ inside)")
            yield from pairs_from_search(path)
        elif path.is_file():
            if tokenizer is None:
                raise ValueError(f"{path}: plain JSONL pairs need a tokenizer")
            yield from pairs_from_jsonl(path, tokenizer, **jsonl_options)
        else:
            raise FileNotFoundError(f"step-pair source {path} does not exist")


class StepPairDataset:
    """Packed ``[prefix | chosen | rejected]`` rows (a torch ``Dataset`` by protocol: ``__len__``/``__getitem__``)."""

    def __init__(self, pairs: Iterable[StepPair], max_len: int, pad_token_id: int):
        self.stats = PairStats()
        self.pad_token_id = pad_token_id
        self.items: list[tuple[list[int], list[int], list[int]]] = []
        self.sources: list[str] = []
        for pair in pairs:
            self.stats.rows += 1
            prefix, chosen, rejected = list(pair.prompt_ids), list(pair.chosen_ids), list(pair.rejected_ids)
            if not chosen or not rejected:
                self.stats.note("skipped_empty", pair.source)
                continue
            if chosen == rejected:
                self.stats.note("skipped_identical", pair.source)
                continue
            budget = max_len - len(chosen) - len(rejected)
            if budget < 1:
                self.stats.note("dropped_too_long", pair.source)
                continue
            if len(prefix) > budget:
                question = pair.question_len
                if question is None or question > budget:
                    self.stats.note("dropped_too_long", pair.source)
                    continue
                self.stats.note("truncated_prefix", pair.source)
                self.stats.truncated_tokens += len(prefix) - budget
                prefix = prefix[:question] + prefix[len(prefix) - (budget - question) :]
            self.items.append(pack_pair(prefix, chosen, rejected))
            self.sources.append(pair.source)
        self.stats.kept = len(self.items)
        self.reference: list[tuple[float, float]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        ref = self.reference[index] if self.reference is not None else (math.nan, math.nan)
        return (*self.items[index], ref, index)

    def collate_fn(self, batch):
        """Pad packed rows; returns the five slots of OpenRLHF's DPO loop (see module docstring)."""
        import torch

        width = max(len(ids) for ids, *_ in batch)
        pad = lambda xs, v: xs + [v] * (width - len(xs))  # noqa: E731
        ids = torch.tensor([pad(b[0], self.pad_token_id) for b in batch])
        segments = torch.tensor([pad(b[1], 0) for b in batch])
        positions = torch.tensor([pad(b[2], 0) for b in batch])
        reference = torch.tensor([b[3] for b in batch], dtype=torch.float32)
        return ids, segments, positions, reference, [b[4] for b in batch]
