"""The tiny tokenizer and its chat template: how the asset `assets/tokenizer` was made.

    python tiny_tokenizer.py            rebuild assets/tokenizer (deterministic: the same files every time)

A byte-level BPE of 4,096 tokens trained on rendered demo conversations of every domain (retail and the
pretraining domains, with and without reasoning), with *no* regex pre-split (merges cross word boundaries)
and digits kept as single tokens, as Qwen's own tokenizer does: repeated boilerplate (system prompt, tool
schemas) collapses into a few tokens, and copying an id becomes a per-digit task a small model can learn. It
carries Qwen3's special tokens and a chat template written here that renders exactly as the real Qwen3
template on our conversations (tests/test_template.py). `model.py` only reads the result.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data import convert_record
from model import TOKENIZER_DIR
from pretrain_worlds import PRETRAIN_DOMAINS
from worlds import RETAIL, conversation

# Qwen3's special tokens, in Qwen's order; <think> and the tool tags are added but not "special"
# (skip_special_tokens keeps them), as in the real tokenizer.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
TINY_VOCAB_SIZE = 4096


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


def tokenizer_corpus(per_domain: int = 150, seed: int = 0) -> list[str]:
    """Rendered conversations of every demo domain (with and without reasoning) to train the tokenizer on."""
    # A throwaway tokenizer object carries the template so transformers renders it exactly as at run time.
    renderer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), chat_template=CHAT_TEMPLATE)
    rng = random.Random(seed)
    texts = []
    for domain in [RETAIL, *PRETRAIN_DOMAINS]:
        db = domain.make_db(rng, 100)
        customers = list(db[domain.customers].values())
        for k in range(per_domain):
            record = conversation(domain, db, rng.choice(customers), rng, think=k % 5 == 0)
            conv = convert_record(record, domain.name, domain.name)
            for sample in conv.turn_samples()[-2:]:
                chat = sample.chat() + [sample.target.message()]
                texts.append(renderer.apply_chat_template(chat, tools=sample.template_tools(), tokenize=False))
    return texts


def build_tokenizer(out_dir: str | Path = TOKENIZER_DIR, vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the tiny tokenizer deterministically on the demo corpus and save it to out_dir."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rebuild the tiny tokenizer (deterministic).")
    p.add_argument("--out", default=str(TOKENIZER_DIR), help="where to write it")
    args = p.parse_args(argv)
    tok = build_tokenizer(args.out)
    print(f"wrote {args.out} ({len(tok)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
