import json

import pytest
import torch

import sft
from data import Action, TurnSample, load_turn_samples, prompt_ids
from sft import IGNORE, collate, encode_turn, masked_token_nll

CALL = {"name": "get_order_details", "arguments": {"order_id": "W12345"}}
TOOLS = [{"name": "get_order_details", "description": "Get an order.", "parameters": {"type": "object"}}]
USER = {"role": "user", "content": "Where is order W12345?"}
TOOL_MSG = {"role": "tool", "content": '{"status": "pending"}'}
CALL_MSG = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
CALL_TEXT = '<tool_call>\n{"name": "get_order_details", "arguments": {"order_id": "W12345"}}\n</tool_call>'

CASES = [  # (sample, thinking, the exact supervised text, written by hand from the Qwen3 template)
    (TurnSample("c", "S", TOOLS, [USER], Action("", [CALL])), False, CALL_TEXT + "<|im_end|>"),
    (TurnSample("c", "S", TOOLS, [USER, CALL_MSG, TOOL_MSG], Action("It is pending.")), False,
     "It is pending.<|im_end|>"),
    (TurnSample("c", "S", [], [USER], Action("Hello!")), False, "Hello!<|im_end|>"),
    (TurnSample("c", "S", TOOLS, [USER], Action("", [CALL], "I need the order.")), True,
     "<think>\nI need the order.\n</think>\n\n" + CALL_TEXT + "<|im_end|>"),
    (TurnSample("c", "S", TOOLS, [USER, CALL_MSG, TOOL_MSG], Action("It is pending.", [], "Report it.")), True,
     "<think>\nReport it.\n</think>\n\nIt is pending.<|im_end|>"),
]


@pytest.mark.parametrize("which", ["tiny_tokenizer", "qwen_tokenizer"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_mask_covers_exactly_the_target(request, which, case):
    tok = request.getfixturevalue(which)
    sample, thinking, expected = CASES[case]
    enc = encode_turn(tok, sample, thinking, max_len=4096)
    supervised = [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE]
    assert tok.decode(supervised) == expected
    first = enc.labels.index(next(label for label in enc.labels if label != IGNORE))
    assert all(label == IGNORE for label in enc.labels[:first])
    assert all(label != IGNORE for label in enc.labels[first:])   # the target is one contiguous tail
    assert enc.input_ids[:first] == prompt_ids(tok, sample, thinking)   # the prompt exactly as at inference
    prompt = tok.decode(enc.input_ids[:first])
    assert prompt.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))


@pytest.mark.parametrize("share", [True, False])
def test_loss_is_the_sum_over_supervised_tokens_of_each_sequence_alone(share):
    from model import load
    model, tok = load("tiny-random")
    sequences = [sft.Encoded([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8], "a"),   # two turn samples of conversation a,
                 sft.Encoded([5, 6, 9], [IGNORE, IGNORE, 9], "a"),          # sharing the prefix [5, 6]
                 sft.Encoded([9, 10], [IGNORE, 10], "b")]
    batch = collate(sequences, 0, share)
    total, n = masked_token_nll(model, batch)
    by_hand = 0.0
    for e in sequences:   # each sequence alone: position t predicts token t + 1
        logp = model(input_ids=torch.tensor([e.input_ids])).logits[0].log_softmax(-1)
        by_hand -= sum(logp[t - 1, e.labels[t]] for t in range(1, len(e.labels)) if e.labels[t] != IGNORE)
    assert n == 4 and torch.allclose(total, by_hand, atol=1e-5)
    assert batch.packed.n_sequence_tokens == 9 and batch.packed.input_ids.numel() == (7 if share else 3 * 4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_a_shared_prefix_batch_gives_the_padded_batch_loss_and_gradient(tuning, precision):
    """Three turn samples of one conversation (a 12-token history, then each its own continuation) and one of
    another: one prefix-tree row with the history once gives the loss and every trainable gradient of the padded
    batch (a row per sample), under full fine-tuning and LoRA, fp32 and bf16 autocast."""
    from lora import inject_lora, lora_layers
    from model import autocast, load
    model, _ = load("tiny-random")
    g = torch.Generator().manual_seed(0)
    if tuning == "lora":
        inject_lora(model, rank=4, alpha=8)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    history = torch.randint(5, 3000, (12,), generator=g).tolist()
    sequences = []
    for k, n in enumerate((5, 2, 7)):
        target = torch.randint(5, 3000, (n,), generator=g).tolist()
        sequences.append(sft.Encoded(history + [100 + k] + target, [IGNORE] * 13 + target, "a"))
    other = torch.randint(5, 3000, (9,), generator=g).tolist()
    sequences.append(sft.Encoded(other, [IGNORE] * 4 + other[4:], "b"))

    def loss_and_grad(share: bool, precision: str):
        model.zero_grad()
        with autocast(precision, "cpu"):
            total, n = masked_token_nll(model, collate(sequences, 0, share))
        (total / n).backward()
        return total.item() / n, torch.cat([p.grad.flatten() for p in params])

    shared, padded = loss_and_grad(True, precision), loss_and_grad(False, precision)
    assert collate(sequences, 0, True).packed.input_ids.numel() < collate(sequences, 0, False).packed.input_ids.numel()
    if precision == "fp32":
        assert shared[0] == pytest.approx(padded[0], abs=1e-6) and torch.allclose(shared[1], padded[1], atol=1e-6)
    else:   # bf16 rounds each layout differently: sharing must add no error beyond bf16's own (tests/test_grpo.py)
        exact = loss_and_grad(False, "fp32")
        bf16_error = (padded[1] - exact[1]).norm()
        assert 0 < bf16_error < 0.1 * exact[1].norm() and (shared[1] - exact[1]).norm() < 2 * bf16_error
        assert abs(shared[0] - exact[0]) < 2 ** -8 * abs(exact[0])   # within bf16's relative resolution


def test_a_batch_keeps_each_conversation_together_in_one_row():
    encoded = [sft.Encoded([1] * n, [1] * n, c) for c, n in [("a", 3), ("b", 2), ("a", 4), ("c", 5), ("b", 1)]]
    batches = sft.conversation_batches(encoded, 16, seed=0, epoch=0)
    assert len(batches) == 1 and sorted(len(e.input_ids) for e in batches[0]) == [1, 2, 3, 4, 5]
    conversations = [e.conversation for e in batches[0]]
    assert conversations.index("a") + 1 == len(conversations) - 1 - conversations[::-1].index("a")   # adjacent
    cut = sft.conversation_batches(encoded, 2, seed=0, epoch=0)
    assert [len(b) for b in cut] == [2, 2, 1]


def test_cold_start_refuses_large_sets(tmp_path, demo_dir, capsys):
    records = json.loads((demo_dir / "retail_cold_start.json").read_text())
    (tmp_path / "big.json").write_text(json.dumps(records * 2))
    code = sft.main(["--mode", "cold-start", "--model", "tiny-random", "--data", str(tmp_path / "big.json"),
                     "--out", str(tmp_path / "o"), "--replay-ratio", "0"])
    assert code == 2 and "fewer than 100" in capsys.readouterr().err


def test_overfit_two_samples(tmp_path, demo_dir):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:1]
    (tmp_path / "two.json").write_text(json.dumps(records))
    args = ["--mode", "base", "--model", "tiny-random", "--data", str(tmp_path / "two.json"), "--out",
            str(tmp_path / "o"), "--max-steps", "60", "--batch-size", "2", "--lr", "3e-3", "--warmup", "5"]
    samples, _ = load_turn_samples(tmp_path / "two.json")
    assert sft.main(args) == 0
    log = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] > 3 and log[-1]["loss"] < 0.1, (log[0]["loss"], log[-1]["loss"], len(samples))


def test_resume_matches_uninterrupted_run(tmp_path, demo_dir):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:12]
    (tmp_path / "d.json").write_text(json.dumps(records))
    common = ["--mode", "base", "--model", "tiny-random", "--data", str(tmp_path / "d.json"), "--max-steps", "6",
              "--batch-size", "4", "--save-every", "3", "--lr", "1e-3"]
    assert sft.main(common + ["--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    sft.train(sft.parse_args(common + ["--out", str(cut)]), stop_after=3)  # "killed" at step 3
    assert (cut / "checkpoint" / "state.json").exists() and not (cut / "model.safetensors").exists()
    assert sft.main(["--resume", str(cut)]) == 0
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps after the checkpoint are not logged twice


def test_nan_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, demo_dir, monkeypatch, capsys):
    records = json.loads((demo_dir / "retail_train.json").read_text())[:6]
    (tmp_path / "d.json").write_text(json.dumps(records))
    real = sft.masked_token_nll
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # the third step's loss turns NaN
        calls["n"] += 1
        total, n = real(*args, **kwargs)
        return (total * float("nan") if calls["n"] == 3 else total), n
    monkeypatch.setattr(sft, "masked_token_nll", poisoned)
    out = tmp_path / "o"
    code = sft.main(["--mode", "base", "--model", "tiny-random", "--data", str(tmp_path / "d.json"), "--out", str(out),
                     "--max-steps", "5", "--batch-size", "4", "--save-every", "2"])
    assert code == 1 and "not finite at step 3" in capsys.readouterr().err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and not (out / "model.safetensors").exists()
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "checkpoint" / "model.safetensors")).values())


def test_inspect_marks_the_supervised_span(demo_dir, capsys):
    assert sft.main(["--inspect", "2", "--model", "tiny-random", "--data", str(demo_dir / "retail_train.json")]) == 0
    out = capsys.readouterr().out
    header, _, first = out.split("--- sample 1")[0].partition("\n")
    assert "supervised" in header
    marked = first[first.index("\u27e6") + 1:first.index("\u27e7")]
    assert marked.endswith("<|im_end|>") and "<|im_start|>" not in marked   # exactly the action and its end
    assert first.count("\u27e6") == 1


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def cold_args(data, *extra):
    return sft.parse_args(["--mode", "cold-start", "--model", "tiny-random", "--data", str(data), *extra])


def test_cold_start_contexts_drop_earlier_reasoning(tmp_path, tiny_tokenizer):
    record = {"tools": json.dumps(TOOLS), "system": "S", "conversations": [
        {"from": "human", "value": "Where is order W12345?"},
        {"from": "gpt", "value": "<think>\nFIRST THOUGHT\n</think>"},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": '{"status": "pending"}'},
        {"from": "gpt", "value": "<think>\nSECOND THOUGHT\n</think>\n\nIt is pending."}]}
    args = cold_args(write_json(tmp_path / "c.json", [record]), "--replay-ratio", "0")
    first, second = sft.load_encoded(args, tiny_tokenizer)
    prompt = tiny_tokenizer.decode([t for t, label in zip(second.input_ids, second.labels) if label == IGNORE])
    target = tiny_tokenizer.decode([t for t, label in zip(second.input_ids, second.labels) if label != IGNORE])
    assert "FIRST THOUGHT" not in prompt   # as in a reference history at GRPO / evaluation time
    assert prompt.endswith("<|im_start|>assistant\n" + CALL_TEXT + "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
                           '{"status": "pending"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n')
    assert target == "<think>\nSECOND THOUGHT\n</think>\n\nIt is pending.<|im_end|>"
    assert "FIRST THOUGHT" in tiny_tokenizer.decode(first.input_ids)  # the first turn keeps its own reasoning


def test_replay_mixes_fresh_no_thinking_base_samples_into_each_epoch(tmp_path, demo_dir, tiny_tokenizer):
    cold = json.loads((demo_dir / "retail_cold_start.json").read_text())[:3]
    n_cold = sum(t["from"] == "gpt" for r in cold for t in r["conversations"])
    args = cold_args(write_json(tmp_path / "c.json", cold), "--replay-ratio", "2", "--batch-size", "4",
                     "--replay-data", str(demo_dir / "retail_train.json"))
    source = sft.BatchSource(args, tiny_tokenizer)

    def epoch(e):
        return [seq for k in range(e * source.per_epoch, (e + 1) * source.per_epoch) for seq in source.batch(k)]

    def split(seq):
        cut = next(i for i, label in enumerate(seq.labels) if label != IGNORE)
        return tiny_tokenizer.decode(seq.input_ids[:cut]), tiny_tokenizer.decode(seq.input_ids[cut:])
    first = [split(seq) for seq in epoch(0)]
    thinking = [(p, t) for p, t in first if t.startswith("<think>\n")]
    replayed = [(p, t) for p, t in first if not t.startswith("<think>")]
    assert len(thinking) == n_cold and len(replayed) == 2 * n_cold
    assert all(p.endswith("<|im_start|>assistant\n") for p, _ in thinking)
    assert all(p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for p, _ in replayed)  # base-SFT form
    again = [split(seq) for seq in epoch(1)]
    assert {t for _, t in again if not t.startswith("<think>")} != {t for _, t in replayed}  # a fresh draw


def test_replay_data_defaults_to_the_base_runs_data(tmp_path, demo_dir, capsys):
    base = tmp_path / "sft"
    base.mkdir()
    (base / "args.json").write_text(json.dumps({"mode": "base", "data": str(demo_dir / "retail_train.json")}))
    assert sft.base_sft_data(str(base)) == str(demo_dir / "retail_train.json")
    code = sft.main(["--mode", "cold-start", "--model", "tiny-random", "--data",
                     str(demo_dir / "retail_cold_start.json"), "--out", str(tmp_path / "o")])
    assert code == 2 and "--replay-data: not given, and tiny-random is not a base SFT output" in capsys.readouterr().err


def test_replay_passes_over_samples_too_long_and_keeps_the_epoch_size(tmp_path, demo_dir, tiny_tokenizer):
    cold = json.loads((demo_dir / "retail_cold_start.json").read_text())[:3]
    args = cold_args(write_json(tmp_path / "c.json", cold), "--replay-ratio", "2", "--replay-data",
                     str(demo_dir / "retail_train.json"))
    source = sft.BatchSource(args, tiny_tokenizer)
    lengths = sorted(len(encode_turn(tiny_tokenizer, s, False, 10_000).input_ids) for s in source.replay[:200])
    max_len = lengths[int(0.8 * len(lengths))]   # about one base SFT sample in five is longer (checked below)
    source.args.max_len = max_len
    pool = [encode_turn(tiny_tokenizer, s, False, max_len) for s in source.replay[:200]]
    assert 0 < pool.count(None) < len(pool) / 2
    replayed = source.replayed(0)
    assert len(replayed) == source.n_replay == 2 * len(source.encoded)
    assert all(len(seq.input_ids) <= max_len for seq in replayed)


def test_conversations_that_fit_a_row_share_their_system_prompt_with_the_padded_batch_loss_and_gradient():
    """Two conversations that open with the same 10-token system prompt, two turn samples each: with rows of
    row_tokens >= both trees they share one row, the system prompt computed once (node count by hand below); with
    rows smaller than that each gets its own; both give the loss and gradient of a row per sample."""
    from model import load
    model, _ = load("tiny-random")
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(5, 3000, (n,), generator=g).tolist()   # noqa: E731
    system = ids(10)
    sequences = []
    for conversation in ("a", "b"):
        history = system + ids(4)
        for n in (3, 5):
            target = ids(n)
            sequences.append(sft.Encoded(history + target, [IGNORE] * 14 + target, conversation))
    # each conversation's tree: 14 history nodes + 3 + 5 targets = 22; together 10 shared + 2 x (4 + 3 + 5) = 34

    def loss_and_grad(**kw):
        model.zero_grad()
        batch = collate(sequences, 0, **kw)
        total, n = masked_token_nll(model, batch)
        (total / n).backward()
        return batch.packed.input_ids.shape, total.item() / n, torch.cat([p.grad.flatten() for p in model.parameters()])

    one_row, apart, padded = (loss_and_grad(row_tokens=44), loss_and_grad(row_tokens=43),
                              loss_and_grad(share=False))
    assert one_row[0] == (1, 34) and apart[0] == (2, 22) and padded[0] == (4, 19)
    for shape, loss, grad in (one_row, apart):
        assert loss == pytest.approx(padded[1], abs=1e-6) and torch.allclose(grad, padded[2], atol=1e-6)


def test_row_tokens_is_a_scale_default():
    assert sft.parse_args(["--model", "tiny"]).row_tokens == sft.SCALE_DEFAULTS["row_tokens"][0] == 512
    assert sft.parse_args(["--model", "smollm2-135m"]).row_tokens == sft.SCALE_DEFAULTS["row_tokens"][1] == 4096
    assert sft.parse_args(["--model", "tiny", "--row-tokens", "64"]).row_tokens == 64
