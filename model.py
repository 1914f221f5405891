"""Load and save models: the offline tiny default, or any Hugging Face directory / hub id.

    load("tiny")          the pretrained tiny base (committed in assets/tiny); plays vanilla Qwen3-1.7B
    load("tiny-random")   the same architecture and tokenizer, randomly initialised (seeded)
    load(DIR or HUB_ID)   AutoModelForCausalLM + AutoTokenizer, e.g. Qwen/Qwen3-1.7B

Every directory `save` writes (config, safetensors weights, tokenizer) is itself a valid `--model`.

The tiny tokenizer is a byte-level BPE trained on the demo corpus of all domains with *no* regex
pre-split (merges cross word boundaries) and digits kept as single tokens, as Qwen's own tokenizer
does: repeated boilerplate (system prompt, tool schemas) collapses into a few tokens, and copying an id
becomes a per-digit task a small model can learn. It carries Qwen3's special tokens and a chat template
written here that renders exactly as the real Qwen3 template on our conversations (tests/test_template.py).

CLI:  python model.py build-tokenizer      python model.py info NAME_OR_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
TINY_DIR = ASSETS / "tiny"

# Qwen3's special tokens, in Qwen's order; <think> and the tool tags are added but not "special"
# (skip_special_tokens keeps them), as in the real tokenizer.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
TINY_VOCAB_SIZE = 4096

# ~2.6 M parameters: small enough that pretraining makes thousands of steps in an hour on 2 CPU cores,
# large enough (4 layers, 4 heads) to learn induction-style copying of ids from the context.
TINY_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=48, max_position_embeddings=2048, rope_theta=10000.0,
                   rms_norm_eps=1e-6, tie_word_embeddings=True)

# Same output as Qwen3's template on tool conversations (system, tools, user, assistant with
# reasoning / tool calls, tool responses), written as one readable block.
CHAT_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within ' }}
    {{- '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{#- Reasoning is rendered only for assistant turns after the last real user query. #}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for m in messages %}
    {%- if m.role == 'user' and not (m.content.startswith('<tool_response>') and m.content.endswith('</tool_response>')) %}
        {%- set ns.last_query = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for m in messages %}
    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- elif m.role == 'assistant' %}
        {%- set content = m.content %}
        {%- if m.reasoning_content is defined and m.reasoning_content is not none %}
            {%- set reasoning = m.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- else %}
            {%- set reasoning = '' %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' }}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- content }}
        {%- endif %}
        {%- for call in m.tool_calls or [] %}
            {%- if content or not loop.first %}{{- '\n' }}{%- endif %}
            {%- set f = call.function if call.function else call %}
            {{- '<tool_call>\n{"name": "' + f.name + '", "arguments": ' }}
            {{- (f.arguments if f.arguments is string else f.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif m.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}
{%- endif %}
""".strip()


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says what to do instead."""


def tokenizer_corpus(per_domain: int = 150, seed: int = 0) -> list[str]:
    """Rendered conversations of every demo domain (with and without reasoning) to train the tokenizer on."""
    import random

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from data import convert_record
    from worlds import DOMAINS, conversation

    # A throwaway tokenizer object carries the template so transformers renders it exactly as at run time.
    renderer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), chat_template=CHAT_TEMPLATE)
    rng = random.Random(seed)
    texts = []
    for domain in DOMAINS.values():
        db = domain.make_db(rng, 100)
        customers = list(db[domain.customers].values())
        for k in range(per_domain):
            record = conversation(domain, db, rng.choice(customers), rng, think=k % 5 == 0)
            conv = convert_record(record, domain.name, domain.name)
            for sample in conv.turn_samples()[-2:]:
                chat = sample.chat() + [sample.target.message()]
                texts.append(renderer.apply_chat_template(chat, tools=sample.template_tools(), tokenize=False))
    return texts


def build_tokenizer(out_dir: str | Path = TOKENIZER_DIR, vocab_size: int = TINY_VOCAB_SIZE):
    """Train the tiny tokenizer deterministically on the demo corpus and save it to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # No regex split: merges may cross words. Digits are split off one by one before byte-level mapping.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + ADDED_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    # Qwen3 marks the think / tool tags as added but not special, so decoding with skip_special_tokens
    # keeps them (the trainer adds every reserved token as special; the ids stay as they are).
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] in SPECIAL_TOKENS
    tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(tokenizer):
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)


def tiny_random(seed: int = 0):
    """The tiny Qwen3 architecture with the tiny tokenizer, randomly initialised from `seed`."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_config(tokenizer)), tokenizer


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_pretrained(source: str, dtype: torch.dtype):
    """AutoModelForCausalLM + AutoTokenizer from a directory, the local hub cache, or the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def both(local_only: bool):
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     local_files_only=local_only)
        return model, tokenizer
    try:
        return both(local_only=True)   # a directory, or a hub id already in the local cache
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise ModelLoadError(f"model '{source}': {str(e).splitlines()[0]}") from None
    if not hub_reachable():
        raise ModelLoadError(f"model '{source}': the Hugging Face Hub cannot be reached and the model is not cached; "
                             f"download it where the hub is reachable (huggingface-cli download {source} --local-dir "
                             f"DIR), copy DIR here and pass --model DIR")
    try:
        return both(local_only=False)
    except OSError as e:
        raise ModelLoadError(f"model '{source}': {str(e).splitlines()[0]}") from None


def load(name_or_dir: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """(model, tokenizer) for `tiny`, `tiny-random`, a local directory, or a hub id."""
    if name_or_dir == "tiny-random" or (name_or_dir == "tiny" and not (TINY_DIR / "config.json").exists()):
        if name_or_dir == "tiny":
            print("notice: the pretrained tiny base (assets/tiny) is missing; using tiny-random", file=sys.stderr)
        model, tokenizer = tiny_random()
    else:
        source = str(TINY_DIR) if name_or_dir == "tiny" else name_or_dir
        if not Path(source).is_dir() and (source.startswith((".", "/")) or source.count("/") != 1):
            raise ModelLoadError(f"model '{name_or_dir}': no such directory (and not a hub id like Org/Name)")
        model, tokenizer = from_pretrained(source, dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device=device, dtype=dtype or model.dtype), tokenizer


@contextmanager
def atomic_dir(out_dir: str | Path):
    """Yield a temp dir beside out_dir; on success it replaces out_dir (rename), on error it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def save(model, tokenizer, out_dir: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
    """Write config, safetensors weights, tokenizer (and copies of extra_files) atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
    return Path(out_dir)


def save_checkpoint(ckpt_dir: str | Path, model, tokenizer, optimizer, scheduler, state: dict) -> None:
    """A resumable training checkpoint, written atomically: weights (only the adapter under LoRA),
    optimizer moments and RNG in safetensors, step / schedule / data position in state.json. No pickle."""
    from lora import lora_layers, save_adapter
    sd = optimizer.state_dict()
    tensors = {f"opt.{i}.{k}": v.contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(ckpt_dir) as tmp:
        if lora_layers(model):
            save_adapter(model, tmp / "adapter.safetensors")
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "training_state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "param_groups": sd["param_groups"],
                                                    "scheduler": scheduler.state_dict()}, indent=1))


def load_checkpoint(ckpt_dir: str | Path, model, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote into an already built model / optimizer / scheduler."""
    from lora import load_adapter
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "adapter.safetensors").exists():
        load_adapter(model, ckpt_dir / "adapter.safetensors")
    else:
        model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")), strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
    state = json.loads((ckpt_dir / "state.json").read_text())
    tensors = load_file(str(ckpt_dir / "training_state.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build-tokenizer", help=f"train the tiny tokenizer into {TOKENIZER_DIR}")
    p = sub.add_parser("info", help="load a model and print its size and tokenizer facts")
    p.add_argument("model")
    args = parser.parse_args(argv)
    if args.command == "build-tokenizer":
        tok = build_tokenizer()
        print(f"wrote {TOKENIZER_DIR} ({len(tok)} tokens)")
        return 0
    try:
        model, tok = load(args.model)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {type(model).__name__}, {n / 1e6:.2f} M parameters, vocab {len(tok)}, "
          f"eos {tok.eos_token!r} ({tok.eos_token_id}), pad {tok.pad_token!r} ({tok.pad_token_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
