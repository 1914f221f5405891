"""Batched, grouped generation with a KV cache (used by grpo.py and eval.py).

Prompts are left-padded so every sequence's next token sits in the last column; the attention mask
hides the padding and position ids count only real tokens (pos = cumsum(mask) - 1), so a padded
prompt is computed exactly as it would be alone. Each prompt is prefilled once and its KV cache shared by
its G rows (GRPO's group); rows are generated in chunks of whole groups to bound the cache.
Each sequence stops at its first EOS; completions keep their sampled token ids (never re-tokenised),
with a mask that covers the tokens up to and including that EOS. Sampling reads one uniform number per row and
position (sampling_noise) through the inverse CDF, so a row's completion depends on its prompt and its noise only,
not on which rows share its batch: a chunked rollout, or the ranks of a distributed run (parallel.py) each holding
a share of the groups, sample what one batch would. The KV cache is written in place (PreallocatedLayer), and a
prompt that starts with a cached Prefix (an episode's next turn) computes only the rest of its prompt; the tokens
every prompt of a chunk starts with (the system prompt and tools) are computed once for all of them (share_prefix).

Decoding reads each prompt's KV cache once per step for all of its G rows (cascade_attention, as Hydragen, arXiv
2402.05099, and FlashInfer's cascade attention do): the G rows' queries meet their prompt's keys and values in one
product each, each row's own new tokens apart, under one softmax. A copy of the prompt's
cache per row would make each step read G copies of it (at 1,000 prompt tokens and G = 16, more bytes than the
weights of a 135 M model).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class Prefix:
    """A prompt's KV cache, kept to serve a later prompt that starts with the same tokens (an episode's next turn
    repeats its conversation so far): per layer, keys and values [kv heads, len(ids), head dim]."""
    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def reusable(prompt: list[int], prefix: Prefix | None) -> int:
    """How many leading tokens of `prompt` a cached prefix serves: their common prefix, less at least the prompt's
    last token (its forward gives the next-token logits)."""
    if prefix is None:
        return 0
    n = 0
    for a, b in zip(prompt[:-1], prefix.ids):
        if a != b:
            break
        n += 1
    return n


def common_prefix(prompts: list[list[int]]) -> list[int]:
    """The leading tokens every prompt shares, less at least each prompt's last token (reusable)."""
    shortest = min(len(p) for p in prompts) - 1
    n = 0
    while n < shortest and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return prompts[0][:n]


def prefill(model, ids: list[int]) -> Prefix:
    """The KV cache of `ids` alone (one row, positions 0..n-1): a Prefix any prompt starting with them can reuse."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True, logits_to_keep=1)
    return Prefix(ids, [layer.keys[0] for layer in cache.layers], [layer.values[0] for layer in cache.layers])


# Below this many shared tokens, computing them apart costs more than it saves (one extra forward call).
MIN_SHARED_PREFIX = 16


@dataclass
class Generation:
    prompt_ids: torch.Tensor        # [B, P] left-padded (B = prompts * group_size)
    prompt_mask: torch.Tensor       # [B, P] 1 on real prompt tokens
    completion_ids: torch.Tensor    # [B, T] sampled ids, pad after the first EOS
    completion_mask: torch.Tensor   # [B, T] 1 up to and including the first EOS
    truncated: torch.Tensor         # [B] bool: no EOS within max_new_tokens
    prefixes: list[Prefix] | None = None   # with generate(prefixes=...): each prompt's own KV cache, to reuse
    logprobs: torch.Tensor | None = None   # [B, T] fp32 log softmax(z / T)[token] at sampling time (0 off the mask;
                                           # the full distribution, not top-p's nucleus); None when greedy

    def completion_lists(self) -> list[list[int]]:
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.completion_ids, self.completion_mask)]

    def completion_texts(self, tokenizer) -> list[str]:
        """Each completion as the model wrote it: special tokens kept (a parser must see them), only the EOS that
        ended it dropped (a truncated completion has none)."""
        return [tokenizer.decode(ids if cut else ids[:-1], skip_special_tokens=False)
                for ids, cut in zip(self.completion_lists(), self.truncated.tolist())]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: cumsum(mask) - 1 on real tokens (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sampling_noise(rows: int, max_new_tokens: int, generator: torch.Generator | None) -> torch.Tensor:
    """[rows, max_new_tokens] float64 uniforms in [0, 1): row r's draw for each new token (on the generator's device).
    float64, not float32: a float32 uniform resolves 6e-8, coarser than most of a 151,936-token vocabulary's tail."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(rows, max_new_tokens, generator=generator, device=device, dtype=torch.float64)


def token_cdf(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """[rows, V] float64 cumulative mass C_i = sum_{j <= i} p_j of p = softmax(logits / T), restricted to the nucleus
    when top_p < 1 (the smallest set of most likely tokens whose mass reaches top_p; the rest get p = 0).

    In float64 the sum over a real vocabulary is exact to V x 2^-53 (1.7e-11 for Qwen3's 151,936 tokens); in
    float32 it is off by ~1e-3 and every token with p below ~6e-8 of the running sum has an interval of width 0.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before this token already >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return probs.cumsum(-1)


def next_token(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
    """Greedy when temperature == 0; otherwise the token that the uniforms u [rows] pick by the inverse CDF
    (token_cdf): the first token i with C_i > u x C_V, drawn with probability p_i exactly (to float64 rounding)."""
    if temperature == 0:
        return logits.argmax(-1)
    cdf = token_cdf(logits, temperature, top_p)
    token = torch.searchsorted(cdf, u.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:], right=True).squeeze(-1)
    return token.clamp(max=cdf.shape[-1] - 1)   # u x total rounding onto the last boundary


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, eos_ids: list[int], pad_id: int, group_size: int = 1,
             max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
             noise: torch.Tensor | None = None, rollout_batch: int | None = None,
             prefixes: list[Prefix | None] | None = None, share_prefix: bool = True) -> Generation:
    """Sample `group_size` completions for each prompt (temperature 0 = greedy), with a KV cache; noise
    [prompts x group_size, max_new_tokens] (sampling_noise) is required when temperature > 0.

    prefixes (one per prompt, or None): a cached Prefix whose tokens a prompt starts with is not computed again,
    only the rest of the prompt is prefilled (reusable); the result then holds each prompt's own Prefix.
    share_prefix: the tokens that all prompts of a chunk start with (common_prefix, at least MIN_SHARED_PREFIX) are
    prefilled once and serve each prompt that no longer cached Prefix serves: the same completions, to float rounding.

    Rows go through in chunks of whole groups, at most `rollout_batch` rows each (at least one group), so the
    KV cache holds at most that many rows whatever prompts x group_size is; row i of the result is completion
    i % G of prompt i // G, as without chunks.
    """
    if temperature > 0 and (noise is None or tuple(noise.shape) != (len(prompts) * group_size, max_new_tokens)):
        raise ValueError("sampling (temperature > 0) needs noise of shape [prompts x group_size, max_new_tokens]")
    per_chunk = max(1, (rollout_batch or len(prompts) * group_size) // group_size)
    rows = per_chunk * group_size
    parts = [generate_groups(model, prompts[k:k + per_chunk], eos_ids, pad_id, group_size, max_new_tokens,
                             temperature, top_p, None if noise is None else noise[k * group_size:k * group_size + rows],
                             None if prefixes is None else prefixes[k:k + per_chunk], share_prefix)
             for k in range(0, len(prompts), per_chunk)]
    return concatenate(parts, pad_id)


def generate_groups(model, prompts: list[list[int]], eos_ids: list[int], pad_id: int, group_size: int,
                    max_new_tokens: int, temperature: float, top_p: float, noise: torch.Tensor | None,
                    prefixes: list[Prefix | None] | None, share_prefix: bool) -> Generation:
    """One chunk (generate's arguments): each prompt is prefilled once, and its KV cache and next-token logits are
    shared by its G rows (G times less prefill compute and activation memory than prefilling G copies; decoding reads
    the prompt's cache once a step for all G, cascade_attention). With prefixes, row i's cache is
    [padding][its reused prefix][padding][the rest of its prompt], the mask 0 on the padding: positions count real
    tokens only, so each prompt is computed as it would be alone."""
    device = next(model.parameters()).device
    keep = prefixes is not None   # the caller keeps each prompt's own cache (an episode's next turn reuses it)
    prefixes = prefixes if keep else [None] * len(prompts)
    common = common_prefix(prompts) if share_prefix and len(prompts) > 1 else []
    if len(common) >= MIN_SHARED_PREFIX:
        shared = prefill(model, common)
        prefixes = [q if reusable(p, q) >= len(common) else shared for p, q in zip(prompts, prefixes)]
    reused = [reusable(p, q) for p, q in zip(prompts, prefixes)]
    width = max(reused)
    rest_ids, rest_mask = left_pad([p[n:] for p, n in zip(prompts, reused)], pad_id)
    reused_mask = torch.tensor([[0] * (width - n) + [1] * n for n in reused], dtype=torch.long).view(len(prompts), width)
    rest_ids, mask = rest_ids.to(device), torch.cat([reused_mask, rest_mask], 1).to(device)   # mask: the cache's
    eos = torch.tensor(eos_ids, device=device)
    cache = kv_cache(model, mask.shape[1])
    if width:
        for layer, keys, values in zip(cache.layers, *cached_block(prefixes, reused, width, device)):
            layer.update(keys, values)
    pos = positions(mask)
    out = model(input_ids=rest_ids, attention_mask=mask, position_ids=pos[:, width:], cache=cache, use_cache=True,
                logits_to_keep=1)
    kept = None if not keep else [
        Prefix(p, [layer.keys[i][:, mask[i].bool()] for layer in cache.layers],
               [layer.values[i][:, mask[i].bool()] for layer in cache.layers]) for i, p in enumerate(prompts)]
    prompt_cache = SharedPrompts([layer.keys.float() for layer in cache.layers],   # in cascade_attention's fp32,
                                 [layer.values.float() for layer in cache.layers],  # once, not at every step
                                 mask.bool(), group_size)
    new_tokens = kv_cache(model, max_new_tokens)   # row i of the group batch continues prompt i // G
    logits, pos = out.logits[:, -1].repeat_interleave(group_size, 0), pos[:, -1:].repeat_interleave(group_size, 0)
    prompt_ids, prompt_mask = (x.to(device).repeat_interleave(group_size, 0) for x in left_pad(prompts, pad_id))
    batch = prompt_ids.shape[0]
    tokens, logprobs, done = [], [], torch.zeros(batch, dtype=torch.bool, device=device)
    with attention_implementation(model, CASCADE):
        for t in range(max_new_tokens):
            token = next_token(logits, temperature, top_p, None if noise is None else noise[:, t])
            token = torch.where(done, torch.full_like(token, pad_id), token)   # finished rows emit padding
            tokens.append(token)
            if temperature > 0:   # what the trainer's log-probs of these tokens must reproduce (tests/test_grpo.py)
                logprobs.append(torch.log_softmax(logits.float() / temperature, -1).gather(-1, token[:, None])[:, 0])
            done = done | torch.isin(token, eos)
            if done.all():
                break
            pos = pos + 1
            logits = model(input_ids=token[:, None], position_ids=pos, cache=new_tokens, use_cache=True,
                           shared_prompts=prompt_cache).logits[:, -1]
    completion = torch.stack(tokens, dim=1)
    is_eos = torch.isin(completion, eos)
    # 1 through the first EOS: positions whose count of EOS strictly before them is 0
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()
    completion_mask = (eos_before == 0).long()
    sampled_logprobs = torch.stack(logprobs, dim=1) * completion_mask if logprobs else None
    return Generation(prompt_ids, prompt_mask, completion, completion_mask, ~is_eos.any(-1), kept, sampled_logprobs)


def kv_cache(model, capacity: int) -> DynamicCache:
    """An empty KV cache whose layers hold `capacity` tokens, written in place (PreallocatedLayer)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


# ----------------------------------------------------------------------------------------------
# Cascade attention: a decoding step reads each prompt's KV cache once for all of its G rows
# ----------------------------------------------------------------------------------------------
CASCADE = "tool_grpo_cascade"   # the name under which transformers' attention modules find cascade_attention


@dataclass
class SharedPrompts:
    """The prompts' KV cache while their rows decode: per layer, keys and values [prompts, kv heads, P, head dim]
    in fp32 (left-padded), mask [prompts, P] True on real tokens; rows i * G .. i * G + G - 1 continue prompt i."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    group_size: int


def cascade_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                      scaling: float, dropout: float = 0.0, shared_prompts: SharedPrompts | None = None, **kwargs
                      ) -> tuple[torch.Tensor, None]:
    """One decoding step's attention for rows that continue shared prompts (transformers' attention-function
    signature; query [rows, heads, 1, d], key / value: the rows' own new tokens so far [rows, kv heads, t, d]).

    Row r of prompt p attends to its prompt's P keys and its own t keys:
        s = scaling [q_r K_p^T, q_r K_r^T]   (prompt padding masked to -inf),   o = softmax(s) [V_p; V_r]
    The G rows of a prompt (and the rep query heads that share a kv head, GQA) are stacked as G x rep queries in one
    product with the prompt's keys and one with its values, so a step reads the prompt's cache once, not G times.
    Computed in fp32 whatever the cache's dtype (autocast off), as sdpa accumulates: bf16 scores would round each
    logit to 8 bits (2.3x sdpa's error on the test's inputs).
    """
    rows, heads, _, dim = query.shape
    kv, G, dtype = key.shape[1], shared_prompts.group_size, query.dtype
    rep, P = heads // kv, rows // G
    prompt_keys, prompt_values = shared_prompts.keys[module.layer_idx], shared_prompts.values[module.layer_idx]
    query, key, value = query.float(), key.float(), value.float()
    with torch.autocast(query.device.type, enabled=False):
        stacked = query.reshape(P, G, kv, rep, dim).transpose(1, 2).reshape(P, kv, G * rep, dim)   # [P, kv, G rep, d]
        on_prompt = (stacked @ prompt_keys.transpose(-1, -2)).masked_fill(~shared_prompts.mask[:, None, None, :],
                                                                          float("-inf"))
        on_prompt = on_prompt.view(P, kv, G, rep, -1).transpose(1, 2).reshape(rows, kv, rep, -1)   # [rows, kv, rep, P]
        own = query.reshape(rows, kv, rep, dim)
        weights = torch.softmax(torch.cat([on_prompt, own @ key.transpose(-1, -2)], -1) * scaling, -1)
        width = prompt_keys.shape[-2]
        from_prompt = weights[..., :width].reshape(P, G, kv, rep, width).transpose(1, 2).reshape(P, kv, G * rep, width)
        out = (from_prompt @ prompt_values).view(P, kv, G, rep, dim).transpose(1, 2).reshape(rows, kv, rep, dim)
        out = out + weights[..., width:] @ value
    return out.reshape(rows, 1, heads, dim).to(dtype), None


AttentionInterface.register(CASCADE, cascade_attention)


@contextmanager
def attention_implementation(model, name: str):
    """Within the block, the model's attention modules call the attention function registered as `name`."""
    before = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield model
    finally:
        model.config._attn_implementation = before


def cached_block(prefixes: list[Prefix | None], reused: list[int], width: int, device
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the reused prefixes as one [rows, kv heads, width, head dim] block, each right-aligned (zeros
    before it, masked)."""
    some = next(q for q, n in zip(prefixes, reused) if n)
    keys, values = [], []
    for layer in range(len(some.keys)):
        k = some.keys[layer].new_zeros(len(reused), some.keys[layer].shape[0], width, some.keys[layer].shape[2])
        v = torch.zeros_like(k)
        for i, (q, n) in enumerate(zip(prefixes, reused)):
            if n:
                k[i, :, width - n:], v[i, :, width - n:] = q.keys[layer][:, :n], q.values[layer][:, :n]
        keys.append(k.to(device)), values.append(v.to(device))
    return keys, values


class PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in a buffer allocated at its first update for `capacity` tokens: each new token is
    written in place, where transformers' DynamicLayer concatenates, copying the whole cache at every step. The
    keys and values it returns are views of the filled part: what DynamicLayer would hold."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            shape = (key_states.shape[0], key_states.shape[1], self.capacity, key_states.shape[3])
            self.key_buffer, self.value_buffer = key_states.new_empty(shape), value_states.new_empty(shape)
            self.device, self.is_initialized = key_states.device, True
        n = key_states.shape[-2]
        self.key_buffer[:, :, self.length:self.length + n] = key_states
        self.value_buffer[:, :, self.length:self.length + n] = value_states
        self.length += n
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]
        return self.keys, self.values


def concatenate(parts: list[Generation], pad_id: int) -> Generation:
    """The chunks' rows in order, prompts left-padded and completions right-padded to common widths."""
    if len(parts) == 1:
        return parts[0]
    P = max(g.prompt_ids.shape[1] for g in parts)
    T = max(g.completion_ids.shape[1] for g in parts)

    def pad(x: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
        extra = (width - x.shape[1], 0) if left else (0, width - x.shape[1])
        return torch.nn.functional.pad(x, extra, value=value)
    return Generation(torch.cat([pad(g.prompt_ids, P, pad_id, True) for g in parts]),
                      torch.cat([pad(g.prompt_mask, P, 0, True) for g in parts]),
                      torch.cat([pad(g.completion_ids, T, pad_id, False) for g in parts]),
                      torch.cat([pad(g.completion_mask, T, 0, False) for g in parts]),
                      torch.cat([g.truncated for g in parts]),
                      None if parts[0].prefixes is None else [q for g in parts for q in g.prefixes],
                      None if parts[0].logprobs is None else torch.cat([pad(g.logprobs, T, 0, False) for g in parts]))
