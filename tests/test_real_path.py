"""The paper's setting rehearsed end to end: an APIGen-MT-5k-shaped file (written here) and a random Qwen3 carrying
the real Qwen3 tokenizer go through `MODEL=... DATA=... bash pipeline.sh`, with a few steps per stage."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from data import load_turn_samples, read_records
from model import load
from pretrain_worlds import AIRLINE
from worlds import RETAIL, conversation

ROOT = Path(__file__).resolve().parent.parent
POLICY = " ".join(f"Rule {k}: before any action that changes the database, list the action's details and obtain the "
                  f"user's explicit confirmation (yes) to proceed; never make up information or procedures; deny "
                  f"requests that are against this policy; transfer to a human agent only if the request cannot be "
                  f"handled within the scope of your actions." for k in range(1, 13))   # ~1k tokens of policy


def apigen_record(domain, db, customer, rng: random.Random, index: int) -> dict:
    """One APIGen-MT-5k-shaped record: a long policy system prompt, the tools with a `think` tool among them, and
    the demo flow's reasoning written as think calls with empty observations before the actions."""
    record = conversation(domain, db, customer, rng, think=True)
    entries = []
    for entry in record["conversations"]:
        value = entry["value"]
        if entry["from"] == "gpt" and value.startswith("<think>"):
            thought, _, text = value[len("<think>\n"):].partition("\n</think>")
            call = {"name": "think", "arguments": {"thought": thought}}
            entries += [{"from": "function_call", "value": json.dumps(call)}, {"from": "observation", "value": ""}]
            if text.strip():
                entries.append({"from": "gpt", "value": text.strip()})
        else:
            entries.append(entry)
    entries[0] = {"from": "human", "value": f"[ticket {index}] {entries[0]['value']}"}  # each dialogue recognisable
    tools = json.loads(record["tools"]) + [{"name": "think", "description": "Think about something.",
                                            "parameters": {"type": "object", "properties": {
                                                "thought": {"type": "string"}}, "required": ["thought"]}}]
    return {"conversations": entries, "tools": json.dumps(tools), "system": f"{record['system']}\n\n{POLICY}"}


def write_apigen_file(path: Path, n_retail: int = 24, n_airline: int = 8) -> Path:
    rng = random.Random(7)
    records = []
    for domain, n in ((RETAIL, n_retail), (AIRLINE, n_airline)):
        db = domain.make_db(rng, 50)
        customers = list(db[domain.customers].values())
        records += [apigen_record(domain, db, rng.choice(customers), rng, len(records) + k) for k in range(n)]
    path.write_text(json.dumps(records))
    return path


def first_user_message(entries: list[dict]) -> str:
    return next(e["value"] for e in entries if e["from"] == "human")


def test_apigen_file_through_pipeline_sh(tmp_path, qwen_random_dir, qwen_tokenizer):
    data = write_apigen_file(tmp_path / "apigen-mt_5k.json")
    samples, _ = load_turn_samples(data)
    assert any(len(s.target.tool_calls) > 1 for s in samples)                       # parallel calls
    longest = max(len(qwen_tokenizer(qwen_tokenizer.apply_chat_template(s.chat(), tools=s.template_tools(),
                                                                        tokenize=False))["input_ids"]) for s in samples)
    assert longest > 1000                                                            # prompts past 1k tokens
    out = tmp_path / "run"
    env = dict(os.environ, MODEL=str(qwen_random_dir), DATA=str(data), OUT=str(out), TEST_RECORDS="4",
               SFT_FLAGS="--max-steps 2 --batch-size 2 --max-len 4096",
               COLD_FLAGS="--max-steps 2 --batch-size 2 --max-len 4096",
               GRPO_FLAGS="--steps 2 --group-size 2 --prompts-per-step 2 --max-new-tokens 8 --max-prompt-len 4096",
               EVAL_FLAGS="--limit 4 --max-new-tokens 8",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", str(ROOT / "pipeline.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    cold, _ = load_turn_samples(out / "data" / "cold_start.jsonl")
    assert 0 < len(cold) < 100 and all(s.target.reasoning for s in cold)
    held_out = {first_user_message(r["conversations"]) for r in read_records(out / "data" / "test.json")}
    train = {first_user_message(r["conversations"]) for r in read_records(out / "data" / "train.json")}
    cold_firsts = {first_user_message(t["context"]) for t in map(json.loads, (out / "data" / "cold_start.jsonl")
                                                                 .read_text().splitlines())}
    assert cold_firsts <= train and not cold_firsts & held_out      # never a held-out conversation
    for stage, previous in (("sft", str(qwen_random_dir)), ("cold", str(out / "sft")), ("grpo", str(out / "cold"))):
        run = json.loads((out / stage / "args.json").read_text())
        assert run["model"] == previous                              # each stage starts from the one before
        load(str(out / stage))                                       # and its output is itself a valid --model
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["vanilla", "base_sft", "cold_start", "grpo"]
    assert results["cold_start"]["thinking"] and results["grpo"]["thinking"] and not results["base_sft"]["thinking"]

    # RESUME=1 after a finished run: every training stage is kept, every evaluated row too (nothing is redone)
    again = subprocess.run(["bash", str(ROOT / "pipeline.sh")], env=dict(env, RESUME="1"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, stage in (("base_sft", "sft"), ("cold_start", "cold"), ("grpo", "grpo")):
        assert f"{name}: done ({out / stage})" in again.stdout
    assert json.loads((out / "results.json").read_text()) == results
