"""Shared-prefix forward: chosen and rejected steps share a long prompt+prefix; compute it once.

One packed row per pair, ``[prefix | chosen | rejected]``, with a tree attention mask: every token sees the prefix
causally; a chosen token also sees the earlier chosen tokens, a rejected token the earlier rejected tokens, never
the other branch. Both branches restart their positions where the prefix ends. The log-probabilities equal those of
two separate full forwards (tested to 1e-5 in fp32), with (P + C + R) tokens of work instead of 2P + C + R, and the
output head runs only at the C + R scored positions instead of over whole sequences (the logits of prompt tokens,
most of a step pair, are never materialised).

Segment ids mark each packed position: 0 padding, 1 prefix, 2 chosen, 3 rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD, PREFIX, CHOSEN, REJECTED = 0, 1, 2, 3


def pack_pair(prefix: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]):
    """(ids, segments, positions) of one packed pair, as lists."""
    ids = list(prefix) + list(chosen) + list(rejected)
    segments = [PREFIX] * len(prefix) + [CHOSEN] * len(chosen) + [REJECTED] * len(rejected)
    p = len(prefix)
    positions = list(range(p)) + list(range(p, p + len(chosen))) + list(range(p, p + len(rejected)))
    return ids, segments, positions


def tree_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``(B, 1, L, L)``: 0 where query i may attend key j, the dtype's minimum elsewhere."""
    seg_q = segments[:, :, None]
    seg_k = segments[:, None, :]
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (seg_k != PAD) & (seg_q != PAD) & ((seg_k == PREFIX) | (seg_k == seg_q))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)  # padding rows attend themselves
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def scored_positions(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each chosen/rejected token: (row, position of its prediction, position of the token, branch).

    A branch's first token is predicted from the last prefix position, not from the other branch's last token.
    """
    rows, preds, targets, branch = [], [], [], []
    for b, seg in enumerate(segments.tolist()):
        last_prefix = max(i for i, s in enumerate(seg) if s == PREFIX)
        for kind in (CHOSEN, REJECTED):
            idx = [i for i, s in enumerate(seg) if s == kind]
            pred = [last_prefix] + idx[:-1]
            rows += [b] * len(idx)
            preds += pred
            targets += idx
            branch += [kind] * len(idx)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=segments.device)  # noqa: E731
    return as_tensor(rows), as_tensor(preds), as_tensor(targets), as_tensor(branch)


def causal_lm_parts(model):
    """(decoder, output head) of a HF causal LM, through OpenRLHF's Actor / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DeepSpeed engine
    if hasattr(model, "model") and not hasattr(model, "get_output_embeddings"):
        model = model.model  # openrlhf.models.Actor
    return model.get_decoder(), model.get_output_embeddings()


def branch_logps(
    model, ids: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected branches of each packed row, and their token counts.

    Returns ``(chosen_logps, rejected_logps, chosen_tokens, rejected_tokens)``, each ``(B,)``.
    """
    decoder, head = causal_lm_parts(model)
    param = next(head.parameters())
    hidden = decoder(
        input_ids=ids, attention_mask=tree_mask(segments, param.dtype), position_ids=positions
    ).last_hidden_state
    rows, preds, targets, branch = scored_positions(segments)
    logits = head(hidden[rows, preds]).float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, targets][:, None]).squeeze(-1)
    batch = ids.shape[0]
    out = []
    for kind in (CHOSEN, REJECTED):
        sel = branch == kind
        zeros = torch.zeros(batch, device=ids.device, dtype=token_logps.dtype)
        out.append(zeros.index_add(0, rows[sel], token_logps[sel]))
    counts = [torch.bincount(rows[branch == kind], minlength=batch) for kind in (CHOSEN, REJECTED)]
    return out[0], out[1], counts[0], counts[1]
