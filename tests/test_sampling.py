import numpy as np
import pytest
import torch

import grpo
from model import load
from sampling import generate, next_token, sampling_noise


@pytest.fixture(scope="module")
def tiny():
    model, tok = load("tiny-random")
    return model.eval(), tok


def prompts_of(tok):
    texts = ["<|im_start|>user\nWhat is the status of order W12345?<|im_end|>\n<|im_start|>assistant\n",
             "hello", "<|im_start|>user\nHi!<|im_end|>\n"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def hf_greedy(model, tok, prompts, eos, n):
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    return out[:, enc["input_ids"].shape[1]:]


def test_greedy_equals_hf_generate(tiny):
    model, tok = tiny
    prompts = prompts_of(tok)
    ours = generate(model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=24,
                    temperature=0)
    assert torch.equal(ours.completion_ids, hf_greedy(model, tok, prompts, tok.eos_token_id, 24))


def test_stops_per_sequence_at_eos_and_masks_through_it(tiny):
    model, tok = tiny
    prompts = prompts_of(tok)
    free = generate(model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=12,
                    temperature=0)
    eos = int(free.completion_ids[0, 3])  # pretend row 0's 4th greedy token is EOS
    first = [row.tolist().index(eos) if eos in row.tolist() else None for row in free.completion_ids]
    gen = generate(model, prompts, eos_ids=[eos], pad_id=tok.pad_token_id, max_new_tokens=12, temperature=0)
    for i, stop in enumerate(first):
        if stop is None:
            assert gen.truncated[i] and gen.completion_mask[i].sum() == gen.completion_ids.shape[1]
        else:
            assert not gen.truncated[i]
            assert gen.completion_mask[i].tolist() == [1] * (stop + 1) + [0] * (gen.completion_ids.shape[1] - stop - 1)
            assert (gen.completion_ids[i, stop + 1:] == tok.pad_token_id).all()
    assert first[0] <= 3 and gen.completion_lists()[0] == free.completion_ids[0, :first[0] + 1].tolist()
    hf = hf_greedy(model, tok, prompts, eos, 12)
    assert torch.equal(gen.completion_ids, hf[:, :gen.completion_ids.shape[1]])


def test_left_padding_does_not_change_a_prompts_completion(tiny):
    model, tok = tiny
    prompts = prompts_of(tok)
    batch = generate(model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=10,
                     temperature=0)
    alone = generate(model, [prompts[1]], eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=10,
                     temperature=0)
    assert torch.equal(batch.completion_ids[1], alone.completion_ids[0])


def test_groups_and_seeded_sampling(tiny):
    model, tok = tiny
    prompts = prompts_of(tok)[:2]

    def sample(seed):
        noise = sampling_noise(8, 8, torch.Generator().manual_seed(seed))
        return generate(model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=4,
                        max_new_tokens=8, temperature=1.0, top_p=0.9, noise=noise)
    a, b, c = sample(1), sample(1), sample(2)
    assert a.completion_ids.shape[0] == 8
    assert torch.equal(a.completion_ids, b.completion_ids) and not torch.equal(a.completion_ids, c.completion_ids)
    for i in range(8):  # rows i*G .. i*G+G-1 share prompt i
        assert torch.equal(a.prompt_ids[i], a.prompt_ids[(i // 4) * 4])
    assert len({tuple(r.tolist()) for r in a.completion_ids[:4]}) > 1  # a group's samples differ


def test_top_p_keeps_the_nucleus_only():
    # probs [0.5, 0.3, 0.15, 0.05]: top_p 0.7 keeps {0, 1} (mass before token 2 is 0.8 >= 0.7)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = torch.rand(300, generator=torch.Generator().manual_seed(0))
    seen = {int(next_token(logits, 1.0, 0.7, u[i:i + 1])) for i in range(300)}
    assert seen == {0, 1}
    assert int(next_token(logits, 0.0, 1.0, None)) == 0


def test_inverse_cdf_sampling_has_the_softmax_frequencies():
    # 20,000 rows at once: each token's frequency is within 4 standard errors sqrt(p (1 - p) / n) of p
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    n = 20_000
    tokens = next_token(torch.log(p).expand(n, 5), 1.0, 1.0, torch.rand(n, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.all((freq - p).abs() <= 4 * torch.sqrt(p * (1 - p) / n))
    assert freq[4] == 0                                                     # probability 0: never drawn
    # the cut points: u just below 0.5 gives token 0, just above gives token 1; u = 0.99 gives token 3
    assert next_token(torch.log(p)[None].expand(3, 5), 1.0, 1.0, torch.tensor([0.4999, 0.5001, 0.99])).tolist() \
        == [0, 1, 3]


def test_a_rows_completion_does_not_depend_on_its_batch(tiny):
    model, tok = tiny
    prompts = prompts_of(tok)[:3]
    common = dict(eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=2, max_new_tokens=8,
                  temperature=1.0)
    noise = sampling_noise(6, 8, torch.Generator().manual_seed(0))
    together = generate(model, prompts, noise=noise, **common)
    for i in range(3):   # prompt i alone, with its rows' noise: what a rank holding only that group would sample
        alone = generate(model, [prompts[i]], noise=noise[2 * i:2 * i + 2], **common)
        width = alone.completion_ids.shape[1]
        assert torch.equal(together.completion_ids[2 * i:2 * i + 2, :width], alone.completion_ids)


QWEN3_VOCAB = 151_936


def adversarial_logits(seed: int) -> torch.Tensor:
    """A real vocabulary's shape: eight tokens hold nearly all the mass, the tail spans ~40 orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(QWEN3_VOCAB, generator=g) * 4
    logits[torch.randperm(QWEN3_VOCAB, generator=g)[:8]] += 25
    return logits


def exact_softmax(logits: torch.Tensor) -> np.ndarray:
    """The reference, apart from torch: numpy's long double (64-bit mantissa on x86-64, 113 on aarch64)."""
    z = logits.numpy().astype(np.longdouble)
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sampler_is_the_softmax_on_a_real_vocabulary(seed):
    """Total variation from the exact softmax within float64 rounding (V x 2^-53 = 1.7e-11), and every token with
    p > 1e-13 drawable: a float32 cumulative sum over 151,936 tokens is off by ~1e-3 and cannot draw the tail."""
    from sampling import token_cdf
    logits = adversarial_logits(seed)
    p = exact_softmax(logits)
    cdf = token_cdf(logits[None], 1.0, 1.0)[0]
    assert cdf.dtype == torch.float64
    drawn = np.diff(cdf.numpy(), prepend=0.0).astype(np.longdouble) / cdf[-1].item()
    assert 0.5 * np.abs(drawn - p).sum() < 1e-10
    assert np.all(drawn[p > 1e-13] > 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_uniform_inside_a_tokens_interval_draws_that_token(seed):
    """Inverse CDF against the exact cumulative mass: u at the middle of token i's interval [C_(i-1), C_i) must
    draw i, for the heaviest tokens and for tail tokens down to p = 1e-9 (a float32 uniform resolves 6e-8)."""
    logits = adversarial_logits(seed)
    p = exact_softmax(logits)
    upper = np.cumsum(p)
    order = np.argsort(p)
    tail = order[np.searchsorted(p[order], 1e-9):]
    tokens = np.concatenate([tail[:96], tail[-32:], np.random.default_rng(seed).choice(tail, 128)])
    middle = torch.tensor((upper[tokens] - p[tokens] / 2).astype(np.float64))
    drawn = torch.cat([next_token(logits.expand(32, -1), 1.0, 1.0, middle[k:k + 32]) for k in range(0, len(tokens), 32)])
    assert drawn.tolist() == tokens.tolist()


def test_sampling_noise_has_float64_resolution():
    u = sampling_noise(64, 32, torch.Generator().manual_seed(0))
    assert u.dtype == torch.float64 and bool((u != u.float().double()).any())
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0


@pytest.mark.parametrize("top_p", ["0", "-0.1", "1.5"])
def test_top_p_outside_the_unit_interval_is_refused(top_p, capsys):
    with pytest.raises(SystemExit) as stop:
        grpo.parse_args(["--top-p", top_p])
    assert stop.value.code == 2 and "--top-p" in capsys.readouterr().err
    with pytest.raises(ValueError, match="top_p"):
        next_token(torch.zeros(1, 4), 1.0, float(top_p), torch.zeros(1))


def test_the_preallocated_cache_layer_holds_what_transformers_dynamic_layer_holds():
    from transformers.cache_utils import DynamicLayer

    from sampling import PreallocatedLayer
    g = torch.Generator().manual_seed(0)
    ours, theirs = PreallocatedLayer(capacity=5 + 1 + 1 + 2 + 3), DynamicLayer()
    prompt = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(ours.update(*prompt), theirs.update(*prompt)))
    for n in (1, 1, 2):   # then new tokens, appended
        k, v = torch.randn(2, 3, n, 4, generator=g), torch.randn(2, 3, n, 4, generator=g)
        assert all(torch.equal(a, b) for a, b in zip(ours.update(k, v), theirs.update(k, v)))
        assert ours.get_seq_length() == theirs.get_seq_length()
    assert ours.keys.shape == (2, 3, 9, 4) and ours.key_buffer.shape == (2, 3, 12, 4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_reused_prefix_gives_the_completions_of_a_full_prefill(temperature):
    model, tok = load("tiny")
    model.eval()
    first = prompts_of(tok)
    # the next turn of each conversation: what came before, then more; the third shares only part of its prefix
    later = [first[0] + tok(" It shipped.<|im_end|>\n<|im_start|>assistant\n")["input_ids"], first[1] + [7, 8, 9],
             first[2][:3] + [11, 12]]
    eos = [tok.eos_token_id]

    def run(prompts, prefixes):
        noise = sampling_noise(len(prompts), 12, torch.Generator().manual_seed(3)) if temperature else None
        return generate(model, prompts, eos_ids=eos, pad_id=tok.pad_token_id, max_new_tokens=12,
                        temperature=temperature, noise=noise, prefixes=prefixes)
    cached = run(first, [None] * 3).prefixes
    assert [q.ids for q in cached] == first and cached[0].keys[0].shape[1] == len(first[0])
    fresh, reused = run(later, None), run(later, cached)
    assert torch.equal(fresh.completion_ids, reused.completion_ids)
    assert torch.equal(fresh.prompt_ids, reused.prompt_ids) and torch.equal(fresh.prompt_mask, reused.prompt_mask)
    # the cache of a prompt reused in full is the cache of its own prefill
    again = run(later, reused.prefixes).prefixes
    assert all(torch.allclose(a, b, atol=1e-5) for q, r in zip(again, reused.prefixes) for a, b in zip(q.keys, r.keys))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_prefix_shared_by_every_prompt_is_computed_once_and_changes_no_completion(temperature):
    """Prompts that start alike (a 40-token system prompt and tools, then each its own conversation), in groups of
    G = 2: with share_prefix the shared tokens are prefilled once, not once per prompt, and every completion is the
    one a full prefill of each prompt gives (greedy, and sampled with the same noise)."""
    model, tok = load("tiny")
    model.eval()
    g = torch.Generator().manual_seed(4)
    system = torch.randint(5, 4000, (40,), generator=g).tolist()
    prompts = [system + torch.randint(5, 4000, (n,), generator=g).tolist() for n in (3, 11, 6)]
    computed = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: computed.append(i[0].numel()))

    def run(share):
        computed.clear()
        noise = sampling_noise(6, 10, torch.Generator().manual_seed(3)) if temperature else None
        out = generate(model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=2,
                       max_new_tokens=10, temperature=temperature, noise=noise, share_prefix=share)
        return out, computed[:2 if share else 1]
    (alone, prefill_alone), (shared, prefill_shared) = run(False), run(True)
    hook.remove()
    assert prefill_alone == [3 * (40 + 11)]                      # three prompts left-padded to the longest
    assert prefill_shared == [40, 3 * 11]                        # the shared 40 once, then each prompt's rest
    assert torch.equal(alone.completion_ids, shared.completion_ids)
    assert torch.equal(alone.completion_mask, shared.completion_mask) and torch.equal(alone.prompt_ids, shared.prompt_ids)
    if temperature:
        assert torch.allclose(alone.logprobs, shared.logprobs, atol=1e-5)


@pytest.mark.parametrize("fused, prompt_dtype", [(True, torch.float32), (False, torch.float32),
                                                  (False, torch.bfloat16)])
@pytest.mark.parametrize("shared", [0, 5])
def test_cascade_attention_is_softmax_over_the_prompt_and_the_rows_own_tokens(fused, prompt_dtype, shared):
    """Two prompts (one left-padded by 2) x G = 3 rows, 4 query heads on 2 kv heads (GQA), with or without 5 tokens
    before them that every row shares (a level of one block): the cascade's merged output equals, row by row,
    attention over the concatenation [the shared tokens, its prompt's real tokens, its own tokens] computed directly
    in float64 (softmax(q k^T / sqrt(d)) v, query head h reading kv head h // 2). bf16: the prompt's keys, values and
    padding bias stored in bf16 as Decoder stores them under bf16, read by the written-out products a GPU runs (the
    reference takes the same bf16 values, so only fp32 rounding separates the two)."""
    from sampling import cascade_attention
    g = torch.Generator().manual_seed(0)
    P, G, H, KV, d, L, t = 2, 3, 4, 2, 8, 6, 4
    q = torch.randn(P * G, H, d, generator=g)
    prompt_k, prompt_v = (torch.randn(P, KV, L, d, generator=g).to(prompt_dtype) for _ in range(2))
    shared_k, shared_v = (torch.randn(1, KV, shared, d, generator=g).to(prompt_dtype) for _ in range(2))
    own_k, own_v = torch.randn(P * G, KV, t, d, generator=g), torch.randn(P * G, KV, t, d, generator=g)
    mask = torch.ones(P, L, dtype=torch.bool)
    mask[1, :2] = False
    bias = torch.zeros(P, 1, 1, L, dtype=prompt_dtype).masked_fill(~mask[:, None, None, :], float("-inf"))
    levels = [(shared_k, shared_v, None)] * bool(shared) + [(prompt_k, prompt_v, bias)]
    out = cascade_attention(q, own_k, own_v, levels, d ** -0.5, fused)
    assert out.shape == (P * G, H, d)
    for r in range(P * G):
        p = r // G
        for h in range(H):
            keys = torch.cat([shared_k[0, h // 2], prompt_k[p, h // 2][mask[p]], own_k[r, h // 2]]).double()
            values = torch.cat([shared_v[0, h // 2], prompt_v[p, h // 2][mask[p]], own_v[r, h // 2]]).double()
            weights = torch.softmax(keys @ q[r, h].double() / d ** 0.5, dim=0)
            assert torch.allclose(out[r, h].double(), weights @ values, atol=1e-6)


def random_llama():
    """A small random Llama (SmolLM2's architecture: no per-head norm, tied embeddings, GQA 6 heads on 2), its weights
    drawn 10x wider than transformers' default (0.02) so that attention moves the logits by O(1)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                                        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                                        tie_word_embeddings=True, initializer_range=0.2)).eval()


@pytest.mark.parametrize("architecture", ["qwen3", "llama", "qwen3+lora"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16, products not reordered"])
def test_the_decoder_computes_the_models_own_next_token_logits(architecture, precision, monkeypatch):
    """Decoder.step against the model's own forward on a transformers KV cache, step by step (G = 3 rows after one
    20-token prompt, 6 steps, under the same autocast, bf16 with the weights model.for_inference stores).
    Tolerances, relative to the largest logit: fp32 1e-5 -- the two round the same sums in another order (fused
    products, the flash kernel's blocked softmax), a few fp32 ulps (6e-8) per operation, measured <= 2e-6; bf16
    2^-5 -- the head rounds logits to bf16 (8 bits, an ulp up to 2^-7 of the value), so an fp32 difference upstream
    can move them a few ulps. A wrong position, head or weight moves logits by O(1). "products not reordered": bf16
    through plain products, as on a device without oneDNN (a GPU)."""
    from transformers import DynamicCache

    from lora import inject_lora, lora_layers
    from model import autocast, for_inference
    from sampling import Decoder, kv_cache
    if precision == "bf16, products not reordered":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        precision = "bf16"
    if architecture == "llama":
        model = random_llama()
    else:
        model = load("tiny-random")[0].eval()
        if architecture == "qwen3+lora":
            if precision == "bf16":
                pytest.skip("bf16 decodes from a merged copy (model.sampling_copy), not from adapters")
            inject_lora(model, rank=4, alpha=8)
            with torch.no_grad():
                for layer in lora_layers(model).values():
                    layer.lora_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    model = for_inference(model, precision)
    g = torch.Generator().manual_seed(0)
    prompt, G = torch.randint(5, 250, (1, 20), generator=g), 3
    worst = 0.0
    with torch.no_grad(), autocast(precision, "cpu"):
        cache = kv_cache(model, 20)
        model(input_ids=prompt, cache=cache, use_cache=True)
        theirs_cache = DynamicCache(config=model.config)
        model(input_ids=prompt.repeat(G, 1), cache=theirs_cache, use_cache=True)
        decoder = Decoder(model, cache, torch.ones(1, 20, dtype=torch.bool), G, 6)
        assert decoder.packed == (precision == "bf16" and torch.backends.mkldnn.is_available()
                                  and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        token, pos = torch.randint(5, 250, (G,), generator=g), torch.full((G,), 20)
        for _ in range(6):
            ours = decoder.step(token, pos).float()
            theirs = model(input_ids=token[:, None], position_ids=pos[:, None], cache=theirs_cache,
                           use_cache=True).logits[:, -1].float()
            worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))
            token, pos = theirs.argmax(-1), pos + 1
    assert worst <= (1e-5 if precision == "fp32" else 2 ** -5), worst


def test_the_decoder_refuses_an_architecture_it_does_not_write_out():
    from types import SimpleNamespace

    from sampling import Decoder
    for config in (SimpleNamespace(model_type="gemma2"), SimpleNamespace(model_type="qwen3", use_sliding_window=True)):
        with pytest.raises(ValueError, match=config.model_type):
            Decoder(SimpleNamespace(config=config), None, torch.ones(1, 4, dtype=torch.bool), 1, 4)
