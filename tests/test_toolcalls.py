import json
import random

from toolcalls import argument_f1, calls_match, names_match, parse_completion, token_f1


def test_think_then_parallel_calls():
    text = ('<think>\nI need both.\n</think>\n\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": "{\\"y\\": \\"z\\"}"}\n</tool_call>')
    p = parse_completion(text)
    assert p.reasoning == "I need both."
    assert p.tool_calls == [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "z"}}]
    assert p.answer == "" and p.errors == []


def test_answer_only_and_text_before_call():
    p = parse_completion("Your order is delivered.")
    assert (p.reasoning, p.tool_calls, p.answer, p.errors) == (None, [], "Your order is delivered.", [])
    p = parse_completion('Let me check.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>')
    assert p.answer == "Let me check." and len(p.tool_calls) == 1 and p.well_formed


def test_each_format_error_is_named():
    cases = {
        "<think>\nnever closed": "unclosed <think>",
        '<tool_call>\n{"name": "a", "arguments": {}': "unclosed <tool_call>",
        "<tool_call>\n{name: a}\n</tool_call>": "invalid JSON in tool call",
        '<tool_call>\n{"arguments": {}}\n</tool_call>': "tool call has no name",
        '<tool_call>\n{"name": "a", "arguments": [1]}\n</tool_call>': "tool call arguments are not an object",
        '<tool_call>\n{"name": "a"}\n</tool_call>': "tool call has no arguments",
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call> thanks!': "text after a tool call",
        '<tool_call>\n[1, 2]\n</tool_call>': "tool call is not a JSON object",
        "hello </think> there": "think tag outside a leading think block",
    }
    for text, error in cases.items():
        p = parse_completion(text)
        assert error in p.errors, (text, p.errors)
        assert len(p.tool_calls) == (error == "text after a tool call")  # a valid call before the junk is kept


def test_never_raises_on_random_or_truncated_text():
    rng = random.Random(0)
    valid = ('<think>\nr\n</think>\n\n<tool_call>\n{"name": "a", "arguments": {"k": [1, {"z": null}]}}\n'
             '</tool_call>')
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"arguments"', "[", "]",
              "\n", "x", '"', "\\", "1e999", "NaN", "__import__('os')", "[" * 50]
    for k in range(len(valid)):
        parse_completion(valid[:k])  # every truncation
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        p = parse_completion(text)
        assert isinstance(p.errors, list)
    deep = "<tool_call>\n" + "[" * 100000 + "\n</tool_call>"
    assert "invalid JSON in tool call" in parse_completion(deep).errors
    assert parse_completion(None).errors == ["completion is not text"]


def test_comparisons_by_hand():
    a = {"name": "f", "arguments": {"x": 1, "y": "b"}}
    a_reordered = {"name": "f", "arguments": {"y": "b", "x": 1}}
    b = {"name": "g", "arguments": {}}
    assert calls_match([a, b], [b, a_reordered])          # order-free, key order irrelevant
    assert not calls_match([a], [a, a])                    # multiset: a missing duplicate counts
    assert names_match([a], [{"name": "f", "arguments": {"x": 2}}])
    # triples: pred {(f,x,1),(f,y,"b")}, ref {(f,x,2),(f,y,"b")} -> overlap 1, F1 = 2*1/(2+2) = 0.5
    assert argument_f1([a], [{"name": "f", "arguments": {"x": 2, "y": "b"}}]) == 0.5
    # "your order w123 is delivered" vs "order w123 delivered today": overlap {order, w123, delivered} = 3,
    # F1 = 2*3 / (5 + 4) = 0.6667
    assert abs(token_f1("Your order W123 is delivered.", "Order W123 delivered today") - 6 / 9) < 1e-9
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert json.dumps(a)  # calls stay plain JSON data
