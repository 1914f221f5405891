"""Conversations and turn samples.

Reads APIGen-MT-5k records (a JSON list, or JSONL of the same records):

    {"conversations": [{"from": "human" | "gpt" | "function_call" | "observation", "value": str}, ...],
     "tools": "<JSON string of [{name, description, parameters}]>", "system": "<policy text>"}

and turns every assistant action after the first user message into one *turn sample*: the context
(system, tools, chat messages so far) and the reference action (reasoning?, answer text or tool calls).
SFT trains on turn samples, GRPO rewards against them, eval scores against them.

Reasoning: a `gpt` value that starts with `<think>...</think>` carries the action's reasoning (the
demo cold-start set is written this way); the rest of the value is the answer text. APIGen-MT's own
reasoning, `think` tool calls ({"name": "think", "arguments": {"thought": ...}}, empty observation), becomes
the reasoning of the next action (thoughts the agent never acts on before the user speaks are dropped),
and the `think` tool leaves the tool list. Contexts carry no earlier reasoning: only a target keeps its own.
A `gpt` text directly followed by `function_call` entries is one assistant message with content and tool calls.

Next-action tests (ALMITA-style, JSONL, one test a line) share the converter:

    {"conversation_id": "c7", "system": str, "tools": <JSON string or list>,
     "context": [{"from", "value"}, ...],           # the conversation prefix, APIGen-MT entries
     "expected": [{"from", "value"}, ...]}          # the next agent action: gpt text or function_call(s)

CLI:  python data.py inspect PATH [--skip-bad]      python data.py demo --out DIR [--seed N]
      python data.py split PATH --out DIR [--test 200]  (hold out whole conversations of a real data file)
      python data.py cold-start TRAIN --out FILE [--turns 96]  (the cold-start set, from APIGen-MT's think calls)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cli import BadInput, run_cli
from worlds import retail_splits

ROLES = {"human", "gpt", "function_call", "observation"}
THINK_TOOL = "think"   # APIGen-MT's reasoning: {"name": "think", "arguments": {"thought": ...}}, empty observation
MAX_COLD_START_TURNS = 99   # "fewer than 100 examples" (the paper)


class DataError(BadInput, ValueError):
    """Bad input: the message names the file, the record and the field."""


@dataclass
class Action:
    """One assistant action: optional reasoning, then tool calls or an answer text."""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # [{"name": str, "arguments": dict}]
    reasoning: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return bool(self.tool_calls)

    def message(self) -> dict:
        """The action as a chat message for a tokenizer's chat template."""
        msg: dict = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [{"type": "function", "function": c} for c in self.tool_calls]
        return msg


@dataclass
class TurnSample:
    """The conversation so far and the reference next assistant action."""
    conversation_id: str
    system: str
    tools: list[dict]          # tool schemas {"name", "description", "parameters"}
    messages: list[dict]       # chat messages before the action (user / assistant / tool), no system
    target: Action

    def chat(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def template_tools(self) -> list[dict] | None:
        return [{"type": "function", "function": t} for t in self.tools] or None


def render_prompt(tokenizer, sample: TurnSample, thinking: bool) -> str:
    """The context rendered by the tokenizer's chat template, ending with the assistant header
    (and, with thinking off, Qwen3's empty think block)."""
    return tokenizer.apply_chat_template(sample.chat(), tools=sample.template_tools(), tokenize=False,
                                         add_generation_prompt=True, enable_thinking=thinking)


def prompt_ids(tokenizer, sample: TurnSample, thinking: bool) -> list[int]:
    """The rendered prompt's token ids, tokenised on its own exactly as at inference."""
    return tokenizer(render_prompt(tokenizer, sample, thinking), add_special_tokens=False)["input_ids"]


@dataclass
class Conversation:
    conversation_id: str
    system: str
    tools: list[dict]
    messages: list[dict]       # chat messages; assistant ones carry an `action` (Action) key too

    def turn_samples(self) -> list[TurnSample]:
        samples, seen_user = [], False
        for i, msg in enumerate(self.messages):
            seen_user = seen_user or msg["role"] == "user"
            if msg["role"] == "assistant" and seen_user:
                context = [strip_action(m) for m in self.messages[:i]]
                samples.append(TurnSample(self.conversation_id, self.system, self.tools, context, msg["action"]))
        return samples


def strip_action(msg: dict) -> dict:
    return msg["action"].message() if msg["role"] == "assistant" else msg


def split_reasoning(text: str, where: str) -> tuple[str | None, str]:
    """'<think>\\nR\\n</think>\\n\\nA' -> ('R', 'A'); text without a leading think block -> (None, text)."""
    if not text.lstrip().startswith("<think>"):
        return None, text
    body = text.lstrip()[len("<think>"):]
    if "</think>" not in body:
        raise DataError(f"{where}: <think> is not closed by </think>")
    reasoning, answer = body.split("</think>", 1)
    return reasoning.strip("\n"), answer.lstrip("\n")


def parse_call(value: str, where: str) -> dict:
    try:
        call = json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: function_call value is not valid JSON ({e.msg})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise DataError(f"{where}: function_call value has no string 'name'")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise DataError(f"{where}: function_call arguments string is not valid JSON") from None
    if not isinstance(args, dict):
        raise DataError(f"{where}: function_call arguments must be a JSON object")
    return {"name": call["name"], "arguments": args}


def parse_tools(tools, where: str) -> list[dict]:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(tools, list):
        raise DataError(f"{where}: must be a JSON list of tools")
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise DataError(f"{where}[{j}]: a tool must be an object with a string 'name'")
    return tools


def convert_entries(entries, where: str) -> list[dict]:
    """APIGen-MT `conversations` entries -> chat messages (assistant messages carry an `action`)."""
    if not isinstance(entries, list):
        raise DataError(f"{where}: must be a list")
    if not entries:
        raise DataError(f"{where}: conversation is empty")
    messages: list[dict] = []
    open_calls = 0            # calls made whose observations have not arrived yet
    calling: Action | None = None  # the assistant action that further function_calls join
    thoughts: list[str] = []  # think calls since the last action: the reasoning of the next one
    think_observations = 0    # think calls whose (empty) observations have not arrived yet
    for k, entry in enumerate(entries):
        at = f"{where}[{k}]"
        if not isinstance(entry, dict):
            raise DataError(f"{at}: must be an object with 'from' and 'value'")
        role, value = entry.get("from"), entry.get("value")
        if role not in ROLES:
            raise DataError(f"{at}.from: unknown role {role!r} (expected one of {sorted(ROLES)})")
        if not isinstance(value, str):
            raise DataError(f"{at}.value: must be a string, got {type(value).__name__}")
        if role == "observation" and think_observations and not value.strip():
            think_observations -= 1
            continue
        if role == "function_call":
            call = parse_call(value, f"{at}.value")
            if call["name"] == THINK_TOOL:
                thoughts.append(str(call["arguments"].get("thought", "")).strip())
                think_observations += 1
                calling = None
                continue
            open_calls += 1
            if calling is None:  # a call not preceded by assistant text starts a new action
                calling = Action(reasoning="\n".join(thoughts) if thoughts else None)
                thoughts = []
                messages.append({"role": "assistant", "action": calling})
            calling.tool_calls.append(call)  # a parallel call, or the calls of a text action
        elif role == "gpt":
            reasoning, content = split_reasoning(value, f"{at}.value")
            if reasoning is None and thoughts:
                reasoning = "\n".join(thoughts)
            thoughts = []
            calling = Action(content, [], reasoning)
            messages.append({"role": "assistant", "action": calling})
        elif role == "human":
            calling, thoughts = None, []   # a thought the agent never acted on is dropped
            messages.append({"role": "user", "content": value})
        else:  # observation
            if open_calls == 0:
                raise DataError(f"{at}.from: observation with no function_call before it")
            calling = None
            open_calls -= 1
            messages.append({"role": "tool", "content": value})
    for m in messages:
        if m["role"] == "assistant":
            m.update({k: v for k, v in m["action"].message().items() if k != "role"})
    return messages


def convert_record(record, where: str, conversation_id: str) -> Conversation:
    if not isinstance(record, dict):
        raise DataError(f"{where}: must be an object")
    if "conversations" not in record:
        raise DataError(f"{where}: conversations: missing field")
    if "tools" not in record:
        raise DataError(f"{where}: tools: missing field")
    system = record.get("system", "")
    if not isinstance(system, str):
        raise DataError(f"{where}: system: must be a string")
    tools = [t for t in parse_tools(record["tools"], f"{where}: tools") if t["name"] != THINK_TOOL]
    messages = convert_entries(record["conversations"], f"{where}: conversations")
    return Conversation(conversation_id, system, tools, messages)


def read_records(path: str | Path) -> list:
    """A JSON list file or a JSONL file (one record a line)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{name}: cannot read ({e.strerror})") from None
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{name}: line {n + 1}: invalid JSON ({e.msg})") from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{name}: top level must be a JSON list of records, got {type(records).__name__}")
    return records


def convert_next_action_test(record, where: str) -> TurnSample:
    if not isinstance(record, dict):
        raise DataError(f"{where}: must be an object")
    cid = record.get("conversation_id")
    if not isinstance(cid, (str, int)):
        raise DataError(f"{where}: conversation_id: missing or not a string")
    for key in ("context", "expected"):
        if not isinstance(record.get(key), list):
            raise DataError(f"{where}: {key}: missing or not a list")
    expected_roles = [e.get("from") if isinstance(e, dict) else None for e in record["expected"]]
    calls = expected_roles[1:] if expected_roles[:1] == ["gpt"] else expected_roles
    if not expected_roles or any(r != "function_call" for r in calls) or (not calls and expected_roles != ["gpt"]):
        raise DataError(f"{where}: expected: must be one agent action: a gpt text, function_call entries, or both")
    conv = convert_record({"conversations": record["context"] + record["expected"], "tools": record.get("tools", "[]"),
                           "system": record.get("system", "")}, where, str(cid))
    samples = conv.turn_samples()
    if not samples:   # an action is a turn sample only after the first user message (Conversation.turn_samples)
        raise DataError(f"{where}: context: no user message before the expected action")
    return samples[-1]


def load_conversations(path: str | Path, skip_bad: bool = False) -> tuple[list[Conversation], list[str]]:
    """Validated conversations of an APIGen-MT-5k file; with skip_bad, bad records are skipped and
    their errors returned."""
    name = Path(path).name
    conversations, skipped = [], []
    for i, record in enumerate(read_records(path)):
        try:
            conversations.append(convert_record(record, f"{name}: record {i}", f"{name}#{i}"))
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    return conversations, skipped


def is_next_action_file(records: list) -> bool:
    return bool(records) and isinstance(records[0], dict) and "expected" in records[0]


def without_history_reasoning(sample: TurnSample) -> TurnSample:
    """The sample with the reasoning of its earlier assistant turns dropped: only the target keeps its own. Every
    context a model is trained, rewarded or evaluated on is a reference history without reasoning; a cold start on
    histories that show thinking teaches the model to think only after turns that were themselves thought."""
    messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in sample.messages]
    return dataclasses.replace(sample, messages=messages)


def load_turn_samples(path: str | Path, skip_bad: bool = False) -> tuple[list[TurnSample], list[str]]:
    """Turn samples of an APIGen-MT-5k file or of a next-action test file (detected by its 'expected' key), their
    contexts without earlier reasoning (without_history_reasoning)."""
    name = Path(path).name
    records = read_records(path)
    if not is_next_action_file(records):
        conversations, skipped = load_conversations(path, skip_bad)
        return [without_history_reasoning(s) for c in conversations for s in c.turn_samples()], skipped
    samples, skipped = [], []
    for i, record in enumerate(records):
        try:
            samples.append(without_history_reasoning(convert_next_action_test(record, f"{name}: record {i}")))
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    return samples, skipped


def next_action_test(sample: TurnSample) -> dict:
    """A turn sample as a next-action test (the ALMITA-style format)."""
    return {"conversation_id": sample.conversation_id, "system": sample.system, "tools": json.dumps(sample.tools),
            "context": to_entries(sample.messages), "expected": to_entries([sample.target.message()])}


def next_action_tests(conversations: list[Conversation]) -> list[dict]:
    """Every turn of APIGen-MT conversations as a next-action test."""
    return [next_action_test(sample) for conv in conversations for sample in conv.turn_samples()]


def to_entries(messages: list[dict]) -> list[dict]:
    """Chat messages -> APIGen-MT entries (inverse of convert_entries)."""
    entries = []
    for m in messages:
        if m["role"] == "user":
            entries.append({"from": "human", "value": m["content"]})
        elif m["role"] == "tool":
            entries.append({"from": "observation", "value": m["content"]})
        else:
            text = m.get("content", "")
            if m.get("reasoning_content") is not None:
                text = f"<think>\n{m['reasoning_content']}\n</think>" + (f"\n\n{text}" if text else "")
            if text or not m.get("tool_calls"):
                entries.append({"from": "gpt", "value": text})
            for c in m.get("tool_calls", []):
                entries.append({"from": "function_call", "value": json.dumps(c["function"])})
    return entries


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def write_text_atomic(path: Path, text: str) -> None:
    """Whole or not at all: a kill while writing leaves the old file (or none), never half of the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_records(path: Path, records: list) -> None:
    """Records in the format read_records reads back from this name: JSONL for .jsonl, a JSON list otherwise."""
    if path.suffix == ".jsonl":
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    else:
        write_json_atomic(path, records)


DEMO_FILES = {"train": "retail_train.json", "test": "retail_test.json", "cold_start": "retail_cold_start.json",
              "val": "retail_val.json"}
NEXT_ACTION_FILE = "retail_test_next_action.jsonl"


def write_demo(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the retail demo splits (and the held-out split as next-action tests) to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in retail_splits(seed).items():
        paths[split] = out / DEMO_FILES[split]
        write_records(paths[split], records)
    paths["test_next_action"] = out / NEXT_ACTION_FILE
    write_records(paths["test_next_action"], next_action_tests(load_conversations(paths["test"])[0]))
    return paths


DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"


def resolve_data(name: str) -> str:
    """A data path, or `demo:SPLIT` (train, test, cold_start, val, test_next_action): the demo file, written to
    data/demo on first use."""
    if not name.startswith("demo:") or name == "demo:pretrain-stream":
        return name
    split = name.split(":", 1)[1]
    files = {**DEMO_FILES, "test_next_action": NEXT_ACTION_FILE}
    if split not in files:
        raise DataError(f"{name}: unknown demo split (one of {', '.join(files)})")
    if not (DEMO_DIR / files[split]).exists():
        write_demo(DEMO_DIR)
    return str(DEMO_DIR / files[split])


def split_records(path: str, out: str | Path, n_test: int, seed: int) -> dict[str, Path]:
    """Hold out n_test whole records (conversations), chosen with a seeded shuffle."""
    records = read_records(path)
    if not 0 < n_test < len(records):
        raise DataError(f"{Path(path).name}: cannot hold out {n_test} of {len(records)} records")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_test])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.json", "test": out / "test.json"}
    write_records(paths["train"], [r for i, r in enumerate(records) if i not in held_out])
    write_records(paths["test"], [r for i, r in enumerate(records) if i in held_out])
    return paths


REFUSAL = re.compile(r"\b(sorry|unable|cannot|can't|not able|not allowed|not possible)\b", re.IGNORECASE)


def action_kind(action: Action) -> str:
    """What kind of action a turn is: the tool it calls (parallel calls: their names joined by +), or for an answer
    a clarifying question (ends with '?'), a refusal (sorry / cannot / unable ...), or a plain answer."""
    if action.tool_calls:
        return "call " + "+".join(sorted({c["name"] for c in action.tool_calls}))
    text = action.content.strip()
    if text.endswith("?"):
        return "answer: question"
    return "answer: refusal" if REFUSAL.search(text) else "answer"


def build_cold_start(path: str | Path, turns: int = 96, seed: int = 0) -> tuple[list[dict], Counter]:
    """The cold-start set of an APIGen-MT-5k file: `turns` (< 100) next-action tests whose expected action carries
    the reasoning of the `think` calls before it, spread over the kinds of action (action_kind) as evenly as the
    data allows: the kinds are taken in turn (sorted by name), each contributing its next example in a seeded
    order, from a conversation not used yet while there is one. Returns the tests and their count per kind."""
    name = Path(path).name
    if not 0 < turns <= MAX_COLD_START_TURNS:
        raise DataError(f"--turns {turns}: the cold start uses between 1 and {MAX_COLD_START_TURNS} turns")
    candidates = [s for s in load_turn_samples(path)[0] if s.target.reasoning]
    if not candidates:
        raise DataError(f"{name}: no '{THINK_TOOL}' tool calls with a thought before an action, so there is no "
                        f"reasoning to build a cold start from; write one by hand instead (gpt values that start with "
                        f"<think>...</think>, README: Data)")
    by_kind: dict[str, list[TurnSample]] = {}
    for s in candidates:
        by_kind.setdefault(action_kind(s.target), []).append(s)
    rng = random.Random(seed)
    for kind in sorted(by_kind):
        rng.shuffle(by_kind[kind])
    chosen, used, counts = [], set(), Counter()
    while len(chosen) < min(turns, len(candidates)):
        for kind in sorted(by_kind):
            pool = by_kind[kind]
            if not pool or len(chosen) == turns:
                continue
            pick = next((s for s in pool if s.conversation_id not in used), pool[0])
            pool.remove(pick)
            used.add(pick.conversation_id)
            chosen.append(pick)
            counts[kind] += 1
    return [next_action_test(s) for s in chosen], counts


def value_source(value, user_text: str, tool_text: str) -> str:
    """Where an argument's value stands in the context: "user" if the user wrote it (as a whole word), else "tool"
    if a tool result holds it, else "new"; a list or dict by its parts (their sources joined with +, in first-seen
    order)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        sources = [value_source(v, user_text, tool_text) for v in value] or ["new"]
        return "+".join(dict.fromkeys(sources))
    text = re.compile(rf"(?<!\w){re.escape(value if isinstance(value, str) else json.dumps(value))}(?!\w)")
    return "user" if text.search(user_text) else "tool" if text.search(tool_text) else "new"


def structured_trace(sample: TurnSample) -> str:
    """A short structured reasoning trace for a sample's action, in the style that "Brief Is Better" (arXiv
    2604.02155) found to stop function hallucination: the function, then each argument with where its value
    comes from in the context (value_source), or that the turn is a reply:

        Function: get_order_details. Key args: order_id=W43740 (user).
        Function: none; reply to the user.
    """
    calls = sample.target.tool_calls
    if not calls:
        return "Function: none; reply to the user."
    user_text = " ".join(str(m.get("content", "")) for m in sample.messages if m["role"] == "user")
    tool_text = " ".join(str(m.get("content", "")) for m in sample.messages if m["role"] == "tool")
    args = [f"{k}={v if isinstance(v, str) else json.dumps(v)} ({value_source(v, user_text, tool_text)})"
            for c in calls for k, v in c["arguments"].items()]
    return f"Function: {', '.join(c['name'] for c in calls)}. Key args: {'; '.join(args) or 'none'}."


def with_structured_traces(path: str | Path) -> list[dict]:
    """A cold-start file's turns with reasoning, each trace replaced by its structured_trace, as next-action tests
    (the same turns and actions: only the text inside <think> changes)."""
    samples = [s for s in load_turn_samples(path)[0] if s.target.reasoning is not None]
    if not samples:
        raise DataError(f"{Path(path).name}: no turn carries a reasoning trace to restyle")
    return [next_action_test(dataclasses.replace(s, target=dataclasses.replace(s.target,
                                                                                reasoning=structured_trace(s))))
            for s in samples]


def inspect(path: str, skip_bad: bool) -> None:
    samples, skipped = load_turn_samples(resolve_data(path), skip_bad)
    conversations = len({s.conversation_id for s in samples})
    tool_turns = sum(s.target.is_tool_call for s in samples)
    tools = Counter(t["name"] for s in samples for t in s.tools)
    calls = Counter(c["name"] for s in samples for c in s.target.tool_calls)
    print(f"file:              {path}")
    print(f"conversations:     {conversations}")
    print(f"turn samples:      {len(samples)}")
    print(f"tool-call turns:   {tool_turns} ({sum(len(s.target.tool_calls) > 1 for s in samples)} parallel)")
    print(f"answer turns:      {len(samples) - tool_turns}")
    print(f"with reasoning:    {sum(s.target.reasoning is not None for s in samples)}")
    print(f"tools found:       {len(tools)}: {', '.join(sorted(tools))}")
    print(f"calls per tool:    {dict(sorted(calls.items()))}")
    if skipped:
        print(f"skipped {len(skipped)} bad records:")
        for err in skipped:
            print(f"  {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="validate a data file and print what it holds")
    p.add_argument("path")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records and list them instead of failing")
    p = sub.add_parser("split", help="split a data file's records into train.json and test.json (seeded)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--test", type=int, default=200, help="records held out")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("cold-start", help="build the cold-start set (< 100 turns with reasoning) from the think "
                       "calls of an APIGen-MT-5k file: use the train part of a split")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="the set, as next-action tests (JSONL for a .jsonl name, else a JSON "
                   "list)")
    p.add_argument("--turns", type=int, default=96, help="examples, fewer than 100")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("structured-traces", help="rewrite a cold-start set's traces as short structured ones "
                       "(function, arguments and their sources: data.structured_trace)")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="the restyled set, as next-action tests")
    p = sub.add_parser("demo", help="write the retail demo splits (deterministic)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body():
        if args.command == "inspect":
            inspect(args.path, args.skip_bad)
        elif args.command == "cold-start":
            tests, counts = build_cold_start(args.path, args.turns, args.seed)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_records(out, tests)
            print(f"{out}: {len(tests)} turns with reasoning from {len({t['conversation_id'] for t in tests})} "
                  f"conversations")
            for kind, n in sorted(counts.items()):
                print(f"  {n:3d}  {kind}")
        elif args.command == "structured-traces":
            tests = with_structured_traces(resolve_data(args.path))
            write_records(Path(args.out), tests)
            print(f"{args.out}: {len(tests)} turns, traces restyled")
        elif args.command == "split":
            for name, path in split_records(args.path, args.out, args.test, args.seed).items():
                print(f"{name}: {path}")
        else:
            for split, path in write_demo(args.out, args.seed).items():
                print(f"{split}: {path}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
