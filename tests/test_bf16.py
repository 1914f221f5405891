"""bf16 where the hardware computes it: the choice by capability, the sampling copy that rollouts read (the policy
as autocast computes it, its casts made once), and a bf16 training step against fp32."""

import copy

import pytest
import torch

import model as model_module
from lora import inject_lora, lora_layers
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
