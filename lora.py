"""LoRA by hand: low-rank adapters on frozen linear layers (Hu et al. 2021).

    y = W x + (alpha / r) * B A x        A: [r, in] random, B: [out, r] zero, W frozen

B = 0 at the start, so a fresh adapter leaves the model's outputs unchanged. The adapters are kept in
float32 whatever the base dtype (small, and bf16 updates of tiny deltas underflow); the frozen base layers may be
stored in the compute dtype (store_bases). With adapters disabled the model *is* the base model: that is GRPO's
reference policy, with no second copy.
On disk an adapter is a directory in PEFT's format (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (alpha / r) * B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA paper's code
        self.dropout = nn.Dropout(dropout)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        update = (self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T
        return y + (self.scale * update).to(y.dtype)

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) * B A, in the base weight's dtype."""
        delta = self.scale * (self.lora_B @ self.lora_A)
        return (self.base.weight.float() + delta).to(self.base.weight.dtype)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, rank: int = 16, alpha: float = 32.0, dropout: float = 0.0,
                targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter of `model`, wrap the linear layers whose name ends in one of `targets`
    in LoRALinear, and return the wrapped names. Only the adapters' A and B are trainable after this."""
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, LoRALinear(module, rank, alpha, dropout))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no linear layer named one of {targets} to put LoRA on")
    return wrapped


def store_bases(model: nn.Module, dtype: torch.dtype) -> int:
    """Each adapter's frozen base layer whose weights are `dtype` values (a checkpoint shipped in bf16, as Qwen3's
    is, loaded in fp32) stored in `dtype`, which loses nothing; the adapters stay fp32. Under autocast to that dtype
    the model then computes the same bits in less memory: autocast casts W at every product (and backward keeps that
    cast copy for the input's gradient), a stored W is used as it is. Returns how many layers it stored. A base with
    finer values is left in fp32: rounding it would change the model, its merge and what its adapter means."""
    stored = 0
    for layer in lora_layers(model).values():
        if all(torch.equal(p, p.to(dtype).to(p.dtype)) for p in layer.base.parameters()):
            layer.base.to(dtype)
            stored += 1
    return stored


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W <- W + (alpha / r) B A) in fp32, and unwrap the layer: a base
    stored in bf16 (store_bases) becomes fp32 first, exactly, so that the sum is not rounded to bf16."""
    for name, layer in lora_layers(model).items():
        with torch.no_grad():
            layer.base.float()
            layer.base.weight.copy_(layer.merged_weight())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model


@contextmanager
def disable_adapters(model: nn.Module):
    """Inside this block the model computes exactly its base (reference) outputs."""
    layers = lora_layers(model).values()
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.enabled = was


# ----------------------------------------------------------------------------------------------
# On disk: PEFT's format, so PEFT loads the adapter and vLLM serves it
# ----------------------------------------------------------------------------------------------
PEFT_PREFIX = "base_model.model."   # PEFT's key of a module is this + its name in the model, no adapter name
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{PEFT key: tensor}: base_model.model.<module>.lora_A.weight ([r, in]) and .lora_B.weight ([out, r])."""
    return {f"{PEFT_PREFIX}{name}.{part}.weight": getattr(layer, part).detach().contiguous()
            for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}


def save_adapter(model: nn.Module, out_dir: str | Path, base_model: str) -> None:
    """Write the adapter as PEFT does: OUT_DIR/adapter_config.json and OUT_DIR/adapter_model.safetensors
    (each file to a temp name, then renamed). `base_model` is the model the adapter applies to."""
    layers = lora_layers(model)
    any_layer = next(iter(layers.values()))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": any_layer.rank, "lora_alpha": any_layer.alpha, "lora_dropout": any_layer.dropout.p,
              "target_modules": sorted({n.split(".")[-1] for n in layers}), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": None}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(out_dir / (WEIGHTS_FILE + ".tmp")), metadata={"format": "pt"})
    (out_dir / (CONFIG_FILE + ".tmp")).write_text(json.dumps(config, indent=1))
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (out_dir / (name + ".tmp")).replace(out_dir / name)


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> None:
    """Load an adapter directory in PEFT's format (ours, or PEFT's own), injecting LoRA layers first if the
    model has none."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    if not lora_layers(model):
        inject_lora(model, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                    targets=tuple(config["target_modules"]))
    state = load_file(str(adapter_dir / WEIGHTS_FILE))
    expected = adapter_state(model)
    missing = set(expected) - set(state)
    if missing:
        raise ValueError(f"{adapter_dir / WEIGHTS_FILE}: adapter lacks {len(missing)} tensors, "
                         f"e.g. {sorted(missing)[0]}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key in expected:
            name, part = key[len(PEFT_PREFIX):-len(".weight")].rsplit(".", 1)
            getattr(layers[name], part).copy_(state[key])
