"""SFT with ``--ds.packing_samples`` on CPU (sdpa, CPU patch 0004): packed rows never see each other.

Upstream's ``Actor`` packs a padded micro batch into one row with restarting position ids and no attention mask;
transformers >= 5 turns those position ids into a block-diagonal causal mask for sdpa. If it did not, every row
after the first would attend to the rows before it and its log-probabilities would change: this test compares the
packed forward with the padded one, row by row, in fp32-accumulated bf16 on the tiny model.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_packed_forward_equals_padded_forward(tiny_model):
    import torch
    from openrlhf.models import Actor

    torch.manual_seed(0)
    padded = Actor(tiny_model, attn_implementation="sdpa", param_dtype="bf16")
    packed = Actor(tiny_model, attn_implementation="sdpa", param_dtype="bf16", packing_samples=True)
    packed.model.load_state_dict(padded.model.state_dict())
    lengths = [9, 4, 7]
    width = max(lengths)
    vocab = padded.model.config.vocab_size
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):  # right padding, as upstream's SFT collate writes it
        ids[row, :n] = torch.randint(3, vocab, (n,))
        mask[row, :n] = 1
    with torch.no_grad():
        a = padded(ids, attention_mask=mask, return_logprobs=True)
        b = packed(ids, attention_mask=mask, return_logprobs=True)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(b[row, : n - 1], a[row, : n - 1], atol=2e-2, rtol=0)
    # and a model that let rows see each other would differ: shift row 1 onto row 0's end
    joined = torch.cat([ids[0, : lengths[0]], ids[1, : lengths[1]]]).unsqueeze(0)
    with torch.no_grad():
        leaked = padded(joined, attention_mask=torch.ones_like(joined), return_logprobs=True)
    assert (leaked[0, lengths[0] : lengths[0] + lengths[1] - 1] - a[1, : lengths[1] - 1]).abs().max() > 2e-2
