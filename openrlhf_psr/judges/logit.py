"""The logit judge: the paper's judge prompt, but P("A") vs P("B") read at the verdict position in one forward.

Small judges follow the verdict format poorly; reading the two verdict logits needs no explanation and never
abstains. The prompt ends right where the verdict token goes (``... [[``); the hidden state there is projected onto
the output rows of "A" and "B" **in fp32** (SPEC: in bf16 the two logits are often equal, which turns into a
constant "A"). ``p_a`` is returned so the tournament can average probabilities over both orders.

Candidate text is placed with ``judges.guard.guarded_prompt_ids``, like the generative judge's: a step cannot close
the user turn and start the judge's answer with its own ``[[``.
"""

from __future__ import annotations

from collections.abc import Sequence

from openrlhf_psr.judges.base import Comparison, JudgeContext, Judgment, PairwiseJudge
from openrlhf_psr.judges.guard import guarded_prompt_ids
from openrlhf_psr.tournament import Verdict

VERDICT_OPENING = "[["


def verdict_token_ids(tokenizer, opening: str = VERDICT_OPENING) -> tuple[int, int]:
    """The ids of the tokens "A" and "B" as they follow ``opening`` (checked: the opening must not merge)."""
    base = tokenizer.encode(opening, add_special_tokens=False)
    ids = []
    for letter in ("A", "B"):
        full = tokenizer.encode(opening + letter, add_special_tokens=False)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"tokenizer merges {opening + letter!r} across the verdict boundary: {full}")
        ids.append(full[-1])
    return ids[0], ids[1]


class LogitJudge(PairwiseJudge):
    """Reads the verdict from logits with a transformers model (batched, left-padded, one forward per batch).

    Args:
        model: a model name or path (``default`` allowed) or a loaded ``PreTrainedModel``.
        tokenizer: its tokenizer (loaded from ``model`` when a path is given).
        dtype: dtype of the transformer body; the verdict head is always computed in fp32.
        batch_size: comparisons per forward.
    """

    name = "logit"

    def __init__(self, model, tokenizer=None, *, dtype: str = "bfloat16", batch_size: int = 8, chat_template=True):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openrlhf_psr.model_cache import resolve_model

        if isinstance(model, str):
            path = resolve_model(model)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chat_template = chat_template
        a_id, b_id = verdict_token_ids(tokenizer)
        self.head = model.get_output_embeddings().weight[[a_id, b_id]].detach().float()
        self.opening_ids = tokenizer.encode(VERDICT_OPENING, add_special_tokens=False)

    @classmethod
    def from_config(cls, context: JudgeContext, *, model: str | None = None, **kw) -> LogitJudge:
        """The policy model itself unless ``model`` names another one."""
        return cls(model or context.model, **kw)

    def prompt_ids(self, comparison: Comparison) -> list[int]:
        """The guarded judge prompt (``judges.guard``) followed by the verdict opening ``[[``."""
        ids = guarded_prompt_ids(self.tokenizer, comparison.prompt(), chat_template=self.chat_template)
        return ids + self.opening_ids

    def probabilities(self, comparisons: Sequence[Comparison]) -> list[float]:
        """P(A is better) for each comparison."""
        import torch

        out: list[float] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(comparisons), self.batch_size):
            batch = [self.prompt_ids(c) for c in comparisons[start : start + self.batch_size]]
            width = max(map(len, batch))
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                hidden = self.model.get_decoder()(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions
                ).last_hidden_state[:, -1]
                logits = hidden.float() @ self.head.T  # (batch, 2) in fp32
                out.extend(torch.softmax(logits, dim=-1)[:, 0].tolist())
        return out

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        return [Judgment(Verdict("A" if p > 0.5 else "B", p_a=p)) for p in self.probabilities(comparisons)]
