import math

import pytest
import torch

from grpo import aggregate_loss, clipped_policy_loss, group_advantages, kl_k3, micro_batch, token_logprobs
from lora import disable_adapters, inject_lora, lora_layers
from model import load
from sampling import left_pad


def test_group_advantages_by_hand():
    # [1, 2, 3, 4]: mean 2.5, population std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = sqrt(1.25)
    s = math.sqrt(1.25)
    a = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]), eps=0.0)
    assert torch.allclose(a[0], torch.tensor([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]))
    assert torch.equal(a[1], torch.zeros(4))                        # zero variance: nothing to prefer
    assert torch.equal(group_advantages(torch.tensor([[0.7]])), torch.zeros(1, 1))  # singleton
    no_std = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), scale_std=False)
    assert torch.allclose(no_std, torch.tensor([[-1.5, -0.5, 0.5, 1.5]]))


def test_kl_k3_by_hand():
    lp = torch.log(torch.tensor([0.5, 0.3]))
    assert torch.equal(kl_k3(lp, lp), torch.zeros(2))
    # x = log 0.25 - log 0.5 = -log 2: k3 = 0.5 + log 2 - 1
    assert kl_k3(torch.log(torch.tensor(0.5)), torch.log(torch.tensor(0.25))).item() == pytest.approx(
        0.5 + math.log(2) - 1)


@pytest.mark.parametrize("adv,ratio,expected,clipped", [
    (1.0, 1.1, -1.1, False),    # inside [0.8, 1.28]
    (1.0, 1.5, -1.28, True),    # above: min(1.5, 1.28) = 1.28
    (1.0, 0.5, -0.5, False),    # below: min(0.5, 0.8) = 0.5, the unclipped term
    (-1.0, 1.1, 1.1, False),
    (-1.0, 1.5, 1.5, False),    # min(-1.5, -1.28) = -1.5, the unclipped term
    (-1.0, 0.5, 0.8, True),     # min(-0.5, -0.8) = -0.8
])
def test_clipped_loss_by_hand(adv, ratio, expected, clipped):
    old = torch.zeros(1, 1)
    loss, kl, was_clipped = clipped_policy_loss(torch.log(torch.tensor([[ratio]])), old, None, torch.tensor([adv]),
                                                beta=0.0, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(expected, abs=1e-6) and bool(was_clipped) == clipped


def test_kl_term_is_added_with_beta():
    logp, ref = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    loss, kl, _ = clipped_policy_loss(logp, logp, ref, torch.tensor([0.0]), beta=0.1, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))


def test_aggregations_on_a_ragged_mask():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    lengths = mask.sum(-1)   # each row a sequence of its own
    assert aggregate_loss(per_token, mask, "grpo", 2, 4, 3, lengths).item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate_loss(per_token, mask, "dapo", 2, 4, 3, lengths).item() == pytest.approx(10 / 4)
    assert aggregate_loss(per_token, mask, "dr_grpo", 2, 4, 3, lengths).item() == pytest.approx(10 / (2 * 3))
    for mode in ("grpo", "dapo", "dr_grpo"):  # micro-batches sum to the whole batch
        parts = sum(aggregate_loss(per_token[i:i + 1], mask[i:i + 1], mode, 2, 4, 3, lengths[i:i + 1])
                    for i in range(2))
        assert parts.item() == pytest.approx(aggregate_loss(per_token, mask, mode, 2, 4, 3, lengths).item())


def batch(tok):
    """Three rows: two completions of one prompt (a group, sharing it in one packed row) and one of another."""
    prompts = [tok("where is order W12345?", add_special_tokens=False)["input_ids"]] * 2 + \
        [tok("hi", add_special_tokens=False)["input_ids"]]
    completions = [[7, 8, 9, 2], [7, 8, 11], [10, 2]]
    return prompts, completions, micro_batch(prompts, completions, [0, 0, 1], torch.zeros(3), tok.pad_token_id)


def test_token_logprobs_match_unpadded_log_softmax():
    model, tok = load("tiny-random")
    prompts, completions, b = batch(tok)
    assert torch.equal(b.mask, torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]))
    # one packed row holds the shared prompt once and the shared completion start [7, 8] once
    assert b.packed.input_ids.shape[0] == 2 and b.packed.n_sequence_tokens == sum(map(len, prompts)) + 9
    got = token_logprobs(model, b, temperature=0.7, chunk=3)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        logits = model(torch.tensor([p + c])).logits[0] / 0.7
        want = torch.log_softmax(logits, -1)[len(p) - 1:len(p) + len(c) - 1].gather(-1, torch.tensor(c)[:, None])
        assert torch.allclose(got[i, :len(c)], want.squeeze(-1), atol=1e-5)
        assert torch.all(got[i, len(c):] == 0)


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_one_iteration_gradient_is_policy_gradient(mode):
    model, tok = load("tiny-random")
    _, _, b = batch(tok)
    mask, adv = b.mask, torch.tensor([0.8, -1.3, 0.5])
    n_seq, n_tok = 3, int(mask.sum())

    def grads(loss_of):
        model.zero_grad()
        logp = token_logprobs(model, b, 1.0)
        loss_of(logp).backward()
        return [p.grad.clone() for p in model.parameters()]

    def clipped(logp):
        per_token, _, _ = clipped_policy_loss(logp, logp.detach(), None, adv, 0.0, 0.2, 0.28)
        return aggregate_loss(per_token, mask, mode, n_seq, n_tok, 4, b.lengths)

    def reinforce(logp):
        return aggregate_loss(-adv[:, None] * logp, mask, mode, n_seq, n_tok, 4, b.lengths)
    g1, g2 = grads(clipped), grads(reinforce)
    assert any(g.abs().sum() > 0 for g in g1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_reference_is_the_policy_with_adapters_disabled():
    model, tok = load("tiny-random")
    base, _ = load("tiny-random")
    _, _, b = batch(tok)
    inject_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.05)
        policy = token_logprobs(model, b, 1.0)
        with disable_adapters(model):
            reference = token_logprobs(model, b, 1.0)
        expected = token_logprobs(base, b, 1.0)
    assert torch.equal(reference, expected) and not torch.allclose(policy, reference)


def test_resume_matches_uninterrupted_run(tmp_path, demo_dir):
    import json

    import grpo
    records = json.loads((demo_dir / "retail_train.json").read_text())[:4]
    (tmp_path / "d.json").write_text(json.dumps(records))
    common = ["--model", "tiny-random", "--data", str(tmp_path / "d.json"), "--steps", "4", "--group-size", "3",
              "--prompts-per-step", "2", "--max-new-tokens", "8", "--save-every", "2", "--keep-zero-variance",
              "--log-rollouts", "1"]
    assert grpo.main(common + ["--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    grpo.train(grpo.parse_args(common + ["--out", str(cut)]), stop_after=3)
    assert grpo.main(["--resume", str(cut)]) == 0
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = load("tiny-random")[0].state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)   # the run did train
    assert [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # the rollout log too: step 3 ran twice (killed after it, resumed from step 2), it is logged once; both logs
    # survive the final save
    assert [json.loads(line)["step"] for line in (cut / "rollouts.jsonl").read_text().splitlines()] == \
        [1, 1, 2, 2, 3, 3, 4, 4]
    assert (cut / "rollouts.jsonl").read_text() == (tmp_path / "full" / "rollouts.jsonl").read_text()


def ragged_generation(tok):
    """Six rows: groups of G = 2 on prompts of 2, 20 and 9 tokens, completions of 1 to 7 tokens, each starting with
    its own token (so a group's two completions share nothing after the prompt)."""
    from sampling import Generation
    g = torch.Generator().manual_seed(0)
    prompts = [p for n in (2, 20, 9) for p in [torch.randint(5, 200, (n,), generator=g).tolist()] * 2]
    lengths = [7, 1, 3, 6, 2, 5]
    p_ids, p_mask = left_pad(prompts, tok.pad_token_id)
    c_ids = torch.full((6, 7), tok.pad_token_id)
    c_mask = torch.zeros(6, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        c_ids[i, :n] = torch.randint(5, 200, (n,), generator=g)
        c_ids[i, 0] = 200 + i
        c_mask[i, :n] = 1
    return Generation(p_ids, p_mask, c_ids, c_mask, torch.zeros(6, dtype=torch.bool))


def padded_logprobs(model, gen) -> torch.Tensor:
    """log p of each completion token in one left-padded batch [6, 7] (0 off the completion), straight from the
    model's logits: the reference the packed micro-batches must reproduce."""
    ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    attention = torch.cat([gen.prompt_mask, gen.completion_mask], 1)
    position = (attention.cumsum(-1) - 1).clamp(min=0)
    width = gen.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attention, position_ids=position).logits[:, -width - 1:-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, gen.completion_ids[..., None]).squeeze(-1)
    return logp * gen.completion_mask


def lora_model(seed: int = 3):
    """tiny-random under rank-4 LoRA with B drawn at random (at init B = 0 and the adapters would not matter)."""
    model, tok = load("tiny-random")
    inject_lora(model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
    return model, tok


@pytest.mark.parametrize("tuning", ["full", "lora"])
@pytest.mark.parametrize("share", [True, False])
def test_the_update_scores_the_sampled_tokens_as_the_sampler_did(share, tuning):
    """The tokens trained are the tokens sampled, scored as they were sampled: log pi of each completion token in the
    update's packed forward (a group's prompt once, or a row per completion) equals the log-prob the sampler drew it
    with (KV cache, one token at a time, at T = 0.7), on ragged groups."""
    from sampling import generate, sampling_noise
    model, tok = load("tiny-random") if tuning == "full" else lora_model()
    model.eval()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(5, 3000, (n,), generator=g).tolist() for n in (3, 17, 8)]
    stops = list(range(1000, 1400))          # ~10% of the vocabulary ends a completion: ragged lengths
    gen = generate(model, prompts, eos_ids=stops, pad_id=tok.pad_token_id, group_size=3, max_new_tokens=10,
                   temperature=0.7, noise=sampling_noise(9, 10, torch.Generator().manual_seed(6)))
    lengths = gen.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2 and gen.logprobs is not None
    rows = [prompts[r // 3] for r in range(9)]
    completions = [gen.completion_ids[r, :lengths[r]].tolist() for r in range(9)]
    b = micro_batch(rows, completions, [r // 3 for r in range(9)], torch.zeros(9), tok.pad_token_id, share)
    with torch.no_grad():
        scored = token_logprobs(model, b, 0.7)
    sampled = gen.logprobs[:, :scored.shape[1]]
    # fp32 throughout: the cached and the packed forward round differently (~1e-6 on log-probs of magnitude ~8);
    # 1e-4 leaves two orders of margin, while a token scored under the wrong context moves by > 1e-2
    assert sampled.abs().sum() > 0 and torch.allclose(scored, sampled, atol=1e-4), (scored - sampled).abs().max()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tuning", ["full", "lora"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_give_the_padded_batch_loss_and_gradient(mode, share, tuning, precision):
    from grpo import micro_batches
    from model import autocast
    model, tok = load("tiny-random") if tuning == "full" else lora_model()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = ragged_generation(tok)
    adv = torch.tensor([0.5, -0.5, 1.2, -1.2, 0.3, -0.3])
    ref = torch.randn(6, 7, generator=torch.Generator().manual_seed(1)) * 0.1 - 2.0
    mask = gen.completion_mask.float()
    n_seq, n_tok = 6, int(mask.sum())

    def loss_and_grad(parts, precision=precision):
        model.zero_grad()
        total = 0.0
        for logp_of, m, a, r in parts:
            with autocast(precision, "cpu"):
                logp = logp_of()
            per_token, _, _ = clipped_policy_loss(logp, logp.detach(), r, a, 0.04, 0.2, 0.28)
            loss = aggregate_loss(per_token, m, mode, n_seq, n_tok, 8, m.sum(-1))
            loss.backward()
            total += loss.item()
        return total, torch.cat([p.grad.flatten() for p in params])

    batches = micro_batches(gen, torch.arange(6), adv, 2, [0, 0, 1, 1, 2, 2], tok.pad_token_id, "cpu", share=share)
    # sorted by prompt, group, then completion length: rows (1, 0), (4, 5), (2, 3), a group per micro-batch; shared,
    # its prompt once in one row of prompt + both completions, else a row per completion, each with the prompt
    widths = [(2, 7, 1), (9, 2, 5), (20, 3, 6)]
    want = [(1, p + a + b) for p, a, b in widths] if share else [(2, p + max(a, b)) for p, a, b in widths]
    assert [tuple(b.packed.input_ids.shape) for b in batches] == want
    order = [1, 0, 4, 5, 2, 3]
    assert torch.equal(torch.cat([b.advantages for b in batches]), adv[order])
    parts = [(lambda b=b: token_logprobs(model, b, 1.0), b.mask, b.advantages,
              ref[order[2 * k:2 * k + 2], :b.mask.shape[1]]) for k, b in enumerate(batches)]
    padded = [(lambda: padded_logprobs(model, gen), mask, adv, ref)]
    loss_padded, grad_padded = loss_and_grad(padded)
    loss_micro, grad_micro = loss_and_grad(parts)
    assert grad_padded.abs().sum() > 0
    if precision == "fp32":
        assert loss_micro == pytest.approx(loss_padded, abs=1e-6)
        assert torch.allclose(grad_micro, grad_padded, atol=1e-6)
    else:
        # Under bf16 autocast the padded and the packed batch round differently (8 significant bits per matmul), so
        # no fixed tolerance is derivable; what is: packing adds no error beyond bf16's own. The packed bf16 gradient
        # is as close to the exact (fp32 padded) one as the padded bf16 gradient is, up to a factor 2, and the loss
        # within bf16's relative resolution of it, while an error of the packing itself (a token attending across
        # sequences) fails both (checked by breaking packing.pack's mask on purpose: docs/tests.md).
        loss_exact, grad_exact = loss_and_grad(padded, precision="fp32")
        bf16_error = (grad_padded - grad_exact).norm()
        assert 0 < bf16_error < 0.1 * grad_exact.norm()
        assert (grad_micro - grad_exact).norm() < 2 * bf16_error
        assert abs(loss_micro - loss_exact) < 2 ** -8 * max(abs(loss_exact), 1.0)   # bf16's relative resolution


def test_a_group_of_equal_rewards_is_never_informative():
    """Equal rewards teach nothing, exactly: torch's float32 std of G equal values is often 1 ulp (1.5e-8 to
    1.2e-7), above a 1e-8 threshold. A rank that holds one group sees a [1, G] tensor."""
    from grpo import informative
    constants = torch.cat([torch.tensor([0.9, 0.1, 1.0 / 3.0]), torch.rand(2000, generator=torch.Generator().manual_seed(0))])
    for c in constants:
        group = c.expand(1, 8).contiguous()
        assert not bool(informative(group)) and torch.equal(group_advantages(group), torch.zeros(1, 8))
    differs = torch.tensor([[0.9] * 7 + [0.8]])
    assert bool(informative(differs)) and group_advantages(differs)[0, -1] < 0


def scored_completion(tok, sample, text: str):
    """One completion of `sample` written as `text` plus EOS, scored as the rollout scores it (G = 1)."""
    from grpo import score_rollout
    from rewards import RewardWeights
    from sampling import Generation
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    gen = Generation(torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long), torch.tensor([ids]),
                     torch.ones(1, len(ids), dtype=torch.long), torch.zeros(1, dtype=torch.bool))
    return score_rollout(tok, gen, [sample], 1, True, RewardWeights())[0]


@pytest.mark.parametrize("special", ["<|im_start|>", "<|endoftext|>"])
def test_a_special_token_inside_a_completion_is_a_format_error(demo_dir, special):
    """Decoding must not hide what the model wrote: only the final EOS ends a completion. By hand: the right call
    with a short trace scores 0.1 + 0.2 + 0.6 + 0.1 = 1.0; without format credit 0.9."""
    import json

    from data import load_turn_samples
    _, tok = load("tiny-random")
    sample = next(s for s in load_turn_samples(demo_dir / "retail_test.json")[0] if s.target.is_tool_call)
    calls = "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in sample.target.tool_calls)
    clean = scored_completion(tok, sample, f"<think>\nLook it up.\n</think>\n\n{calls}")
    assert clean.reward.format == 1.0 and clean.total == pytest.approx(1.0)
    dirty = scored_completion(tok, sample, f"<think>\nLook it up.\n</think>\n\n{special}{calls}")
    assert dirty.reward.format == 0.0 and dirty.total == pytest.approx(0.9) and special in dirty.text


def test_grpo_refuses_lora_dropout(capsys):
    import grpo
    with pytest.raises(SystemExit) as stop:
        grpo.parse_args(["--lora-rank", "4", "--lora-dropout", "0.1"])
    assert stop.value.code == 2 and "--lora-dropout" in capsys.readouterr().err


def test_an_unchanged_policy_has_ratio_one_and_no_kl_even_with_dropout_in_its_config(tmp_path, demo_dir):
    """The policy GRPO samples, its old policy and its reference are one function: a model whose config asks for
    attention dropout, trained with lr 0 and two updates per rollout, clips no token and has KL 0."""
    import json

    import grpo
    from model import save
    model, tok = load("tiny-random")
    model.config.attention_dropout = 0.5
    save(model, tok, tmp_path / "dropout-model")
    records = json.loads((demo_dir / "retail_train.json").read_text())[:4]
    (tmp_path / "d.json").write_text(json.dumps(records))
    assert grpo.main(["--model", str(tmp_path / "dropout-model"), "--data", str(tmp_path / "d.json"), "--steps", "1",
                      "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "0",
                      "--num-iterations", "2", "--keep-zero-variance", "--out", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "log.jsonl").read_text().splitlines()[-1])
    assert record["clip_fraction"] == 0.0 and record["kl"] < 1e-7
