"""The PSR pairwise judge as an OpenRLHF reward function file: ``--reward.remote_url <path of this file>``.

Upstream (``openrlhf.utils.agent.SingleTurnAgentExecutor``) loads a ``.py`` remote URL and calls
``reward_func(queries, prompts, labels)`` for each rollout, in a worker thread. Here the reward of a response is
how the judge rates it against the reference solution in ``label``: the paper's judge prompt with the problem as
context, the response and the reference as the two candidates, judged **in both orders**; the two orders are
combined by the search's own rule (:func:`openrlhf_psr.records.aggregate_pair`, ``aggregate="prob"``): the reward is
the mean probability that the response is better when both orders give one (logit judge), else the pair's win
(1 / 0.5 / 0; an order that abstains leaves the other to decide alone). 0.5 therefore means "as good as the
reference".

Configure with environment variables (they reach Ray workers through ``--runtime-env-json``):
``PSR_REWARD_JUDGE`` (a judge name: ``logit`` (default), ``generative``, or ``module:attr``),
``PSR_REWARD_JUDGE_MODEL`` (model for the judge; default ``default``), ``PSR_REWARD_JUDGE_URL`` (an
OpenAI-compatible endpoint for a generative judge). Print this file's path with
``python -m openrlhf_psr.rewards.pairwise_reward``.
"""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()
_JUDGE = None
SPECIAL_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")


def _judge():
    global _JUDGE
    with _LOCK:
        if _JUDGE is None:
            from openrlhf_psr.judges.base import JudgeContext, build_judge

            name = os.environ.get("PSR_REWARD_JUDGE", "logit")
            model = os.environ.get("PSR_REWARD_JUDGE_MODEL", "default")
            settings = {}
            if os.environ.get("PSR_REWARD_JUDGE_URL"):
                settings["base_url"] = os.environ["PSR_REWARD_JUDGE_URL"]
            _JUDGE = build_judge(name, JudgeContext(model=model), **settings)
        return _JUDGE


def response_of(query: str, prompt: str) -> str:
    """The response part of a decoded rollout: the text after the prompt, without end-of-turn markers.

    >>> response_of("<s>Q: 2+2?<|im_end|>Step 1: 4<|im_end|>", "Q: 2+2?")
    'Step 1: 4'
    """
    k = query.rfind(prompt) if prompt else -1
    text = query[k + len(prompt) :] if k >= 0 else query
    for marker in SPECIAL_MARKERS:
        text = text.replace(marker, "")
    return text.strip()


def pairwise_rewards(judge, questions, responses, references) -> list[float]:
    """Both-order rewards for a batch (one judge call for all comparisons)."""
    from openrlhf_psr.judges.base import Comparison
    from openrlhf_psr.records import aggregate_pair

    comparisons = []
    for q, r, ref in zip(questions, responses, references, strict=True):
        comparisons += [Comparison(q, (), r, ref), Comparison(q, (), ref, r)]
    judgments = judge.judge(comparisons)
    rewards = []
    for k in range(len(questions)):
        outcome = aggregate_pair(0, 1, judgments[2 * k].verdict, judgments[2 * k + 1].verdict, aggregate="prob")
        rewards.append(outcome.p_i if outcome.p_i is not None else outcome.score_i)
    return rewards


def reward_func(queries, prompts, labels):
    """OpenRLHF's contract: returns ``{"rewards", "scores", "extra_logs"}`` with one value per query."""
    import torch

    responses = [response_of(q, p) for q, p in zip(queries, prompts, strict=True)]
    rewards = torch.tensor(pairwise_rewards(_judge(), list(prompts), responses, [str(x) for x in labels]))
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"psr_pairwise_reward": rewards}}


if __name__ == "__main__":
    print(__file__)
