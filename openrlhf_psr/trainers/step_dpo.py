"""Step-level DPO on OpenRLHF's own ``DPOTrainer`` (its loop, DPOLoss, logging, checkpoints and resume).

Two things change in the loss, both in :meth:`StepDPOTrainer.concatenated_forward`, the hook upstream's loop calls:
- the policy's log-probs come from the shared-prefix forward (:mod:`openrlhf_psr.trainers.shared_prefix`): one
  packed row per pair, the head only at the scored step positions;
- the reference's log-probs are computed **once** before training (:func:`reference_logps`) and read from the
  batch, so no reference forward runs per step and the reference model is not kept in memory (``--psr.reference
  live`` keeps upstream's per-step reference forward, through the same shared-prefix path).

Checkpoints: DeepSpeed's, marked complete only once written on every rank, rotated only after that, and resumed
from the last complete one (:mod:`openrlhf_psr.trainers.checkpoints`): a kill during a save costs at most the steps
since the previous checkpoint.

Loss: upstream's ``DPOLoss`` (Rafailov et al. 2023, Eq. 7) on single steps, ``-log sigmoid(beta * ((pi_c - ref_c) -
(pi_r - ref_r)))``, with ``beta`` from ``--model.beta`` (SPEC default 0.1).
"""

from __future__ import annotations

import contextlib
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

    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        """Upstream's logs, evaluation and HF export, with its DeepSpeed save replaced by
        :func:`save_complete_checkpoint` (a kill during a save can no longer cost the last whole checkpoint)."""
        disabled, self.disable_ds_ckpt = self.disable_ds_ckpt, True  # upstream's DeepSpeed save: replaced below
        try:
            super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
        finally:
            self.disable_ds_ckpt = disabled
        if not disabled and global_step % args.ckpt.save_steps == 0:
            save_complete_checkpoint(
                self.strategy, self.model.model, args.ckpt.path, f"global_step{global_step}", args.ckpt.max_num,
                args.ckpt.max_mem, client_states or {},
            )  # fmt: skip


def save_complete_checkpoint(strategy, engine, ckpt_dir: str, tag: str, max_num: int, max_mem: float, client_state):
    """DeepSpeed's save of ``tag``, then its completion marker, then rotation (see :mod:`.checkpoints`)."""
    import shutil

    from openrlhf_psr.pause import pause_at
    from openrlhf_psr.trainers.checkpoints import mark_complete, rotate

    if strategy.is_rank_0():  # a folder left by a killed save is rewritten from scratch, never completed in place
        shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)
    with _pause_inside_write(engine, f"ckpt-partial:{tag}"):
        # upstream's rotation (before the write) is turned off; :func:`rotate` runs once the new tag is whole
        strategy.save_ckpt(engine, ckpt_dir, tag, max_num=2**62, max_mem=float("inf"), client_state=client_state)
    if strategy.is_rank_0():  # DeepSpeed's save ends with a barrier: every rank's files are written
        mark_complete(ckpt_dir, tag, client_state)
        for old in rotate(ckpt_dir, max_num, max_mem):
            strategy.print(f"Removed checkpoint {old} (--ckpt.max_num {max_num}, --ckpt.max_mem {max_mem})")
    pause_at(f"ckpt-complete:{tag}")


@contextlib.contextmanager
def _pause_inside_write(engine, point: str):
    """Test hook: pause after DeepSpeed wrote the first file of a checkpoint (``OPENRLHF_PSR_PAUSE_AT``)."""
    from openrlhf_psr.pause import pause_at, requested

    if not requested(point):
        yield
        return
    files = engine.checkpoint_engine
    original = files.save

    def save(*args, **kwargs):
        original(*args, **kwargs)
        pause_at(point)

    files.save = save  # an instance attribute over the class's method, removed again below
    try:
        yield
    finally:
        del files.save


def load_complete_checkpoint(strategy, engine, ckpt_dir: str) -> dict | None:
    """Load the last complete checkpoint under ``ckpt_dir``; its client states (``consumed_samples``), or None
    when there is none (then training starts from the beginning)."""
    from openrlhf_psr.trainers.checkpoints import checkpoint_tags, prepare_resume

    if strategy.is_rank_0():
        tag, ignored = prepare_resume(ckpt_dir)
        for name in ignored:
            strategy.print(f"Ignored checkpoint {Path(ckpt_dir) / name}: incomplete (no completion marker)")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    complete, _ = checkpoint_tags(ckpt_dir)
    if not complete:
        return None
    load_path, states = strategy.load_ckpt(engine, ckpt_dir, tag=complete[-1])
    if load_path is None:
        raise RuntimeError(f"{Path(ckpt_dir) / complete[-1]}: marked complete but DeepSpeed could not load it")
    return states


def dataset_fingerprint(dataset, reference_model: str, dtype: str) -> str:
    """Key of the cached reference log-probs: the reference's *weights* (a local folder by the size and mtime of
    its files, :func:`openrlhf_psr.fingerprint.model_fingerprint`; not its path, so a reference retrained in place
    is never served stale log-probs), the dtype and every row of the data."""
    from openrlhf_psr.fingerprint import model_fingerprint

    digest = hashlib.sha256(f"{model_fingerprint(reference_model)}|{dtype}|{len(dataset)}".encode())
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
    from openrlhf_psr.io import atomic_write_text

    atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "logps": logps}))
