import json

import pytest
import torch

import model as model_module
from model import ModelLoadError, load, save


def test_unreachable_hub_fails_in_one_line(monkeypatch):
    monkeypatch.setattr(model_module, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ModelLoadError) as err:
        load("SomeOrg/NotCachedModel")
    message = str(err.value)
    assert "\n" not in message and "--model DIR" in message and "SomeOrg/NotCachedModel" in message


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load(str(tmp_path / "nope"))


def test_save_is_a_valid_model_and_atomic(tmp_path):
    m, tok = load("tiny-random")
    out = save(m, tok, tmp_path / "m")
    again, tok2 = load(str(out))
    ids = torch.tensor([tok("hello")["input_ids"]])
    assert torch.equal(m(ids).logits, again(ids).logits)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3"
    assert not list(tmp_path.glob(".m.*"))          # no temp dirs left behind
    save(m, tok, out)                                # overwriting replaces the directory whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").exists()  # safetensors only, no pickle
