"""The one-GPU path on the CPU: precision, saving, adapters on disk, memory-bounded rollouts, real-model defaults."""

import json

import pytest
import torch

import grpo
import sft
from lora import PEFT_PREFIX, inject_lora, load_adapter, lora_layers, save_adapter
from model import eos_ids, load, save
from sampling import generate, sampling_noise
from toolcalls import parse_completion


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, demo_dir):
    path = tmp_path_factory.mktemp("d") / "train.json"
    path.write_text(json.dumps(json.loads((demo_dir / "retail_train.json").read_text())[:4]))
    return path


def log_probs(model, ids):
    with torch.no_grad():
        return model(ids).logits.float().log_softmax(-1)


@pytest.fixture(scope="module")
def bf16_valued_dir(tmp_path_factory):
    """tiny-random with every weight rounded to bf16: a checkpoint shipped in bf16 (as Qwen3's is), read in fp32."""
    net, tok = load("tiny-random")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.bfloat16())
    return str(save(net, tok, tmp_path_factory.mktemp("bf16-valued") / "m"))


@pytest.mark.parametrize("bf16_valued", [False, True])
def test_saved_model_keeps_an_update_below_bf16_resolution(tmp_path, train_file, tiny_tokenizer, bf16_valued,
                                                           bf16_valued_dir, capsys):
    """GPU settings (LoRA, --precision bf16): a few LoRA steps at a GRPO-sized learning rate, save, reload. The
    reloaded model must compute what the model in training computed. On a base whose weights are bf16 values the run
    stores its 28 frozen base layers in bf16 (lora.store_bases), and the merge must still be made in fp32."""
    model = bf16_valued_dir if bf16_valued else "tiny-random"
    out = tmp_path / "o"
    assert sft.main(["--mode", "base", "--model", model, "--data", str(train_file), "--out", str(out),
                     "--lora-rank", "4", "--precision", "bf16", "--max-steps", "3", "--batch-size", "4",
                     "--lr", "2e-5", "--warmup", "1"]) == 0
    assert f"LoRA: {28 if bf16_valued else 0} of 28 frozen base layers stored in bf16" in capsys.readouterr().err
    base, _ = load(model)
    trained, _ = load(model)
    load_adapter(trained, out / "adapter")          # the model as it was in training: base + adapter, unmerged
    reloaded, _ = load(str(out))
    ids = torch.tensor([tiny_tokenizer("Hi! Where is my order #W1234567? My email is ava.smith42@example.com.")
                        ["input_ids"]])
    # The update is below bf16's resolution (8 significant bits) in most entries: a merge or a save in bf16
    # would leave those entries as they were.
    layer = lora_layers(trained)["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        merged = layer.merged_weight()
    assert (merged.bfloat16() == layer.base.weight.bfloat16()).float().mean() > 0.5
    # Bound: merged W + s BA and the unmerged W x + s B (A x) differ only by fp32 rounding (2^-24 relative per
    # operation), ~1e-6 on log-probs of magnitude ~10 after 4 layers; 1e-4 leaves two orders of margin. The update
    # itself must move the log-probs by 10x that bound, or a lost update could not be told from a kept one.
    effect = (log_probs(trained, ids) - log_probs(base, ids)).abs().max()
    error = (log_probs(reloaded, ids) - log_probs(trained, ids)).abs().max()
    assert effect > 1e-3 and error < 1e-4, (float(effect), float(error))
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())


def test_adapter_is_written_in_peft_format(tmp_path):
    model, _ = load("tiny-random")
    inject_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "a", base_model="runs/sft")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == "runs/sft"
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    a = state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 192) and b.shape == (192, 4)          # A: [r, in], B: [out, r]
    assert len(state) == 2 * 7 * 4 and all(k.startswith(PEFT_PREFIX) for k in state)


def test_peft_loads_our_adapter_and_computes_the_same(tmp_path):
    """Where PEFT is installed (a test-only extra: pip install peft), it reads our adapter directory."""
    peft = pytest.importorskip("peft")
    model, tok = load("tiny-random")
    inject_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.05)
    save_adapter(model, tmp_path / "a", base_model="tiny-random")
    ids = torch.tensor([tok("where is my order")["input_ids"]])
    theirs = peft.PeftModel.from_pretrained(load("tiny-random")[0], str(tmp_path / "a"))
    assert torch.allclose(log_probs(theirs, ids), log_probs(model, ids), atol=1e-5)


def test_gradient_checkpointing_changes_memory_not_the_gradient(tmp_path):
    batch = sft.collate([sft.Encoded([5, 6, 7, 8, 9], [sft.IGNORE, 6, 7, 8, 9]), sft.Encoded([3, 4], [sft.IGNORE, 4])],
                        0)

    def gradient(checkpointing: str):
        args = sft.parse_args(["--model", "tiny-random", "--grad-checkpointing", checkpointing, "--out",
                               str(tmp_path)])
        from runs import load_for_training
        model, _ = load_for_training(args)
        assert model.is_activation_checkpointing == (checkpointing == "on")
        total, n = sft.masked_token_nll(model, batch)
        (total / n).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(gradient("on"), gradient("off"), atol=1e-6)


def test_scoring_passes_build_no_kv_cache():
    model, _ = load("tiny-random")
    seen = []
    model.get_decoder().register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("use_cache")), with_kwargs=True)
    grpo.token_logprobs(model, grpo.micro_batch([[5, 6]], [[7, 8]], [0], torch.zeros(1), 0), 1.0)
    sft.masked_token_nll(model, sft.collate([sft.Encoded([5, 6, 7, 8], [sft.IGNORE, 6, 7, 8])], 0))
    assert seen == [False, False]


def test_every_eos_of_the_generation_config_stops_a_completion():
    model, tok = load("tiny-random")
    model.eval()
    prompt = [tok("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]]
    free = generate(model, prompt, eos_ids=[-1], pad_id=tok.pad_token_id, max_new_tokens=8, temperature=0)
    second_eos = int(free.completion_ids[0, 2])        # the model's 3rd greedy token plays the second EOS
    model.generation_config.eos_token_id = [tok.eos_token_id, second_eos]
    assert eos_ids(model, tok) == sorted({tok.eos_token_id, second_eos})
    gen = generate(model, prompt, eos_ids=eos_ids(model, tok), pad_id=tok.pad_token_id, max_new_tokens=8,
                   temperature=0)
    stop = free.completion_ids[0].tolist().index(second_eos)
    assert not gen.truncated[0] and gen.completion_lists()[0] == free.completion_ids[0, :stop + 1].tolist()


def test_rollouts_in_chunks_equal_one_batch():
    """Greedy: the same tokens whatever --rollout-batch; sampled: reproducible from the seed, each group's rows
    share their prompt."""
    model, tok = load("tiny-random")
    model.eval()
    texts = ["<|im_start|>user\nWhere is order W12345?<|im_end|>\n<|im_start|>assistant\n", "hello", "Hi there"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    common = dict(eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, group_size=3, max_new_tokens=10)
    whole = generate(model, prompts, temperature=0, **common)
    chunked = generate(model, prompts, temperature=0, rollout_batch=3, **common)   # one group per chunk
    assert torch.equal(whole.completion_ids, chunked.completion_ids)
    assert torch.equal(whole.completion_mask, chunked.completion_mask)
    assert torch.equal(whole.prompt_ids, chunked.prompt_ids) and torch.equal(whole.prompt_mask, chunked.prompt_mask)

    def sampled(seed):
        return generate(model, prompts, temperature=1.0, rollout_batch=4, **common,
                        noise=sampling_noise(9, 10, torch.Generator().manual_seed(seed)))
    a, b = sampled(3), sampled(3)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completion_ids.shape[0] == 9
    for row in range(9):
        assert a.prompt_ids[row][a.prompt_mask[row].bool()].tolist() == prompts[row // 3]


def test_k3_is_clamped_far_from_the_reference():
    # x = ref - logp = -100 -> clamped to -20: e^-20 + 20 - 1 = 19.0000..., then k3 clamped to 10
    # x = +100 -> clamped to 20: e^20 - 21 ~ 4.85e8, clamped to 10
    logp = torch.zeros(2, requires_grad=True)
    k3 = grpo.kl_k3(logp, torch.tensor([-100.0, 100.0]))
    assert k3.tolist() == [10.0, 10.0]
    k3.sum().backward()
    assert torch.isfinite(logp.grad).all()
    small = grpo.kl_k3(torch.tensor([0.0]), torch.tensor([-1.0]))   # inside the clamps: e^-1 + 1 - 1
    assert small.item() == pytest.approx(float(torch.exp(torch.tensor(-1.0))))


@pytest.mark.parametrize("loss_agg", grpo.LOSS_AGGREGATIONS)
def test_dropping_zero_variance_groups_keeps_the_loss(loss_agg, train_file):
    """With beta 0, a zero-variance group contributes A = 0 to the loss: leaving it out of the passes must give the
    same loss, so every normaliser counts all B x G rows (Dr. GRPO's stays constant)."""
    common = ["--model", "tiny", "--data", str(train_file), "--group-size", "4", "--prompts-per-step", "6",
              "--max-new-tokens", "24", "--beta", "0", "--loss-agg", loss_agg]

    def step(*extra):
        args = grpo.parse_args(common + list(extra))
        model, tok = load("tiny")
        samples, prompts = grpo.load_prompts(args, tok, thinking=True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.0)
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
        return grpo.grpo_step(model, tok, None, opt, sched, params, samples[:6], prompts[:6],
                              torch.Generator().manual_seed(0), args, True, grpo.RewardWeights())
    dropped, kept = step(), step("--keep-zero-variance")
    assert 0 < dropped["zero_variance_groups"] < 1          # both kinds of group are in the batch
    assert dropped["loss"] == pytest.approx(kept["loss"], rel=1e-5, abs=1e-8)


def test_sft_skips_samples_longer_than_max_len(tiny_tokenizer, demo_dir):
    from data import load_turn_samples
    sample = load_turn_samples(demo_dir / "retail_train.json")[0][5]
    whole = sft.encode_turn(tiny_tokenizer, sample, False, 10_000)
    n = len(whole.input_ids)
    assert sft.encode_turn(tiny_tokenizer, sample, False, n - 1) is None      # skipped, never cut
    kept = sft.encode_turn(tiny_tokenizer, sample, False, n)
    assert kept.input_ids == whole.input_ids
    assert tiny_tokenizer.decode(kept.input_ids).startswith("<|im_start|>system\n")   # the policy and tools stay


def test_deeply_nested_arguments_are_a_format_error_not_a_crash():
    """json.loads accepts ~1000 levels, comparing them recursively does not: at some depth below Python's recursion
    limit (which depends on the stack in use) the old reward raised RecursionError. Every depth up to past that
    limit must give a reward, and arguments deeper than the schema allows are a format error."""
    from data import Action
    from rewards import composite_reward
    ref = Action("", [{"name": "f", "arguments": {"a": 1}}])
    for depth in [40, *range(850, 1001)]:
        deep = '{"a": ' * depth + "1" + "}" * depth
        parsed = parse_completion(f'<tool_call>\n{{"name": "f", "arguments": {deep}}}\n</tool_call>')
        assert not parsed.tool_calls and parsed.errors
        reward = composite_reward(parsed, False, ref, thinking=False)
        assert reward.format == 0.0 and reward.decision == 0.0
    assert parse_completion('<tool_call>\n{"name": "f", "arguments": ' + '{"a": ' * 40 + "1" + "}" * 40
                            + '}\n</tool_call>').errors == ["tool call arguments nested deeper than 32"]


def test_think_budget_below_one_is_refused(capsys):
    with pytest.raises(ValueError):
        grpo.RewardWeights(think_budget=0)
    with pytest.raises(SystemExit) as exit_:
        grpo.parse_args(["--think-budget", "0"])
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_a_real_model_gets_the_real_defaults(tmp_path, capsys):
    real = tmp_path / "qwen3-1.7b"
    real.mkdir()
    (real / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 2048}))
    args = grpo.parse_args(["--model", str(real)])
    assert (args.max_new_tokens, args.think_budget, args.max_prompt_len, args.rollout_batch, args.micro_batch,
            args.lora_rank, args.lr) == (1024, 256, 4096, 32, 4, 16, 1e-5)
    assert "defaults for a real model: --lora-rank 16, --max-new-tokens 1024" in capsys.readouterr().err
    tiny = grpo.parse_args(["--model", "tiny"])
    assert (tiny.max_new_tokens, tiny.think_budget, tiny.lora_rank) == (96, 64, 0)
    given = grpo.parse_args(["--model", str(real), "--max-new-tokens", "300"])
    assert given.max_new_tokens == 300
    base = sft.parse_args(["--model", str(real)])
    assert (base.max_len, base.batch_size, base.grad_accum, base.lora_rank, base.lr) == (4096, 4, 8, 16, 2e-4)


def test_full_fine_tuning_reference_starts_at_kl_zero(tmp_path, train_file):
    """The frozen reference is a copy in the policy's own dtype: under bf16 autocast both compute the same
    log-probs, so the first step's KL is exactly 0 (a bf16 copy of an fp32 policy was not: max |dlogp| 0.094)."""
    assert grpo.main(["--model", "tiny", "--data", str(train_file), "--out", str(tmp_path / "g"), "--steps", "1",
                      "--group-size", "3", "--prompts-per-step", "2", "--max-new-tokens", "16", "--precision", "bf16",
                      "--keep-zero-variance"]) == 0
    first = json.loads((tmp_path / "g" / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["kl"] == 0.0


def test_lora_run_resumes_from_its_adapter_checkpoint(tmp_path, train_file):
    common = ["--mode", "base", "--model", "tiny-random", "--data", str(train_file), "--lora-rank", "4",
              "--max-steps", "6", "--batch-size", "4", "--save-every", "3", "--lr", "1e-3"]
    assert sft.main(common + ["--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    sft.train(sft.parse_args(common + ["--out", str(cut)]), stop_after=3)   # "killed" after step 3
    config = json.loads((cut / "checkpoint" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random" and config["r"] == 4
    assert sft.main(["--resume", str(cut)]) == 0
    from safetensors.torch import load_file
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(cut / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
