import torch

from lora import LoRALinear, disable_adapters, inject_lora, load_adapter, lora_layers, merge_lora, save_adapter
from model import load


def tiny_model():
    model, tok = load("tiny-random")
    return model.eval(), tok


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)


def test_linear_formula_by_hand():
    base = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    layer = LoRALinear(base, rank=1, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0, 0.0]]))
        layer.lora_B.copy_(torch.tensor([[0.5], [1.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # W x = [1 + 6, 2] = [7, 2]; A x = 3; B A x = [1.5, 3]; scale alpha / r = 2 -> y = [7 + 3, 2 + 6]
    assert torch.allclose(layer(x), torch.tensor([[10.0, 8.0]]))


def test_fresh_adapter_is_identity_and_only_adapters_train():
    model, tok = tiny_model()
    ids = torch.tensor([tok("order W12345 is pending")["input_ids"]])
    before = model(ids).logits
    names = inject_lora(model, rank=4, alpha=8)
    assert len(names) == 4 * 7  # q k v o gate up down in each of 4 layers
    assert torch.equal(model(ids).logits, before)
    randomize_adapters(model)
    model(ids).logits.sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_merge_disable_and_round_trip(tmp_path):
    model, tok = tiny_model()
    ids = torch.tensor([tok("where is my order")["input_ids"]])
    base = model(ids).logits
    inject_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    adapted = model(ids).logits
    assert not torch.allclose(adapted, base)
    with disable_adapters(model):
        assert torch.equal(model(ids).logits, base)      # the reference policy, exactly
    assert torch.equal(model(ids).logits, adapted)       # re-enabled on exit
    save_adapter(model, tmp_path / "adapter", base_model="tiny-random")
    other, _ = tiny_model()
    load_adapter(other, tmp_path / "adapter")
    assert torch.equal(other(ids).logits, adapted)
    merge_lora(model)
    assert not lora_layers(model)
    assert torch.allclose(model(ids).logits, adapted, atol=1e-5)
