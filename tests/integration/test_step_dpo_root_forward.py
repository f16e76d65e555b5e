"""The step-DPO forward goes through the model's root module (so DeepSpeed ZeRO-3's start/end-of-forward hooks,
which drive its parameter prefetch, fire), while the head still runs only at the scored step positions and the
log-probs are exactly those of the decoder-then-head computation it replaced."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration


def _batch(n: int = 3):
    import torch  # noqa: F401  (the dataset's collate returns tensors)

    from openrlhf_psr.data.step_pairs import StepPair, StepPairDataset

    rng = random.Random(1)
    pairs = [
        StepPair(
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(3, 30))),
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(1, 9))),
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(1, 9))),
            str(k),
        )
        for k in range(n)
    ]
    dataset = StepPairDataset(pairs, max_len=1000, pad_token_id=0)
    ids, segments, positions, _, _ = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
    return ids, segments, positions


def test_branch_logps_runs_the_root_forward_with_the_head_only_at_step_positions(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from openrlhf_psr.trainers.shared_prefix import branch_logps, scored_positions, tree_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    ids, segments, positions = _batch()
    root_calls, head_rows = [], []
    model.register_forward_hook(lambda module, args, out: root_calls.append(1))
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape))

    chosen, rejected, n_chosen, n_rejected = branch_logps(model, ids, segments, positions)
    assert root_calls == [1]  # the root module's forward ran (its hooks: where ZeRO-3 starts and ends a trace)
    rows, preds, targets, branch = scored_positions(segments)
    assert head_rows == [torch.Size([1, len(rows), model.config.hidden_size])]  # N scored positions, not B x L
    assert not any(model.get_decoder()._forward_hooks.values())  # the scoring hook is removed again

    # the same numbers, bit for bit, as the decoder + head computation this forward replaced
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids, attention_mask=tree_mask(segments, torch.float32),
                                     position_ids=positions).last_hidden_state  # fmt: skip
        logp = torch.log_softmax(model.get_output_embeddings()(hidden[rows, preds]).float(), -1)
        token = logp.gather(-1, ids[rows, targets][:, None]).squeeze(-1)
    for got, kind in ((chosen, 2), (rejected, 3)):
        sel = branch == kind
        assert torch.equal(got.detach(), torch.zeros(ids.shape[0]).index_add(0, rows[sel], token[sel]))
    assert n_chosen.sum() + n_rejected.sum() == len(rows)

    # gradients reach the decoder and the head through the root forward
    (chosen - rejected).sum().backward()
    assert model.get_output_embeddings().weight.grad is not None
    assert model.get_decoder().layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


ZERO3_CHILD = textwrap.dedent(
    """
    import json, sys
    import deepspeed, torch
    from transformers import AutoModelForCausalLM
    from openrlhf_psr.trainers.shared_prefix import branch_logps
    sys.path.insert(0, sys.argv[2])
    from test_step_dpo_root_forward import _batch

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="sdpa")
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
              "optimizer": {"type": "SGD", "params": {"lr": 1e-3}}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
    ids, segments, positions = _batch()
    for _ in range(3):
        chosen, rejected, _, _ = branch_logps(engine, ids, segments, positions)
        engine.backward((rejected - chosen).mean())
        engine.step()
    print("TRACE " + json.dumps(coordinator.is_complete_trace()))
    """
)


def test_under_zero3_the_forward_completes_deepspeeds_parameter_trace(tiny_model, tmp_path):
    """ZeRO-3 prefetches only once it has recorded a complete trace, from the root module's start-of-forward hook to
    the next one; a forward that skips the root module never gets there."""
    from pathlib import Path

    from openrlhf_psr.preflight import cpu_distributed_env

    script = tmp_path / "child.py"
    script.write_text(ZERO3_CHILD)
    proc = subprocess.run([sys.executable, str(script), tiny_model, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600, env=cpu_distributed_env())  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("TRACE ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
    assert lines[-1] == "TRACE true"
