"""bf16 where the hardware computes it: the choice by capability, the sampling copy that rollouts read (the policy
as autocast computes it, its casts made once), and a bf16 training step against fp32."""

import copy

import pytest
import torch

import model as model_module
from lora import inject_lora, lora_layers, merge_lora, store_bases
from model import autocast, for_inference, load, refresh_sampling_copy, resolve_precision, sampling_copy


@pytest.mark.parametrize("flags, name, expected", [
    ({"avx512_bf16", "avx512f"}, "Org/Real-1B", "bf16"),     # AMD Zen 4 / Intel Cooper Lake: bf16 in hardware
    ({"amx_bf16", "amx_tile"}, "Org/Real-1B", "bf16"),       # Intel Sapphire Rapids: AMX
    ({"avx2", "avx512f"}, "Org/Real-1B", "fp32"),            # no bf16 unit: emulated, slower than fp32
    ({"avx512_bf16"}, "tiny", "fp32"),                       # the tiny model stays fp32 (its tables are fp32)
])
def test_auto_precision_follows_the_cpus_bf16_hardware(monkeypatch, flags, name, expected):
    monkeypatch.setattr(model_module, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", "cpu", name) == expected
    assert resolve_precision("fp32", "cpu", name) == "fp32" and resolve_precision("bf16", "cpu", name) == "bf16"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_precision_on_a_gpu_is_bf16_where_it_computes_bf16(monkeypatch, supported):
    monkeypatch.setattr(model_module, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    expected = "bf16" if supported else "fp32"   # a GPU before Ampere emulates bf16
    assert resolve_precision("auto", "cuda", "tiny") == resolve_precision("auto", "cuda", "Org/Real-1B") == expected
    assert resolve_precision("auto", "cpu", "Org/Real-1B") == "fp32"


def logits(net, ids, precision):
    with torch.no_grad(), autocast(precision, "cpu"):
        return net(input_ids=ids).logits.float()


def test_the_sampling_copy_computes_what_the_policy_computes_under_autocast():
    """Full fine-tuning: autocast rounds each fp32 weight to bf16 at every call, the copy stored that rounding once,
    so the two forwards multiply the same bf16 numbers; after an update, a refreshed copy follows the policy and a stale
    one does not (the update moves logits by far more than the 1e-3 allowed for the kernels' summation order)."""
    policy, tok = load("tiny-random")
    policy.eval()
    ids = torch.randint(5, 3000, (2, 24), generator=torch.Generator().manual_seed(0))
    sampler = sampling_copy(policy, "bf16")
    assert sampler is not policy and sampling_copy(policy, "fp32") is policy
    assert all(m.weight.dtype == torch.bfloat16 for m in sampler.modules() if isinstance(m, torch.nn.Linear))
    assert sampler.get_input_embeddings().weight.dtype == torch.float32   # the residual stream stays fp32
    assert torch.allclose(logits(sampler, ids, "bf16"), logits(policy, ids, "bf16"), atol=1e-3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    stale = logits(sampler, ids, "bf16")
    refresh_sampling_copy(sampler, policy)
    assert torch.allclose(logits(sampler, ids, "bf16"), logits(policy, ids, "bf16"), atol=1e-3)
    assert (stale - logits(policy, ids, "bf16")).abs().max() > 0.05


def test_a_lora_policys_sampling_copy_holds_each_merged_weight_rounded_to_bf16():
    """Each adapted layer of the copy is round_bf16(W + (alpha / r) B A), computed here from the layer's own tensors;
    the other weights are the base's, rounded."""
    policy, _ = load("tiny-random")
    inject_lora(policy, rank=4, alpha=8.0)
    sampler = sampling_copy(policy, "bf16")
    layers = lora_layers(policy)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    refresh_sampling_copy(sampler, policy)
    copied = dict(sampler.named_modules())
    for name, layer in layers.items():
        expected = (layer.base.weight + 8.0 / 4 * layer.lora_B @ layer.lora_A).to(torch.bfloat16)
        assert torch.equal(copied[name].weight, expected), name
    head = sampler.get_output_embeddings().weight
    assert torch.equal(head, policy.get_output_embeddings().weight.to(torch.bfloat16))
    # the frozen embedding and norms are the policy's own tensors; the policy is left as it was: fp32, head tied
    embedding = policy.get_input_embeddings().weight
    assert sampler.get_input_embeddings().weight is embedding and embedding.dtype == torch.float32
    assert sampler.model.norm.weight is policy.model.norm.weight
    assert policy.get_output_embeddings().weight is embedding and head.data_ptr() != embedding.data_ptr()
    assert all(layer.base.weight.dtype == torch.float32 for layer in layers.values())
    full, _ = load("tiny-random")   # full fine-tuning: every weight trains, so each is the copy's own
    assert sampling_copy(full, "bf16").get_input_embeddings().weight is not full.get_input_embeddings().weight


def test_lora_bases_of_bf16_values_stored_in_bf16_compute_what_fp32_bases_compute_under_autocast():
    """A base of bf16 values (a bf16 checkpoint read in fp32) with one layer of finer values: store_bases keeps that
    layer in fp32 and stores the other 27 in bf16. Under bf16 autocast the stored model multiplies the same bf16
    numbers as the fp32 one, so its logits and adapter gradients are the fp32-stored model's (tolerance 1e-5: only
    for a kernel that would sum in another order; bases rounded to fp16 instead would move the logits by ~1e-2).
    Merged, each weight is fp32 and equal to W + (alpha / r) B A of the fp32-stored model."""
    net, _ = load("tiny-random")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.bfloat16())
        finer = net.model.layers[0].self_attn.q_proj.weight
        finer.add_(1e-4 * torch.randn(finer.shape, generator=torch.Generator().manual_seed(4)))
    inject_lora(net, rank=4, alpha=8.0)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    stored = copy.deepcopy(net)
    assert store_bases(stored, torch.bfloat16) == 27
    dtypes = {name: layer.base.weight.dtype for name, layer in lora_layers(stored).items()}
    assert dtypes.pop("model.layers.0.self_attn.q_proj") == torch.float32
    assert set(dtypes.values()) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in stored.parameters() if p.requires_grad)   # the adapters
    ids = torch.randint(5, 3000, (2, 24), generator=torch.Generator().manual_seed(6))

    def logits_and_grads(m):
        with autocast("bf16", "cpu"):
            out = m(input_ids=ids).logits.float()
        out.logsumexp(-1).sum().backward()
        return out.detach(), [p.grad for p in m.parameters() if p.requires_grad]
    (ours, our_grads), (theirs, their_grads) = logits_and_grads(stored), logits_and_grads(net)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(our_grads, their_grads))
    expected = {name: (layer.base.weight + 2.0 * (layer.lora_B @ layer.lora_A)).detach()
                for name, layer in lora_layers(net).items()}
    merged = dict(merge_lora(stored).named_modules())
    for name, weight in expected.items():
        assert merged[name].weight.dtype == torch.float32 and torch.equal(merged[name].weight, weight), name


def test_for_inference_leaves_an_fp32_model_alone_and_unties_the_head_under_bf16():
    net, _ = load("tiny-random")
    assert for_inference(net, "fp32") is net and net.lm_head.weight.dtype == torch.float32
    net = for_inference(copy.deepcopy(net), "bf16")
    assert net.lm_head.weight.dtype == torch.bfloat16 and net.get_input_embeddings().weight.dtype == torch.float32


def test_a_bf16_training_step_is_the_fp32_step_within_bf16_rounding():
    """The loss and gradient of one SFT-style step under bf16 autocast against fp32 on the same batch. bf16 keeps 8
    significant bits: each matmul's inputs are rounded by up to 2^-9 (0.2%) relative, and over the 4 layers' ~10
    roundings on a path the errors, independent in sign, grow like their square root: ~1% of the logits. So: loss within
    2%, the gradient's direction within cos >= 0.99 and its norm within 5%. A gradient of another batch, the kind
    of mistake this would catch, has cos ~0 here."""
    net, tok = load("tiny-random")
    net.train()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(5, 3000, (4, 48), generator=g) for _ in range(2)]

    def loss_and_grad(precision, ids):
        net.zero_grad()
        with autocast(precision, "cpu"):
            out = net(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(out[:, :-1].float().reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])
    loss32, grad32 = loss_and_grad("fp32", batches[0])
    loss16, grad16 = loss_and_grad("bf16", batches[0])
    _, other = loss_and_grad("fp32", batches[1])
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.cosine_similarity(grad16, grad32, dim=0) >= 0.99
    assert grad16.norm().item() == pytest.approx(grad32.norm().item(), rel=0.05)
    assert torch.cosine_similarity(other, grad32, dim=0) < 0.9
