"""Every stage end to end for a few steps: the tiny default, and a random Qwen3 with the real Qwen3 tokenizer."""

import json

import pytest

import eval as evaluation
import grpo
import sft


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("small")
    for name, n in (("retail_train.json", 6), ("retail_test.json", 2), ("retail_cold_start.json", 3)):
        (out / name).write_text(json.dumps(json.loads((demo_dir / name).read_text())[:n]))
    return out


def run_all_stages(model: str, data, out, lora: list[str], precision: tuple[str, ...] = ()):
    assert sft.main(["--mode", "base", "--model", model, "--data", str(data / "retail_train.json"), "--out",
                     str(out / "sft"), "--max-steps", "2", "--batch-size", "4", *lora, *precision]) == 0
    assert sft.main(["--mode", "cold-start", "--model", str(out / "sft"), "--data",
                     str(data / "retail_cold_start.json"), "--out", str(out / "cold"), "--max-steps", "2",
                     "--batch-size", "4", *lora, *precision]) == 0
    cold_args = json.loads((out / "cold" / "args.json").read_text())  # replays the base run's own data
    assert cold_args["replay_ratio"] > 0 and cold_args["replay_data"] == str(data / "retail_train.json")
    assert grpo.main(["--model", str(out / "cold"), "--data", str(data / "retail_train.json"), "--out",
                      str(out / "grpo"), "--steps", "2", "--group-size", "2", "--prompts-per-step", "2",
                      "--max-new-tokens", "12", "--eval-data", str(data / "retail_test.json"), "--eval-limit", "2",
                      *lora, *precision]) == 0
    assert evaluation.main(["--model", model, "--model", str(out / "grpo"), "--data", str(data / "retail_test.json"),
                            "--limit", "3", "--max-new-tokens", "12", "--out", str(out / "table.json"),
                            *precision[:2]]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table[model]["thinking"] is False and table[str(out / "grpo")]["thinking"] is True
    log = [json.loads(line) for line in (out / "grpo" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2] and "eval" in log[-1]
    for key in ("reward", "kl", "clip_fraction", "zero_variance_groups", "seconds", "tokens_per_s"):
        assert key in log[1]


def test_tiny_default_runs_every_stage(tmp_path, small_data):
    run_all_stages("tiny-random", small_data, tmp_path, [])


def test_real_qwen3_tokenizer_runs_every_stage(tmp_path, small_data, qwen_random_dir):
    """The GPU path on the CPU: LoRA, bf16 autocast and gradient checkpointing in every stage."""
    run_all_stages(str(qwen_random_dir), small_data, tmp_path, ["--lora-rank", "4"],
                   ("--precision", "bf16", "--grad-checkpointing", "on"))
    for stage in ("sft", "cold", "grpo"):
        run = json.loads((tmp_path / stage / "args.json").read_text())
        assert run["precision"] == "bf16" and run["grad_checkpointing"] == "on"
        assert (tmp_path / stage / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "table.json").read_text())[str(tmp_path / "grpo")]["turns"] == 3
