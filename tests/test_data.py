import dataclasses
import hashlib
import json

import pytest

import data
from data import Action, DataError, TurnSample, load_conversations, load_turn_samples

CALL = json.dumps({"name": "get_order_details", "arguments": {"order_id": "W1"}})
TOOLS = json.dumps([{"name": "get_order_details", "description": "d", "parameters": {}}])


def record(conversations, tools=TOOLS, system="S"):
    return {"conversations": conversations, "tools": tools, "system": system}


def write(tmp_path, records, name="train.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_conversion_merges_text_with_calls_and_parallel_calls(tmp_path):
    conv = [{"from": "human", "value": "hi"},
            {"from": "gpt", "value": "Let me check."},
            {"from": "function_call", "value": CALL},
            {"from": "function_call", "value": json.dumps({"name": "think", "arguments": {"thought": "x"}})},
            {"from": "observation", "value": "{}"}, {"from": "observation", "value": ""},
            {"from": "gpt", "value": "<think>\nbecause\n</think>\n\nDone."}]
    [c], skipped = load_conversations(write(tmp_path, [record(conv)]))
    assert skipped == []
    roles = [m["role"] for m in c.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]    # the think call and its empty observation go
    first = c.messages[1]["action"]
    assert first.content == "Let me check."
    assert [t["name"] for t in first.tool_calls] == ["get_order_details"]
    assert c.messages[2]["content"] == "{}"
    last = c.messages[3]["action"]
    assert (last.reasoning, last.content) == ("because", "Done.")   # its own reasoning wins over the thought
    samples = c.turn_samples()
    assert len(samples) == 2
    assert samples[1].messages[-1] == {"role": "tool", "content": "{}"}
    assert samples[0].target.is_tool_call and not samples[1].target.is_tool_call


def test_assistant_before_first_user_is_not_a_sample(tmp_path):
    conv = [{"from": "gpt", "value": "Welcome"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello"}]
    [sample], _ = load_turn_samples(write(tmp_path, [record(conv)]))
    assert sample.target.content == "Hello" and len(sample.messages) == 2


def test_jsonl_reads_the_same_records(tmp_path):
    recs = [record([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}])] * 3
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    samples, _ = load_turn_samples(tmp_path / "x.jsonl")
    assert len(samples) == 3


GOOD = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]
BAD_RECORDS = [
    (record([{"from": "robot", "value": "x"}]), "record 1: conversations[0].from: unknown role 'robot'"),
    (record(GOOD, tools="[not json"), "record 1: tools: not valid JSON"),
    (record(GOOD, tools='{"a": 1}'), "record 1: tools: must be a JSON list"),
    (record([{"from": "human", "value": "x"}, {"from": "function_call", "value": "{oops"}]),
     "record 1: conversations[1].value: function_call value is not valid JSON"),
    (record([{"from": "human", "value": "x"}, {"from": "function_call", "value": '{"arguments": {}}'}]),
     "record 1: conversations[1].value: function_call value has no string 'name'"),
    (record([{"from": "human", "value": "x"}, {"from": "observation", "value": "{}"}]),
     "record 1: conversations[1].from: observation with no function_call before it"),
    (record([]), "record 1: conversations: conversation is empty"),
    ({"tools": TOOLS, "system": ""}, "record 1: conversations: missing field"),
    (record([{"from": "human", "value": 3}]), "record 1: conversations[0].value: must be a string"),
    (record(GOOD, system=5), "record 1: system: must be a string"),
]


@pytest.mark.parametrize("bad,message", BAD_RECORDS)
def test_bad_record_names_file_record_and_field(tmp_path, bad, message):
    path = write(tmp_path, [record(GOOD), bad, record(GOOD)])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert str(err.value).startswith(f"train.json: {message}")
    conversations, skipped = load_conversations(path, skip_bad=True)
    assert len(conversations) == 2 and len(skipped) == 1 and skipped[0].startswith(f"train.json: {message}")


def test_file_level_errors(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"^a.json: invalid JSON at line 1"):
        data.read_records(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"conversations": []}')
    with pytest.raises(DataError, match=r"^b.json: top level must be a JSON list"):
        data.read_records(tmp_path / "b.json")


def test_inspect_cli_exit_codes(tmp_path, capsys):
    path = write(tmp_path, [record(GOOD), record([{"from": "robot", "value": "x"}])])
    assert data.main(["inspect", str(path)]) == 2
    assert "train.json: record 1: conversations[0].from" in capsys.readouterr().err
    assert data.main(["inspect", str(path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "conversations:     1" in out and "skipped 1 bad records" in out


def test_next_action_format_round_trips(demo_dir):
    direct, _ = load_turn_samples(demo_dir / "retail_test.json")
    tests, _ = load_turn_samples(demo_dir / "retail_test_next_action.jsonl")
    assert len(direct) == len(tests)
    for a, b in zip(direct[:200], tests[:200]):
        assert (a.messages, a.target, a.system, a.tools) == (b.messages, b.target, b.system, b.tools)


def test_next_action_expected_must_be_one_action(tmp_path):
    bad = {"conversation_id": "c1", "tools": TOOLS, "context": [{"from": "human", "value": "x"}],
           "expected": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]}
    (tmp_path / "t.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl: record 0: expected: must be one agent action"):
        load_turn_samples(tmp_path / "t.jsonl")


def test_demo_is_deterministic_and_sized(demo_dir, tmp_path):
    again = data.write_demo(tmp_path)
    for path in again.values():
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
        assert digest(path) == digest(demo_dir / path.name)
    train, _ = load_conversations(demo_dir / "retail_train.json")
    test, _ = load_conversations(demo_dir / "retail_test.json")
    cold, _ = load_turn_samples(demo_dir / "retail_cold_start.json")
    assert len(train) >= 2000 and len(test) >= 200
    assert len(cold) < 100 and all(s.target.reasoning for s in cold)


def test_cold_start_annotates_every_retail_tool(demo_dir):
    from worlds import RETAIL
    cold, _ = load_turn_samples(demo_dir / "retail_cold_start.json")
    called = [c["name"] for s in cold for c in s.target.tool_calls]
    assert set(called) == set(RETAIL.tools)                       # every flow of the task is annotated
    assert sum(not s.target.is_tool_call for s in cold) > len(cold) / 4  # and direct answers too


def test_held_out_users_and_orders_are_disjoint(demo_dir):
    def ids(path, pattern):  # ids in the dialogues (the tool schemas' examples like u1234 are shared text)
        import re
        return set(re.findall(pattern, json.dumps([r["conversations"] for r in json.loads(path.read_text())])))
    for pattern in (r"\bu\d{4}\b", r"\bW\d{5}\b"):
        assert not ids(demo_dir / "retail_train.json", pattern) & ids(demo_dir / "retail_test.json", pattern)


def test_validation_is_other_conversations_of_the_training_users(demo_dir):
    import random
    import re

    from worlds import retail_world
    _, train_users, _ = retail_world(random.Random(0))   # the demo's seed
    val = json.loads((demo_dir / "retail_val.json").read_text())
    train = json.loads((demo_dir / "retail_train.json").read_text())
    named = set(re.findall(r"\bu\d{4}\b", json.dumps([r["conversations"] for r in val])))
    assert len(val) == 100 and named and named <= {u["user_id"] for u in train_users}
    assert sum(r in train for r in val) < 5   # new conversations (a two-turn greeting-and-lookup can recur by chance)


def test_structured_trace_by_hand():
    """The function, then each argument and where its value stands: the user's words, a tool result, or neither."""
    sample = TurnSample("c", "", [], [
        {"role": "user", "content": "Return the Lamp from order W12345, please"},
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "content": '{"order_id": "W12345", "items": [{"product_id": "P777"}]}'}],
        Action(tool_calls=[{"name": "return_items", "arguments": {"order_id": "W12345", "item_ids": ["P777"],
                                                                  "note": "gift", "count": 2}}],
               reasoning="free text"))
    assert data.structured_trace(sample) == ('Function: return_items. Key args: order_id=W12345 (user); '
                                             'item_ids=["P777"] (tool); note=gift (new); count=2 (new).')
    assert data.value_source({"a": "W12345", "b": "P777"}, "W12345", "P777") == "user+tool"
    assert data.value_source([], "", "") == "new"
    answer = dataclasses.replace(sample, target=Action(content="Done.", reasoning="x"))
    assert data.structured_trace(answer) == "Function: none; reply to the user."


def test_structured_traces_keep_the_turns_and_actions(demo_dir, tmp_path, capsys):
    before, _ = load_turn_samples(demo_dir / "retail_cold_start.json")
    assert data.main(["structured-traces", str(demo_dir / "retail_cold_start.json"), "--out",
                      str(tmp_path / "s.json")]) == 0
    after, _ = load_turn_samples(tmp_path / "s.json")
    assert [(s.messages, s.target.content, s.target.tool_calls) for s in after] == \
        [(s.messages, s.target.content, s.target.tool_calls) for s in before]
    assert all(s.target.reasoning.startswith("Function: ") for s in after)
    assert [s.target.reasoning for s in after] != [s.target.reasoning for s in before]


def test_split_holds_out_whole_records(tmp_path):
    recs = [record([{"from": "human", "value": str(i)}, {"from": "gpt", "value": "ok"}]) for i in range(10)]
    path = write(tmp_path, recs)
    assert data.main(["split", str(path), "--out", str(tmp_path / "s"), "--test", "3"]) == 0
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    test = json.loads((tmp_path / "s" / "test.json").read_text())
    assert len(train) == 7 and len(test) == 3
    assert sorted(r["conversations"][0]["value"] for r in train + test) == sorted(str(i) for i in range(10))


def think(thought):
    return [{"from": "function_call", "value": json.dumps({"name": "think", "arguments": {"thought": thought}})},
            {"from": "observation", "value": ""}]


THINK_TOOLS = json.dumps([{"name": "get_order_details", "description": "d", "parameters": {}},
                          {"name": "think", "description": "think", "parameters": {}}])


def test_think_calls_become_the_reasoning_of_the_next_action(tmp_path):
    conv = [{"from": "human", "value": "Where is W1?"}, *think("I need the order."),
            {"from": "function_call", "value": CALL}, {"from": "observation", "value": '{"status": "pending"}'},
            *think("It is pending."), *think("Tell them."), {"from": "gpt", "value": "It is pending."},
            {"from": "human", "value": "Thanks"}, *think("Nothing to do."),            # never acted on: dropped
            {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]
    samples, _ = load_turn_samples(write(tmp_path, [record(conv, tools=THINK_TOOLS)]))
    assert [(s.target.reasoning, s.target.content, [c["name"] for c in s.target.tool_calls]) for s in samples] == [
        ("I need the order.", "", ["get_order_details"]), ("It is pending.\nTell them.", "It is pending.", []),
        (None, "Bye!", [])]
    assert [t["name"] for t in samples[0].tools] == ["get_order_details"]       # the think tool is gone
    assert [m["role"] for m in samples[2].messages] == ["user", "assistant", "tool", "assistant", "user", "user"]
    assert all("reasoning_content" not in m for s in samples for m in s.messages)  # contexts carry no reasoning


@pytest.mark.parametrize("action,kind", [
    (data.Action("", [{"name": "b", "arguments": {}}, {"name": "a", "arguments": {}}]), "call a+b"),
    (data.Action("Could you give me your order id?"), "answer: question"),
    (data.Action("Sorry, delivered orders cannot be cancelled."), "answer: refusal"),
    (data.Action("Your order is pending."), "answer"),
])
def test_action_kind(action, kind):
    assert data.action_kind(action) == kind


def test_cold_start_set_spreads_over_kinds(tmp_path):
    calls = [json.dumps({"name": n, "arguments": {}}) for n in ("get_order_details", "cancel")]
    records = []
    for i in range(12):   # conversation i: a call of tool i % 2, then a question, each after a thought
        conv = [{"from": "human", "value": f"user {i}"}, *think(f"call {i}"),
                {"from": "function_call", "value": calls[i % 2]}, {"from": "observation", "value": "{}"},
                *think(f"ask {i}"), {"from": "gpt", "value": "Which one?"}]
        records.append(record(conv, tools=THINK_TOOLS))
    tests, counts = data.build_cold_start(write(tmp_path, records), turns=5, seed=1)
    # three kinds taken in turn (sorted): answer: question, call cancel, call get_order_details, then again
    assert counts == {"answer: question": 2, "call cancel": 2, "call get_order_details": 1}
    assert len({t["conversation_id"] for t in tests}) == 5        # one example per conversation while possible
    out = tmp_path / "cold.jsonl"
    out.write_text("".join(json.dumps(t) + "\n" for t in tests))
    samples, _ = load_turn_samples(out)
    assert len(samples) == 5 and all(s.target.reasoning for s in samples)


def test_cold_start_without_think_calls_fails_in_one_line(tmp_path, capsys):
    path = write(tmp_path, [record([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello"}])])
    assert data.main(["cold-start", str(path), "--out", str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'think' tool calls" in err and "train.json" in err
    assert data.main(["cold-start", str(path), "--out", str(tmp_path / "c.jsonl"), "--turns", "100"]) == 2


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_cold_start_writes_the_format_its_suffix_names(tmp_path, suffix):
    """The builder's file is read back by the project's own loader, whatever suffix the user gave it."""
    conv = [{"from": "human", "value": "Where is W1?"}, *think("I need the order."),
            {"from": "function_call", "value": CALL}, {"from": "observation", "value": "{}"}]
    path = write(tmp_path, [record(conv, tools=THINK_TOOLS)])
    out = tmp_path / f"cold{suffix}"
    assert data.main(["cold-start", str(path), "--out", str(out), "--turns", "1"]) == 0
    samples, _ = load_turn_samples(out)
    assert [(s.target.reasoning, s.target.tool_calls) for s in samples] == [
        ("I need the order.", [{"name": "get_order_details", "arguments": {"order_id": "W1"}}])]


def test_a_next_action_test_without_a_user_message_is_a_data_error(tmp_path, capsys):
    bad = {"conversation_id": "c1", "tools": TOOLS, "context": [], "expected": [{"from": "gpt", "value": "Hello"}]}
    good = {"conversation_id": "c2", "tools": TOOLS, "context": [{"from": "human", "value": "hi"}],
            "expected": [{"from": "gpt", "value": "Hello"}]}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl: record 0: context: no user message before the expected action"):
        load_turn_samples(path)
    samples, skipped = load_turn_samples(path, skip_bad=True)
    assert [s.conversation_id for s in samples] == ["c2"] and len(skipped) == 1
    assert data.main(["inspect", str(path)]) == 2 and capsys.readouterr().err.count("\n") == 1
