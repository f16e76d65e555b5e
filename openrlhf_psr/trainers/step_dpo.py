"""Step-level DPO on OpenRLHF's own ``DPOTrainer`` (its loop, DPOLoss, logging, checkpoints and resume).

Two things change, both in :meth:`StepDPOTrainer.concatenated_forward`, the one hook upstream's loop calls:
- the policy's log-probs come from the shared-prefix forward (:mod:`openrlhf_psr.trainers.shared_prefix`): one
  packed row per pair, the head only at the scored step positions;
- the reference's log-probs are computed **once** before training (:func:`reference_logps`) and read from the
  batch, so no reference forward runs per step and the reference model is not kept in memory (``--psr.reference
  live`` keeps upstream's per-step reference forward, through the same shared-prefix path).

Loss: upstream's ``DPOLoss`` (Rafailov et al. 2023, Eq. 7) on single steps, ``-log sigmoid(beta * ((pi_c - ref_c) -
(pi_r - ref_r)))``, with ``beta`` from ``--model.beta`` (SPEC default 0.1).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from openrlhf.trainer.dpo_trainer import DPOTrainer

from openrlhf_psr.trainers.shared_prefix import branch_logps


class CachedReference:
    """Takes the reference model's place in upstream's loop when its log-probs were computed before training."""

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self


class StepDPOTrainer(DPOTrainer):
    """Upstream's DPOTrainer with the shared-prefix forward; batch slots as in ``StepPairDataset.collate_fn``."""

    def concatenated_forward(self, model, ids, segments, positions, reference, meta):
        if isinstance(model, CachedReference):
            if torch.isnan(reference).any():
                raise RuntimeError("reference log-probs are missing for some rows of this batch")
            reference = reference.to(ids.device)
            return reference[:, 0], reference[:, 1], [], 0
        chosen, rejected, n_chosen, _ = branch_logps(model, ids, segments, positions)
        nll = -(chosen / n_chosen.clamp(min=1)).mean()
        return chosen, rejected, [], nll


def dataset_fingerprint(dataset, reference_model: str, dtype: str) -> str:
    digest = hashlib.sha256(f"{reference_model}|{dtype}|{len(dataset)}".encode())
    for ids, segments, _ in dataset.items:
        digest.update(bytes(str((ids, segments)), "utf-8"))
    return digest.hexdigest()[:16]


@torch.no_grad()
def reference_logps(model, dataset, *, batch_size: int = 8, rank: int = 0, world_size: int = 1, progress=True):
    """(chosen, rejected) reference log-probs of every row; rank r computes rows r::world_size, then all gather."""
    from tqdm.auto import tqdm

    model.eval()
    mine = list(range(rank, len(dataset), world_size))
    device = next(model.parameters()).device
    out: dict[int, tuple[float, float]] = {}
    for start in tqdm(range(0, len(mine), batch_size), desc="reference log-probs", disable=not progress):
        idx = mine[start : start + batch_size]
        ids, segments, positions, _, _ = dataset.collate_fn([dataset[i] for i in idx])
        chosen, rejected, _, _ = branch_logps(model, ids.to(device), segments.to(device), positions.to(device))
        out.update({i: (c, r) for i, c, r in zip(idx, chosen.tolist(), rejected.tolist(), strict=True)})
    if world_size > 1:
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, out)
        out = {k: v for part in gathered for k, v in part.items()}
    return [out[i] for i in range(len(dataset))]


def cached_reference_logps(path: Path, fingerprint: str):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [tuple(x) for x in data["logps"]] if data.get("fingerprint") == fingerprint else None


def save_reference_logps(path: Path, fingerprint: str, logps) -> None:
    from openrlhf_psr.shards import atomic_write_text

    atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "logps": logps}))
