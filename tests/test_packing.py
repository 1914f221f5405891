import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from cli import BadInput
from model import autocast, load
from packing import hidden_states, pack, tree_size

ROWS = [[[5, 6, 7, 8, 9], [5, 6, 7, 10], [5, 6, 7, 10], [5, 6], [11, 12, 13]],   # shared, duplicate, prefix, apart
        [[20, 21, 22]]]                                                           # a short row: padded


def test_the_prefix_tree_holds_each_shared_token_once():
    # by hand: 5 6 7 8 9 | 10 (after 5 6 7) | 11 12 13 = 9 nodes; the duplicate and the prefix add none
    assert tree_size(ROWS[0]) == 9
    packed = pack(ROWS, pad_id=0)
    assert packed.input_ids.shape == (2, 9) and packed.n_sequence_tokens == 5 + 4 + 4 + 2 + 3 + 3
    assert packed.input_ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 0, 1, 2]
    assert packed.nodes[1] == packed.nodes[2] == [0, 1, 2, 5] and packed.nodes[5] == [9, 10, 11]
    padded = pack([[s] for row in ROWS for s in row], pad_id=0)   # a row per sequence: a right-padded batch
    assert padded.input_ids.shape == (6, 5) and padded.input_ids[3].tolist() == [5, 6, 0, 0, 0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])   # eager: what a config.json's attn_implementation may pick
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_sequence_of_a_packed_row_computes_what_it_computes_alone(precision, attention):
    model, _ = load("tiny-random")
    reference, _ = load("tiny-random")   # the same weights (seeded) under the default sdpa: each sequence alone
    model.set_attn_implementation(attention)
    packed = pack(ROWS, pad_id=0)
    with torch.no_grad(), autocast(precision, "cpu"):
        every_node = torch.arange(packed.input_ids.numel())
        hidden = hidden_states(model, packed, every_node).float()
        sequences = [s for row in ROWS for s in row]
        for k, seq in enumerate(sequences):
            alone = reference.get_decoder()(input_ids=torch.tensor([seq])).last_hidden_state[0].float()
            # fp32: the same sums in another order; bf16 rounds each product to 8 bits of mantissa
            tolerance = 1e-5 if precision == "fp32" else 5e-2 * alone.abs().max().item()
            assert torch.allclose(hidden[packed.nodes[k]], alone, atol=tolerance), (k, precision, attention)


def mask_ignoring_attention(module, query, key, value, attention_mask, **kwargs):
    """A stand-in for flash attention, which reads no [R, 1, L, L] mask: causal over the whole packed row."""
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


@pytest.mark.parametrize("attention", ["mask_ignoring", "flash_attention_2"])
def test_an_attention_that_cannot_read_the_tree_mask_is_refused_by_name(attention, monkeypatch):
    # unrefused, the stand-in's sequences after the first of a row would attend to the other branches' tokens
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "mask_ignoring", mask_ignoring_attention)
    model, _ = load("tiny-random")
    model.config._attn_implementation = attention   # as a config.json's "attn_implementation" would set it
    packed = pack(ROWS, pad_id=0)
    with pytest.raises(BadInput, match=f"attn_implementation '{attention}'.*sdpa"):
        hidden_states(model, packed, torch.arange(packed.input_ids.numel()))


def test_the_gradient_through_shared_nodes_is_the_same_bits_every_time():
    # 16 identical completions of one prompt: every node serves 16 sequences, so the gathered indices repeat
    model, _ = load("tiny-random")
    sequence = torch.randint(5, 4000, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    packed = pack([[sequence] * 16], pad_id=0)
    at = torch.tensor([j for nodes in packed.nodes for j in nodes])
    weights = torch.randn(len(at), model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    gradients = []
    for _ in range(6):
        model.zero_grad()
        (hidden_states(model, packed, at) * weights).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert all(torch.equal(g, gradients[0]) for g in gradients[1:])
