"""The logit judge: the paper's judge prompt, but P("A") vs P("B") read at the verdict position in one forward.

Small judges follow the verdict format poorly; reading the two verdict probabilities needs no explanation. The
prompt ends right where the verdict token goes (``... [[``). By default the log-probs of "A" and "B" there come from
the generation engine itself (``Engine.next_token_logprobs``: one batched, prefix-cached call; vLLM's log-softmax is
fp32); a transformers forward that projects the hidden state onto the two output rows **in fp32** is the fallback
(SPEC: in bf16 the two logits are often equal, which turns into a constant "A"). An exact tie abstains. ``p_a`` is
returned so the tournament can average probabilities over both orders.

Candidate text is placed with ``judges.guard.guarded_prompt_ids``, like the generative judge's: a step cannot close
the user turn and start the judge's answer with its own ``[[``.

``reason_tokens`` > 0 lets the judge explain first, as the paper's judge prompt asks: its greedy explanation (at
most that many tokens, cut at its first ``[[``) is generated on the engine, and P("A")/P("B") are read after the
explanation + ``[[``. The verdict is still read by this judge at a position it places, not parsed from text, so
it never abstains for want of a marker; a model trained to check before it decides (the built-in task's EFT)
judges from its own check.

``tie=True`` offers a third verdict (:data:`openrlhf_psr.prompts.JUDGE_TIE_PROMPT`: ``[[C]]`` for a tie, "neither
step is better") and reads "C" beside "A" and "B": where "C" is the likeliest of the three the judge abstains, so
the search makes no pair of two wrong steps that the judge cannot tell apart (its P("A") between the other two
letters is not reported then: an abstention carries no preference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from openrlhf_psr.engines.base import SampleRequest, UnsupportedByEngine
from openrlhf_psr.judges.base import Comparison, JudgeContext, Judgment, PairwiseJudge, judge_prompt
from openrlhf_psr.judges.guard import guarded_prompt_ids
from openrlhf_psr.records import Verdict

VERDICT_OPENING = "[["


def verdict_token_ids(tokenizer, opening: str = VERDICT_OPENING, letters: str = "AB") -> tuple[int, ...]:
    """The ids of the tokens "A" and "B" (or each of ``letters``) as they follow ``opening`` (checked: the opening
    must not merge)."""
    base = tokenizer.encode(opening, add_special_tokens=False)
    ids = []
    for letter in letters:
        full = tokenizer.encode(opening + letter, add_special_tokens=False)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"tokenizer merges {opening + letter!r} across the verdict boundary: {full}")
        ids.append(full[-1])
    return tuple(ids)


def p_a_from_logprobs(logprob_a: float, logprob_b: float) -> float:
    """P("A") of the two-way softmax over the verdict tokens, from their log-probs (or logits: only the difference
    counts); NaN when either is not finite.

    >>> p_a_from_logprobs(-1.0, -1.0), round(p_a_from_logprobs(-0.1, -2.4), 4), p_a_from_logprobs(-1e9, 0.0)
    (0.5, 0.9089, 0.0)
    >>> p_a_from_logprobs(float("-inf"), -1.0)
    nan
    """
    if not (math.isfinite(logprob_a) and math.isfinite(logprob_b)):
        return math.nan
    diff = logprob_b - logprob_a
    return 1.0 / (1.0 + math.exp(diff)) if diff < 700 else 0.0


def verdict_from_letter_logprobs(logprobs: Sequence[float]) -> Verdict:
    """The verdict from the log-probs (or logits) of "A", "B" and, when a tie is offered, "C" at the verdict
    position: a tie ("C" strictly the likeliest) abstains; otherwise :func:`verdict_from_p_a` of "A" against "B".

    >>> verdict_from_letter_logprobs([-0.2, -2.0]), verdict_from_letter_logprobs([-2.0, -3.0, -0.1])
    (Verdict(winner='A', p_a=0.8581489350995123), Verdict(winner=None, p_a=None))
    """
    if len(logprobs) == 3 and math.isfinite(logprobs[2]) and logprobs[2] > max(logprobs[0], logprobs[1]):
        return Verdict(None, None)
    return verdict_from_p_a(p_a_from_logprobs(logprobs[0], logprobs[1]))


def verdict_from_p_a(p: float) -> Verdict:
    """The verdict for P("A"): the likelier letter; an exact tie (equal logits) or a NaN abstains.

    >>> verdict_from_p_a(0.7), verdict_from_p_a(0.5).winner, verdict_from_p_a(float("nan"))
    (Verdict(winner='A', p_a=0.7), None, Verdict(winner=None, p_a=None))
    """
    if math.isnan(p):
        return Verdict(None, None)
    return Verdict("A" if p > 0.5 else "B" if p < 0.5 else None, p_a=p)


class LogitJudge(PairwiseJudge):
    """Reads the verdict from the verdict position's next-token distribution.

    Two ways to read it, same prompt ids:

    - ``engine`` (default when the policy's engine can): ``Engine.next_token_logprobs`` of the generation engine
      (the in-process ``vllm`` engine or OpenRLHF's Ray engines) -- one batched call per ``judge`` call, the
      problem's shared judge-prompt prefix from the engine's prefix cache, no second copy of the model. vLLM
      computes the log-softmax in fp32 from the model's logits.
    - ``transformers`` (the fallback when the engine cannot, e.g. ``openai_http``, or a judge model other than the
      policy): a transformers forward (batched, left-padded), the hidden state projected onto the "A"/"B" rows
      in fp32.

    Args:
        model: a model name or path (``default`` allowed) or a loaded ``PreTrainedModel``; only the
            ``transformers`` backend loads it.
        tokenizer: its tokenizer (the engine's, or loaded from ``model``).
        engine: the generation engine to read logprobs from.
        backend: ``auto`` (engine if it can, else transformers), ``engine`` or ``transformers``.
        dtype: dtype of the transformers body; its verdict head is always computed in fp32.
        batch_size: comparisons per transformers forward.
        reason_tokens: 0 reads the verdict right after the prompt; N > 0 first lets the judge write an explanation
            of at most N tokens on the engine (greedy, cut at its first ``[[``) and reads the verdict after it.
        tie: offer ``[[C]]`` (a tie) in the prompt and abstain where "C" is the likeliest verdict letter.
    """

    name = "logit"

    def __init__(
        self,
        model=None,
        tokenizer=None,
        *,
        engine=None,
        backend: str = "auto",
        dtype: str = "bfloat16",
        batch_size: int = 8,
        chat_template=True,
        reason_tokens: int = 0,
        tie: bool = False,
    ):
        if reason_tokens < 0:
            raise ValueError(f"logit judge: reason_tokens {reason_tokens}; expected 0 (no explanation) or more")
        if reason_tokens and (engine is None or backend == "transformers"):
            raise ValueError("logit judge: reason_tokens needs the generation engine, which writes the explanation")
        if backend not in ("auto", "engine", "transformers"):
            raise ValueError(f"logit judge: backend {backend!r}; expected auto, engine or transformers")
        if backend == "engine" and engine is None:
            raise ValueError("logit judge: backend 'engine' needs the generation engine; none was given")
        if model is None and (engine is None or backend == "transformers"):
            raise ValueError("logit judge: expected a model (name, path or loaded model) or an engine")
        self.engine = engine if backend != "transformers" else None
        self.backend = backend
        self.model_source = model
        self.dtype = dtype
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.reason_tokens = reason_tokens
        self.tie = bool(tie)
        self.letters = "ABC" if self.tie else "AB"
        self.writer = engine  # writes the explanation; stays when reading falls back to transformers
        self.model = self.head = None
        if self.engine is None or not isinstance(model, str | type(None)):
            self._load_transformers(tokenizer)
        else:
            self.tokenizer = tokenizer or engine.tokenizer
        self.verdict_ids = verdict_token_ids(self.tokenizer, letters=self.letters)
        self.opening_ids = self.tokenizer.encode(VERDICT_OPENING, add_special_tokens=False)

    def _load_transformers(self, tokenizer=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openrlhf_psr.model_cache import resolve_model

        model = self.model_source
        if model is None:
            raise ValueError(
                f"logit judge: the engine {type(self.engine).__name__} cannot return next-token log-probs and no "
                "model was given for the transformers fallback"
            )
        if isinstance(model, str):
            path = resolve_model(model)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype))
            tokenizer = tokenizer or getattr(self, "tokenizer", None) or AutoTokenizer.from_pretrained(path)
        self.model = model.eval()
        self.tokenizer = tokenizer or getattr(self, "tokenizer", None)
        ids = list(verdict_token_ids(self.tokenizer, letters=self.letters))
        self.head = model.get_output_embeddings().weight[ids].detach().float()

    @classmethod
    def from_config(cls, context: JudgeContext, *, model: str | None = None, **kw) -> LogitJudge:
        """Self-judging on the policy's engine; ``model`` names another judge model (read with transformers)."""
        if model is not None:
            return cls(model, **kw)
        return cls(context.model, engine=context.engine, **kw)

    def prompt_ids(self, comparison: Comparison) -> list[int]:
        """The guarded judge prompt (``judges.guard``) followed by the verdict opening ``[[``."""
        ids = guarded_prompt_ids(self.tokenizer, judge_prompt(comparison, self.tie), chat_template=self.chat_template)
        return ids + self.opening_ids

    def reasoned_prompt_ids(self, comparisons: Sequence[Comparison]) -> list[list[int]]:
        """Each guarded judge prompt + the judge's own explanation (one batched greedy ``generate``, stopped at the
        verdict opening) + the opening ``[[``: where the verdict is read when ``reason_tokens`` > 0.

        A long judge prompt (a PRM800K solution, say) shortens the explanation so that prompt + explanation +
        opening + the verdict token fit the engine's ``max_model_len``; with no room left the verdict is read right
        after the prompt, as with ``reason_tokens: 0``."""
        prompts = [
            guarded_prompt_ids(self.tokenizer, judge_prompt(c, self.tie), chat_template=self.chat_template)
            for c in comparisons
        ]
        limit = getattr(self.writer, "max_model_len", None)
        budgets = [self._explanation_budget(len(ids), limit) for ids in prompts]
        requests = [
            SampleRequest(
                tuple(ids), n=1, temperature=0.0, max_tokens=budget, stop=(VERDICT_OPENING,), affinity=c.question
            )
            for ids, c, budget in zip(prompts, comparisons, budgets, strict=True)
            if budget > 0
        ]
        outputs = iter(self.writer.generate(requests) if requests else [])
        explanations = [next(outputs)[0].text.split(VERDICT_OPENING)[0] if budget > 0 else "" for budget in budgets]
        # the text up to the first opening (vLLM leaves the stop string out; a cut explanation is read as it is),
        # encoded with the opening so the tokens match how the verdict follows an explanation in training
        return [
            ids + self._fit(text, budget) for ids, text, budget in zip(prompts, explanations, budgets, strict=True)
        ]

    def _explanation_budget(self, prompt_len: int, limit: int | None) -> int:
        if limit is None:
            return self.reason_tokens
        # the opening and the one verdict token read after it must fit too
        return max(0, min(self.reason_tokens, limit - prompt_len - len(self.opening_ids) - 1))

    def _fit(self, explanation: str, budget: int) -> list[int]:
        """``explanation + [[`` encoded, its explanation cut to ``budget`` tokens (re-encoding text can merge or
        split tokens differently from how they were generated, so the budget is enforced again here)."""
        ids = self.tokenizer.encode(explanation + VERDICT_OPENING, add_special_tokens=False)
        if len(ids) <= budget + len(self.opening_ids):
            return ids
        kept = self.tokenizer.encode(explanation, add_special_tokens=False)[: max(0, budget - 1)]
        return self.tokenizer.encode(self.tokenizer.decode(kept) + VERDICT_OPENING, add_special_tokens=False)

    def probabilities(self, comparisons: Sequence[Comparison]) -> list[float]:
        """P(A is better) for each comparison: the two-way softmax of "A" against "B" (NaN where the engine gave no
        finite log-probs)."""
        return [p_a_from_logprobs(row[0], row[1]) for row in self.letter_logprobs(comparisons)]

    def letter_logprobs(self, comparisons: Sequence[Comparison]) -> list[list[float]]:
        """For each comparison, the log-probs of the verdict letters ("A", "B"[, "C"]) at the verdict position:
        over the whole vocabulary from the engine; over the letters alone from the transformers fallback (only
        their differences are read)."""
        if not comparisons:
            return []
        prompts = (
            self.reasoned_prompt_ids(comparisons) if self.reason_tokens else [self.prompt_ids(c) for c in comparisons]
        )
        if self.engine is not None and self.model is None:
            try:
                return self._engine_logprobs(prompts, comparisons)
            except UnsupportedByEngine:
                if self.backend == "engine":
                    raise
                self.engine = None  # this engine cannot: read the verdict with a transformers forward from now on
                self._load_transformers(self.tokenizer)
        return self._transformers_logprobs(prompts)

    def _engine_logprobs(self, prompts: list[list[int]], comparisons: Sequence[Comparison]) -> list[list[float]]:
        affinity = [c.question for c in comparisons]  # a problem's comparisons share one engine's prefix cache
        return self.engine.next_token_logprobs(prompts, list(self.verdict_ids), affinity=affinity)

    def _transformers_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        import torch

        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            width = max(map(len, batch))
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                hidden = self.model.get_decoder()(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions
                ).last_hidden_state[:, -1]
                logits = hidden.float() @ self.head.T  # (batch, letters) in fp32
                out.extend(torch.log_softmax(logits, dim=-1).tolist())
        return out

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        return [Judgment(verdict_from_letter_logprobs(row)) for row in self.letter_logprobs(comparisons)]
