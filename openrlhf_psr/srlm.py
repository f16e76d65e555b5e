"""The Self-Rewarding LM baseline (Yuan et al. 2024) in the same framework: whole solutions, scored by the model.

Per problem: sample ``n`` whole solutions (paper: 4), have the model score each with the additive 5-point prompt,
averaged over ``score_samples`` (paper: 3) sampled judgments; the best and worst solution form a DPO pair, ties
(equal best and worst mean score) are dropped. Pairs use the same record format as the step-wise search (a whole
solution is one final "step" ending with EOS, the prompt is the problem alone), so the same DPO trainer reads them.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from openrlhf_psr.data.problems import Problem
from openrlhf_psr.engines.base import Engine, SampleRequest
from openrlhf_psr.io import ShardStore
from openrlhf_psr.judges.guard import guarded_prompt_ids
from openrlhf_psr.prompts import prompt_token_ids, render_srlm_prompt, render_step_prompt
from openrlhf_psr.records import PairRecord, Trajectory
from openrlhf_psr.steps import extract_boxed

# After the last "Score:": optional bold, one digit 0..5 (optionally "/5"), and then no further digit, decimal part
# or fraction, so "10", "3.5", "-1" and "5/10" are not read as a score.
_SCORE = re.compile(r"\s*\**\s*([0-5])(?:\s*/\s*5(?!\d|\.\d))?(?!\d|\.\d|\s*/)")


def parse_score(text: str) -> float | None:
    """The integer 0..5 right after the **last** ``Score:``, or None (an abstention) for anything else.

    >>> parse_score("... so it earns Score: 4."), parse_score("Score: 3/5 then Score: **5**"), parse_score("nine")
    (4.0, 5.0, None)
    >>> [parse_score(f"Score: {x}") for x in ("10", "3.5", "-1", "5/10", "6")]
    [None, None, None, None, None]
    >>> parse_score("Score: 4 ... on reflection, Score: 12")  # the last one decides
    """
    at = text.rfind("Score:")
    if at < 0:
        return None
    match = _SCORE.match(text, at + len("Score:"))
    return float(match.group(1)) if match else None


@dataclass(frozen=True)
class SRLMConfig:
    """Attributes: ``n`` solutions per problem; ``score_samples`` judgments averaged per solution; sampling of
    solutions (``temperature``, ``top_p``, ``max_tokens``) and of judgments (``score_temperature``,
    ``score_max_tokens``); ``chat_template``; ``seed``."""

    n: int = 4
    score_samples: int = 3
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    score_temperature: float = 0.7
    score_max_tokens: int = 256
    chat_template: bool = True
    seed: int = 0


class SRLMScorer:
    """Mean additive score of whole solutions; unparseable judgments are left out of the mean (None if all are)."""

    def __init__(self, engine: Engine, config: SRLMConfig = SRLMConfig()):
        self.engine = engine
        self.config = config

    def score(self, items: Sequence[tuple[str, str]]) -> list[float | None]:
        cfg = self.config
        requests = [
            SampleRequest(
                # the solution is model-written: its text can never become special tokens (a forged turn)
                tuple(
                    guarded_prompt_ids(
                        self.engine.tokenizer, render_srlm_prompt(q, s), chat_template=cfg.chat_template
                    )
                ),
                n=cfg.score_samples,
                temperature=cfg.score_temperature,
                max_tokens=cfg.score_max_tokens,
                seed=cfg.seed + k,
            )
            for k, (q, s) in enumerate(items)
        ]
        out = []
        for samples in self.engine.generate(requests):
            scores = [s for s in (parse_score(x.text) for x in samples) if s is not None]
            out.append(statistics.fmean(scores) if scores else None)
        return out


def srlm_pairs(
    engine: Engine,
    problems: Sequence[Problem],
    out_dir: str | Path,
    config: SRLMConfig = SRLMConfig(),
    *,
    model_id: str = "",
    grader: Callable[[str | None, str | None], bool | None] | None = None,
):
    """Write SRLM pairs and trajectories for every problem not yet committed; returns (pairs, problems) written.

    Records are the step-wise search's (:mod:`openrlhf_psr.records`): a :class:`PairRecord` whose steps are whole
    solutions, and a :class:`Trajectory` with ``method="srlm"`` holding every solution, its mean score and finish
    reason; its ``final_answer`` is the first solution's (an unbiased sample), graded by ``grader`` (default: the
    grading pool's ``is_correct``), so ``search.summarize`` and the report read SRLM output like a search's."""
    if grader is None:
        from openrlhf_psr.grading import is_correct as grader
    store = ShardStore(out_dir)
    done = {t["problem_id"] for t in store.read("trajectories")}
    todo = [p for p in problems if p.id not in done]
    if not todo:
        return 0, 0
    tok = engine.tokenizer
    prompts = [prompt_token_ids(tok, render_step_prompt(p.question), chat_template=config.chat_template) for p in todo]
    requests = [
        SampleRequest(tuple(ids), n=config.n, temperature=config.temperature, top_p=config.top_p,
                      max_tokens=config.max_tokens, seed=config.seed + k)
        for k, ids in enumerate(prompts)
    ]  # fmt: skip
    solutions = engine.generate(requests)
    items = [(p.question, s.text) for p, sols in zip(todo, solutions, strict=True) for s in sols]
    scores = SRLMScorer(engine, config).score(items)
    pairs, trajectories = [], []
    for k, (p, ids, sols) in enumerate(zip(todo, prompts, solutions, strict=True)):
        mine = scores[k * config.n : (k + 1) * config.n]
        ranked = [(s, i) for i, s in enumerate(mine) if s is not None]
        if len(ranked) >= 2:
            (best_score, best), (worst_score, worst) = max(ranked), min(ranked)
            if best_score > worst_score and sols[best].text.strip() != sols[worst].text.strip():
                chosen, rejected = _with_eos(sols[best].token_ids, tok), _with_eos(sols[worst].token_ids, tok)
                pairs.append(PairRecord(p.id, 0, 0, list(ids), chosen, rejected, question=p.question,
                                        chosen=sols[best].text, rejected=sols[worst].text, chosen_is_final=True,
                                        rejected_is_final=True, scores=[best_score, worst_score],
                                        margin=best_score - worst_score, model_id=model_id))  # fmt: skip
        answer = extract_boxed(sols[0].text) if sols else None
        trajectories.append(
            Trajectory(
                p.id,
                p.question,
                p.answer,
                list(ids),
                final_answer=answer,
                correct=grader(answer, p.answer),
                finish=("final" if sols[0].finish_reason == "stop" else "length") if sols else None,
                model_id=model_id,
                seed=config.seed,
                config=config.model_dump() if hasattr(config, "model_dump") else asdict(config),
                method="srlm",
                solutions=[s.text for s in sols],
                scores=mine,
                solution_finish=[s.finish_reason for s in sols],
            )
        )
    store.commit({"pairs": [r.to_json() for r in pairs], "trajectories": [t.to_json() for t in trajectories]})
    return len(pairs), len(todo)


def _with_eos(ids, tokenizer) -> list[int]:
    ids = list(ids)
    eos = tokenizer.eos_token_id
    return ids if (not ids or ids[-1] == eos or eos is None) else ids + [eos]
