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

The prompt goes through the model's own forward; each decoding step goes through Decoder, the same layers written out
for one token a row with their weights prepared once (q|k|v and gate|up fused, LoRA merged, bf16 products in
oneDNN's layout on a CPU). It reads each prompt's KV cache once per step for all of its G rows (cascade_attention, as
Hydragen, arXiv 2402.05099, and FlashInfer's cascade attention do): the G rows' queries meet their prompt's keys and
values in one attention, each row's own new tokens in another, merged by log-sum-exp. A copy of the prompt's cache
per row would make each step read G copies of it (at 1,000 prompt tokens and G = 16, more bytes than the weights of
a 135 M model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lora import LoRALinear


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
    shared_length = 0   # when every prompt reuses the shared prefix, decoding reads its cache once for all rows
    if len(common) >= MIN_SHARED_PREFIX:
        shared = prefill(model, common)
        prefixes = [q if reusable(p, q) >= len(common) else shared for p, q in zip(prompts, prefixes)]
        shared_length = len(common) if all(q is shared for q in prefixes) else 0
    reused = [reusable(p, q) for p, q in zip(prompts, prefixes)]
    width = max(reused)
    rest_ids, rest_mask = left_pad([p[n:] for p, n in zip(prompts, reused)], pad_id)
    reused_mask = torch.tensor([[0] * (width - n) + [1] * n for n in reused], dtype=torch.long).view(len(prompts),
                                                                                                   width)
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
    logits, pos = out.logits[:, -1].repeat_interleave(group_size, 0), pos[:, -1].repeat_interleave(group_size, 0)
    prompt_ids, prompt_mask = (x.to(device).repeat_interleave(group_size, 0) for x in left_pad(prompts, pad_id))
    batch = prompt_ids.shape[0]
    decoder = Decoder(model, cache, mask.bool(), group_size, max_new_tokens, shared_length)   # row i: prompt i // G
    tokens, logprobs, done = [], [], torch.zeros(batch, dtype=torch.bool, device=device)
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
        logits = decoder.step(token, pos)
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
# Decoding: one new token for every row, through the model's weights read once per step
# ----------------------------------------------------------------------------------------------
DECODER_MODEL_TYPES = ("llama", "qwen3")   # SmolLM2 is a Llama; the tiny model and Qwen3 are Qwen3s


class Decoder:
    """The decoding steps of one chunk: the model's forward for one new token per row, written out for the decoder
    layers of Llama and Qwen3 (SmolLM2, the tiny model, Qwen3), computing what model(...) computes under the same
    autocast, in fewer operations (tests/test_sampling.py checks logits and completions against model.generate):

      - the weights as the step reads them, made once per chunk: the q|k|v and gate|up projections concatenated
        (one product each instead of three and two), a LoRA adapter merged (W + (alpha / r) B A), cast to the compute
        dtype (autocast's, else the weights'); on a CPU with oneDNN in bf16, reordered once into oneDNN's blocked
        layout (mkldnn._reorder_linear_weight), which a product at 16 rows otherwise redoes at every call: 30 layers
        of smollm2 at 16 rows in 26 ms unfused, 21 ms fused, 15.5 ms fused and reordered, the same products bit for
        bit (docs/scaling.md#roofline);
      - each activation cast to the compute dtype once, where autocast casts it for each product;
      - the prompts' KV cache read once per step for all G rows of a prompt, and the tokens every prompt starts with
        (`shared`, the system prompt and tools of a batch of held-out turns) once for all rows (cascade_attention);
        each row's own new tokens in a buffer written in place.
    The prepared weights are copies while the chunk decodes (the concatenated and reordered ones, up to the weights'
    own bytes) and take ~0.12 s to make for smollm2, against ~50 ms a decoding step.
    """

    def __init__(self, model, prompt_cache: DynamicCache, prompt_mask: torch.Tensor, group_size: int, capacity: int,
                 shared: int = 0):
        config = model.config
        if config.model_type not in DECODER_MODEL_TYPES or getattr(config, "use_sliding_window", False):
            raise ValueError(f"sampling.Decoder writes out the layers of {', '.join(DECODER_MODEL_TYPES)} (full "
                             f"attention), not those of {config.model_type}")
        self.body = model.model
        first = self.body.layers[0]
        device = prompt_mask.device
        self.dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                      else model.get_output_embeddings().weight.dtype)
        self.head_dim = first.self_attn.head_dim
        self.split = [config.num_attention_heads, config.num_key_value_heads, config.num_key_value_heads]   # q|k|v
        rows = prompt_mask.shape[0] * group_size
        self.packed = (device.type == "cpu" and self.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
                       and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.layers = [(self.weight([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], rows),
                        self.weight([layer.self_attn.o_proj], rows),
                        self.weight([layer.mlp.gate_proj, layer.mlp.up_proj], rows),
                        self.weight([layer.mlp.down_proj], rows)) for layer in self.body.layers]
        self.head = self.weight([model.get_output_embeddings()], rows)
        self.fused = device.type == "cpu"   # prompt_attention's flash kernel: torch has it for the CPU
        # per layer, the cascade's levels of prompt keys, each (keys, values, bias) in one dtype as the kernel takes
        # them (the bias's 0 and -inf are exact in any dtype, so it is made in that one once, not cast every step):
        # the first `shared` positions (the same tokens in every prompt: row 0's copy) as one block for all rows, then
        # each prompt's rest for its G rows
        rest = prompt_mask[:, shared:]
        bias = None if rest.all() else torch.zeros(rest.shape, device=device, dtype=self.dtype).masked_fill(
            ~rest, float("-inf"))[:, None, None, :]
        self.levels = []
        for layer in prompt_cache.layers:
            keys, values = layer.keys.to(self.dtype), layer.values.to(self.dtype)
            level = [(keys[:, :, shared:].contiguous(), values[:, :, shared:].contiguous(), bias)]
            if shared:
                level.insert(0, (keys[:1, :, :shared].contiguous(), values[:1, :, :shared].contiguous(), None))
            self.levels.append(level)
        shape = (rows, config.num_key_value_heads, capacity, self.head_dim)   # keys in fp32 as RoPE leaves them,
        self.own_keys = [torch.empty(shape, device=device) for _ in self.body.layers]   # values as v_proj's
        self.own_values = [torch.empty(shape, device=device, dtype=self.dtype) for _ in self.body.layers]
        self.length = 0

    def weight(self, linears: list[torch.nn.Module], rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The products of `linears` as one: their weights (LoRA merged) stacked by output, in the compute dtype,
        and their biases (None when none has one)."""
        with torch.no_grad():
            weights = [m.merged_weight() if isinstance(m, LoRALinear) else m.weight for m in linears]
            biases = [(m.base if isinstance(m, LoRALinear) else m).bias for m in linears]
            weight = torch.cat(weights).to(self.dtype) if len(weights) > 1 else weights[0].to(self.dtype)
            bias = None if all(b is None for b in biases) else torch.cat(
                [torch.zeros(w.shape[0], device=w.device) if b is None else b for w, b in zip(weights, biases)]
            ).to(self.dtype)
            if self.packed:
                weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        return weight, bias

    def linear(self, x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight[0], weight[1], "none", [], "")
        return torch.nn.functional.linear(x, *weight)

    @torch.no_grad()
    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Next-token logits [rows, V] after `token` [rows] at positions `pos` [rows], each row's token appended to
        its own cache. The dtype flow is autocast's: the residual stream, norms, RoPE and attention in fp32, each
        product in the compute dtype."""
        t, self.length = self.length, self.length + 1
        with torch.autocast(token.device.type, enabled=False):
            h = self.body.embed_tokens(token)                                    # [rows, hidden]
            cos, sin = self.body.rotary_emb(h[:, None], pos[:, None])          # [rows, 1, d]: over the heads
            for i, (layer, (qkv, o, gate_up, down)) in enumerate(zip(self.body.layers, self.layers)):
                attn = layer.self_attn
                heads = self.linear(layer.input_layernorm(h).to(self.dtype), qkv).view(len(h), -1, self.head_dim)
                q, k, v = heads.split(self.split, 1)                                  # [rows, heads, d] each
                if hasattr(attn, "q_norm"):                                          # Qwen3 normalises each
                    q, k = attn.q_norm(q), attn.k_norm(k)                            # head before RoPE
                q, k = rope(torch.cat([q, k], 1), cos, sin).split([q.shape[1], k.shape[1]], 1)   # RoPE on both
                self.own_keys[i][:, :, t], self.own_values[i][:, :, t] = k, v
                out = cascade_attention(q.float(), self.own_keys[i][:, :, :t + 1],
                                        self.own_values[i][:, :, :t + 1].float(), self.levels[i], attn.scaling,
                                        self.fused)
                h = h + self.linear(out.reshape(len(h), -1).to(self.dtype), o)
                gate, up = self.linear(layer.post_attention_layernorm(h).to(self.dtype), gate_up).chunk(2, -1)
                h = h + self.linear(layer.mlp.act_fn(gate) * up, down)
            return self.linear(self.body.norm(h).to(self.dtype), self.head)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding as transformers applies it: x cos + rotate_half(x) sin, rotate_half([a, b]) =
    [-b, a] over the two halves of the head dimension."""
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin


def cascade_attention(query: torch.Tensor, own_keys: torch.Tensor, own_values: torch.Tensor,
                      levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], scaling: float,
                      fused: bool) -> torch.Tensor:
    """One decoding step's attention for rows that continue shared prompts: query [rows, heads, d], the rows' own new
    tokens so far [rows, kv heads, t, d], and the prompts' keys in levels, each (keys, values, bias): keys and values
    [B, kv heads, L, d], block b read by the G = rows / B rows b G .. b G + G - 1 (B = 1: tokens every row shares;
    B = prompts: each prompt's tokens, read by its G rows), bias [B, 1, 1, L] 0 on real tokens and -inf on padding
    (None when there is none). Returns [rows, heads, d] in fp32.

    Row r attends to the keys of its block in every level and to its own t keys, o = softmax([s_1, .., s_n, s_r])
    [V_1; ..; V_n; V_r] with s_j = scaling q_r K_j^T + bias_j. Computed as one attention per level merged by their
    log-sum-exps l_j = log sum exp s_j (FlashInfer's cascade merge):
        o = sum_j w_j o_j,   w_j = e^l_j / sum_k e^l_k,
    one level at a time: two parts (o_a, l_a) and (o_b, l_b) are one with o = w o_a + (1 - w) o_b,
    w = sigmoid(l_a - l_b), and l = log(e^l_a + e^l_b). A block's rows (and the rep query heads that share a kv head,
    GQA) are stacked as the queries of one attention (level_attention), so a step reads each block once.
    """
    rows, heads, dim = query.shape
    own = query.reshape(rows, own_keys.shape[1], heads // own_keys.shape[1], dim)                 # [rows, kv, rep, d]
    scores = own @ own_keys.transpose(-1, -2) * scaling                                          # [rows, kv, rep, t]
    out, lse = torch.softmax(scores, -1) @ own_values, scores.logsumexp(-1, keepdim=True)
    for j, (keys, values, bias) in enumerate(levels):   # one level at a time: the parts so far are one, with lse l
        level_out, level_lse = level_attention(own, keys, values, bias, scaling, fused)
        w = torch.sigmoid(level_lse - lse)
        out = w * level_out + (1 - w) * out
        lse = torch.logaddexp(level_lse, lse) if j + 1 < len(levels) else None   # the last level's is not needed
    return out.reshape(rows, heads, dim)


def level_attention(own: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                    scaling: float, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One level of cascade_attention: queries own [rows, kv, rep, d], block b of keys / values [B, kv, L, d] read by
    rows b G .. b G + G - 1 (G = rows / B), stacked as G x rep queries of one attention (prompt_attention). Returns
    each row's output [rows, kv, rep, d] and log-sum-exp [rows, kv, rep, 1]."""
    rows, kv, rep, dim = own.shape
    B = keys.shape[0]
    G = rows // B
    stacked = own.reshape(B, G, kv, rep, dim).transpose(1, 2).reshape(B, kv, G * rep, dim)          # [B, kv, G rep, d]
    out, lse = prompt_attention(stacked, keys, values, bias, scaling, fused)
    return (out.view(B, kv, G, rep, dim).transpose(1, 2).reshape(rows, kv, rep, dim),
            lse.view(B, kv, G, rep).transpose(1, 2).reshape(rows, kv, rep, 1))


def prompt_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                     scaling: float, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scaling q K^T + bias) V and its log-sum-exp log sum exp(scaling q K^T + bias), in fp32 (query
    [P, kv, n, d], keys and values [P, kv, L, d]). fused: torch's flash-attention kernel for the CPU
    (_scaled_dot_product_flash_attention_for_cpu, fp32 accumulation, the query in the keys' dtype; the cascade at 48
    queries on 1,000 bf16 keys 1.75x faster than with the products written out, docs/scaling.md#roofline); else
    (another device) the products written out, which the tests check against it."""
    if fused:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query.to(keys.dtype), keys, values, attn_mask=None if bias is None else bias.to(keys.dtype), scale=scaling)
        return out.float(), lse
    scores = query @ keys.float().transpose(-1, -2) * scaling
    scores = scores if bias is None else scores + bias
    return torch.softmax(scores, -1) @ values.float(), scores.logsumexp(-1)


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
