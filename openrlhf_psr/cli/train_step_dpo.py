"""Step-level DPO, launched like upstream's DPO: ``deepspeed --module openrlhf_psr.cli.train_step_dpo ...`` or
``python -m openrlhf_psr.cli.train_step_dpo ...`` (single process; on CPU with the compatibility layer).

It accepts exactly the flags of the pinned ``openrlhf.cli.train_dpo`` (its parser is taken from upstream itself,
so ``--ds.zero_stage``, ``--ckpt.*``, ``--logger.*``, LoRA, gradient checkpointing, ``--ref.offload`` ... behave as
there) plus ``--psr.*``:

  --psr.reference {cached,live}   cached (default): reference log-probs once before training, saved under
                                  ``--ckpt.path`` and reused on resume; live: upstream's per-step reference forward
  --psr.prompt_template {psr,raw} plain JSONL rows: wrap the problem in the paper's step prompt (default) or not
  --psr.chat_template {on,off}    plain JSONL rows: apply the model's chat template to the problem (default on)
  --psr.prefix_key / --psr.final_key   plain JSONL field names (prefix_steps, is_final)

With ``--ds.lora.rank N`` the adapter is saved to ``<--ckpt.output_dir>/lora_adapter`` and merged into the policy
(upstream's ``openrlhf.cli.lora_combiner``), so ``--ckpt.output_dir`` holds a whole model either way: the next
stage's engine loads it as M(t+1).

``--data.dataset`` is a search output directory, a JSONL of plain rows, or several separated by commas.
``--ref.model_name_or_path`` defaults to the policy (the reference for iteration t is M(t)); point it at M1 for the
SPEC's knob. ``--model.beta`` defaults to 0.1 here (SPEC), upstream's 0.1 as well.

One difference in behaviour: a DeepSpeed checkpoint counts only once it is marked complete, ``--ckpt.max_num`` /
``--ckpt.max_mem`` rotate old ones out only after that, and ``--ckpt.load_enable`` resumes from the last complete
one (:mod:`openrlhf_psr.trainers.checkpoints`); upstream can lose every checkpoint to a kill during a save.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import runpy
import sys
from pathlib import Path

UPSTREAM_CLI = "openrlhf.cli.train_dpo"


class _Captured(Exception):
    pass


def upstream_parser(module: str = UPSTREAM_CLI) -> argparse.ArgumentParser:
    """The argparse parser the pinned upstream CLI builds in its ``__main__`` block, without running it."""
    from openrlhf_psr.compat import install

    install()
    captured: dict = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured["parser"] = self
        raise _Captured

    argparse.ArgumentParser.parse_args = capture
    argv = sys.argv
    try:
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__")
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = argv
    if "parser" not in captured:
        raise RuntimeError(f"{module} did not build an argument parser in its __main__ block")
    return captured["parser"]


# The ``--psr.*`` flags (the only ones added to upstream's); booleans are ``on``/``off`` as in every command here.
PSR_FLAGS: dict[str, dict] = {
    "reference": dict(choices=["cached", "live"], default="cached"),
    "prompt_template": dict(choices=["psr", "raw"], default="psr"),
    "chat_template": dict(choices=["on", "off"], default="on"),
    "prefix_key": dict(default="prefix_steps"),
    "final_key": dict(default="is_final"),
    "ref_batch_size": dict(type=int, default=None, help="default: --train.micro_batch_size"),
}
# What a recipe's ``psr.trainer.settings`` may hold (they become these flags): name -> allowed values (None: any).
PSR_SETTINGS = {name: tuple(spec["choices"]) if "choices" in spec else None for name, spec in PSR_FLAGS.items()}


def build_parser() -> argparse.ArgumentParser:
    from openrlhf_psr.cli.app import Parser

    parser = upstream_parser()
    parser.__class__ = Parser  # upstream's parser, with this package's one-line usage errors (only error() differs)
    parser.prog = "python -m openrlhf_psr.cli.train_step_dpo"
    parser.description = __doc__.split("\n\n")[0]
    for name, spec in PSR_FLAGS.items():
        parser.add_argument(f"--psr.{name}", **spec)
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors as well")
    return parser


TREE_MASK_ATTENTIONS = ("sdpa", "eager")


def tree_mask_attention(requested: str) -> str:
    """The attention step DPO runs with, on CPU and GPU alike: one that applies a 4D additive mask.

    Each packed row ``[prefix | chosen | rejected]`` carries a (B, 1, L, L) tree mask. transformers hands a 4D mask
    through unchanged, and FlashAttention (2, 3, kernel hub variants) reads any mask as a padding mask: wrong
    ``cu_seqlens``, a crash or silently wrong log-probs. sdpa and eager apply it exactly; anything else -> sdpa.

    >>> tree_mask_attention("flash_attention_2"), tree_mask_attention("eager")
    ('sdpa', 'eager')
    """
    return requested if requested in TREE_MASK_ATTENTIONS else "sdpa"


def parse_args(argv=None):
    from openrlhf.utils.config import hierarchize

    args = hierarchize(build_parser().parse_args(argv))
    chosen = tree_mask_attention(args.ds.attn_implementation)
    print(f"[openrlhf-psr] step DPO attention: {chosen}" + (
        f" (requested {args.ds.attn_implementation}: it cannot apply the 4D tree mask)"
        if chosen != args.ds.attn_implementation else ""), file=sys.stderr)  # fmt: skip
    args.ds.attn_implementation = chosen
    if not args.ref.model_name_or_path:
        args.ref.model_name_or_path = args.model.model_name_or_path
    return args


def _resolve(args) -> None:
    from openrlhf_psr.model_cache import resolve_model

    args.model.model_name_or_path = resolve_model(args.model.model_name_or_path)
    args.ref.model_name_or_path = resolve_model(args.ref.model_name_or_path)


def build_dataset(args, tokenizer, source: str):
    from openrlhf_psr.data.step_pairs import StepPairDataset, load_step_pairs

    pairs = load_step_pairs(
        source,
        tokenizer,
        prompt_key=args.data.prompt_key or "prompt",  # upstream's default is None (chat-format data)
        chosen_key=args.data.chosen_key or "chosen",
        rejected_key=args.data.rejected_key or "rejected",
        prefix_key=args.psr.prefix_key,
        final_key=args.psr.final_key,
        prompt_template=args.psr.prompt_template,
        chat_template=args.psr.chat_template == "on",
    )
    dataset = StepPairDataset(pairs, args.data.max_len, tokenizer.pad_token_id)
    if args.data.max_samples and len(dataset) > args.data.max_samples:
        dataset.items = dataset.items[: args.data.max_samples]
    return dataset


def check_vocabulary(dataset, model, tokenizer) -> None:
    """Token ids from another tokenizer would silently index the wrong embeddings: refuse them."""
    vocab = model.get_input_embeddings().num_embeddings
    for k, (ids, _, _) in enumerate(dataset.items):
        if ids and max(ids) >= vocab:
            raise ValueError(
                f"step pair {dataset.sources[k]} holds token id {max(ids)} but the model's vocabulary has {vocab} "
                f"entries: the pairs were tokenised for another model (tokenizer size {len(tokenizer)})"
            )


def train(args) -> None:
    import torch
    from openrlhf.models import Actor
    from openrlhf.utils import get_strategy, get_tokenizer
    from transformers import AutoModelForCausalLM

    from openrlhf_psr.trainers.step_dpo import (
        CachedReference,
        StepDPOTrainer,
        cached_reference_logps,
        dataset_fingerprint,
        load_complete_checkpoint,
        reference_logps,
        save_reference_logps,
    )

    _resolve(args)
    strategy = get_strategy(args)
    strategy.setup_distributed()
    model = Actor(
        args.model.model_name_or_path,
        attn_implementation=args.ds.attn_implementation,
        experts_implementation=args.ds.experts_implementation,
        param_dtype=args.ds.param_dtype,
        load_in_4bit=args.ds.load_in_4bit,
        lora_rank=args.ds.lora.rank,
        lora_alpha=args.ds.lora.alpha,
        lora_dropout=args.ds.lora.dropout,
        target_modules=args.ds.lora.target_modules,
        ds_config=strategy.get_ds_train_config(),
        packing_samples=False,
        use_liger_kernel=args.ds.use_liger_kernel,
    )
    tokenizer = get_tokenizer(
        args.model.model_name_or_path, model.model, "right", strategy, use_fast=not args.data.disable_fast_tokenizer
    )
    if args.model.gradient_checkpointing_enable:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": args.model.gradient_checkpointing_reentrant}
        )

    dataset = build_dataset(args, tokenizer, args.data.dataset)
    check_vocabulary(dataset, model.model, tokenizer)
    strategy.print(f"step pairs: {json.dumps(dataset.stats.as_dict())}")
    os.makedirs(args.ckpt.output_dir, exist_ok=True)
    if strategy.is_rank_0():
        with open(os.path.join(args.ckpt.output_dir, "step_pair_stats.json"), "w") as handle:
            json.dump(dataset.stats.as_dict(), handle, indent=2)
    if len(dataset) < args.train.batch_size:
        raise ValueError(
            f"{args.data.dataset}: {len(dataset)} usable step pairs, fewer than --train.batch_size "
            f"{args.train.batch_size} (stats: {dataset.stats.as_dict()})"
        )
    eval_dataset = build_dataset(args, tokenizer, args.eval.dataset) if getattr(args.eval, "dataset", None) else None

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.ds.param_dtype, torch.float32)
    if args.psr.reference == "cached":
        ref_model = CachedReference()
        batch = args.psr.ref_batch_size or args.train.micro_batch_size
        for part in filter(None, (dataset, eval_dataset)):
            fingerprint = dataset_fingerprint(part, args.ref.model_name_or_path, str(dtype))
            cache = os.path.join(args.ckpt.path, f"reference_logps-{fingerprint}.json")
            logps = cached_reference_logps(Path(cache), fingerprint)
            if logps is None:
                reference = AutoModelForCausalLM.from_pretrained(
                    args.ref.model_name_or_path, dtype=dtype, attn_implementation=args.ds.attn_implementation
                ).to(torch.cuda.current_device() if torch.cuda.is_available() else "cpu")
                logps = reference_logps(
                    reference,
                    part,
                    batch_size=batch,
                    rank=torch.distributed.get_rank(),
                    world_size=strategy.world_size,
                    progress=strategy.is_rank_0(),
                )
                del reference
                gc.collect()
                if strategy.is_rank_0():
                    save_reference_logps(Path(cache), fingerprint, logps)
            part.reference = logps
    else:
        ref_model = Actor(
            args.ref.model_name_or_path,
            attn_implementation=args.ds.attn_implementation,
            experts_implementation=args.ds.experts_implementation,
            param_dtype=args.ds.param_dtype,
            load_in_4bit=args.ds.load_in_4bit,
            ds_config=strategy.get_ds_eval_config(offload=args.ref.offload),
            packing_samples=False,
        )
        if args.ref.offload:
            ref_model._offload = True

    train_dataloader = strategy.setup_dataloader(
        dataset,
        args.train.micro_batch_size,
        True,
        True,
        dataset.collate_fn,
        num_workers=args.data.dataloader_num_workers,
    )
    eval_dataloader = None
    if eval_dataset is not None:
        eval_dataloader = strategy.setup_dataloader(
            eval_dataset, args.train.micro_batch_size, True, False, eval_dataset.collate_fn, drop_last=False
        )
    num_update_steps_per_epoch = len(dataset) // args.train.batch_size
    cfg = dict(
        optim=args.optim,
        muon=vars(args.muon),
        adam=vars(args.adam),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_ratio=args.lr_warmup_ratio,
        min_lr_ratio=args.min_lr_ratio,
        max_norm=args.max_norm,
        scheduler_steps=math.ceil(args.train.max_epochs * num_update_steps_per_epoch),
    )
    if isinstance(ref_model, CachedReference):
        model, optim, scheduler = strategy.prepare((model, cfg))
    else:
        (model, optim, scheduler), ref_model = strategy.prepare((model, cfg), ref_model)

    consumed_samples = 0
    if args.ckpt.load_enable:  # the last checkpoint marked complete; a half-written one is never loaded
        states = load_complete_checkpoint(strategy, model.model, args.ckpt.path)
        if states is not None:
            consumed_samples = states["consumed_samples"]
            strategy.print(f"Loaded the checkpoint: {args.ckpt.path}, consumed_samples: {consumed_samples}")

    trainer = StepDPOTrainer(
        model=model,
        ref_model=ref_model,
        tokenizer=tokenizer,
        strategy=strategy,
        optim=optim,
        train_dataloader=train_dataloader,
        eval_dataloader=eval_dataloader,
        scheduler=scheduler,
        max_norm=args.max_norm,
        beta=args.model.beta,
        max_epochs=args.train.max_epochs,
        save_hf_ckpt=args.ckpt.save_hf,
        disable_ds_ckpt=args.ckpt.disable_ds,
    )
    trainer.fit(args, consumed_samples, num_update_steps_per_epoch)
    if args.ds.lora.rank > 0:
        save_merged_lora(strategy, model, tokenizer, args)
    else:
        strategy.save_model(model, tokenizer, args.ckpt.output_dir)


LORA_ADAPTER_DIR = "lora_adapter"  # under --ckpt.output_dir, beside the merged model


def save_merged_lora(strategy, model, tokenizer, args) -> None:
    """With ``--ds.lora.rank``, upstream's ``save_model`` writes the adapter and a ``config.json`` but no weights: the
    next stage (search or evaluation through vLLM) loads ``--ckpt.output_dir`` as a whole model, and the launcher takes
    that ``config.json`` as the stage's output. So the adapter goes to ``<output_dir>/lora_adapter`` and rank 0 merges
    it into M(t) with upstream's ``openrlhf.cli.lora_combiner``, writing a whole model in ``--ds.param_dtype``."""
    from openrlhf.cli.lora_combiner import apply_lora
    from openrlhf.utils.distributed_util import torch_dist_barrier_and_cuda_sync

    adapter = os.path.join(args.ckpt.output_dir, LORA_ADAPTER_DIR)
    strategy.save_model(model, tokenizer, adapter)  # every rank takes part (ZeRO-3 gathers)
    if strategy.is_rank_0():
        apply_lora(args.model.model_name_or_path, adapter, args.ckpt.output_dir, False, args.ds.param_dtype)
        strategy.print(f"LoRA adapter {adapter} merged into {args.ckpt.output_dir}")
    torch_dist_barrier_and_cuda_sync()


def single_process_env() -> None:
    """Run by hand (``python -m``, no ``deepspeed``/``torchrun`` launcher), set the single-process distributed
    environment the launcher would: without RANK/LOCAL_RANK DeepSpeed tries MPI discovery and dies on a missing
    ``mpi4py``. On CPU this is :func:`~openrlhf_psr.preflight.cpu_distributed_env` (gloo)."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return  # a launcher set it up
    import torch

    from openrlhf_psr.preflight import single_process_env as env_for

    env = env_for(cpu=not torch.cuda.is_available())
    print(f"[openrlhf-psr] no launcher: single process (MASTER_PORT={env['MASTER_PORT']})", file=sys.stderr)
    os.environ.update(env)


def check_sources(args) -> None:
    """Every ``--data.dataset`` / ``--eval.dataset`` source exists, checked before any model loads."""
    from openrlhf_psr.errors import UserError

    flags = (("--data.dataset", args.data.dataset), ("--eval.dataset", getattr(args.eval, "dataset", None)))
    for flag, value in flags:
        for source in filter(None, (value or "").split(",")):
            if not Path(source.strip()).exists():
                raise UserError(f"{flag} {source}: expected a search output folder or a JSONL of step pairs, found "
                                "no such file or folder")  # fmt: skip


def _train(args) -> int:
    check_sources(args)
    single_process_env()
    train(args)
    return 0


def main(argv=None) -> int:
    from openrlhf_psr.cli.app import UsageError, execute, report

    try:
        args = parse_args(argv)
    except UsageError as exc:
        report(exc.problems)
        return 2
    return execute(_train, args)


if __name__ == "__main__":
    raise SystemExit(main())
