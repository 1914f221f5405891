"""Parse a completion into reasoning / tool calls / answer, and compare actions.

Qwen3's format:

    <think>
    reasoning
    </think>

    optional text
    <tool_call>
    {"name": "get_order_details", "arguments": {"order_id": "W12345"}}
    </tool_call>

Model output is untrusted text: `parse_completion` never raises and never evaluates anything (JSON is
read with json.loads only); every problem is reported in `errors` instead. Arguments may be an object
or a JSON string holding one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_ARGUMENT_DEPTH = 32   # no tool schema nests deeper; deeper arguments are a format error, not a crash


@dataclass
class Parsed:
    reasoning: str | None = None    # text inside <think>...</think>; None when there is no think block
    tool_calls: list[dict] = field(default_factory=list)  # valid calls only: [{"name": str, "arguments": dict}]
    answer: str = ""                # text outside the think block and the tool calls
    errors: list[str] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        return not self.errors

    @property
    def reasoning_words(self) -> int:
        """Length of the reasoning in whitespace-separated words (tokenizer-independent)."""
        return len(self.reasoning.split()) if self.reasoning else 0


def parse_call(body: str) -> tuple[dict | None, str | None]:
    """The JSON inside one <tool_call> block -> (call, None) or (None, what is wrong)."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):
        return None, "invalid JSON in tool call"
    if not isinstance(call, dict):
        return None, "tool call is not a JSON object"
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return None, "tool call has no name"
    if "arguments" not in call:
        return None, "tool call has no arguments"
    args = call["arguments"]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None, "tool call arguments string is not valid JSON"
    if not isinstance(args, dict):
        return None, "tool call arguments are not an object"
    if nesting_depth(args) > MAX_ARGUMENT_DEPTH:
        return None, f"tool call arguments nested deeper than {MAX_ARGUMENT_DEPTH}"
    return {"name": name, "arguments": args}, None


def nesting_depth(value) -> int:
    """Levels of JSON containers in `value` (0 for a scalar), counted without recursion: json.loads accepts ~1000
    levels, and anything that walks them recursively (json.dumps, ==) would hit Python's recursion limit."""
    depth, level = 0, [(value, 0)]
    while level:
        item, d = level.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, d + 1)
            level.extend((child, d + 1) for child in (item.values() if isinstance(item, dict) else item))
    return depth


def parse_completion(text: str, special_tokens: Collection[str] = ()) -> Parsed:
    """Split a completion into reasoning, tool calls and answer text, listing every format problem. special_tokens
    are the tokenizer's control tokens (<|im_start|>, <|endoftext|>, ...): the completion is the model's text up to
    the EOS that ended it, so any of them inside it is a format error (a policy must not be paid for writing one)."""
    out = Parsed()
    if not isinstance(text, str):
        out.errors.append("completion is not text")
        return out
    out.errors += [f"special token {t} inside the completion" for t in sorted(special_tokens) if t in text]
    body = text.strip()
    if body.startswith(THINK_OPEN):
        inner, closed, rest = body[len(THINK_OPEN):].partition(THINK_CLOSE)
        if not closed:
            out.errors.append("unclosed <think>")
            out.reasoning, body = inner.strip(), ""
        else:
            out.reasoning, body = inner.strip(), rest.strip()
    if THINK_OPEN in body or THINK_CLOSE in body:
        out.errors.append("think tag outside a leading think block")
        body = body.replace(THINK_OPEN, "").replace(THINK_CLOSE, "")
    first = body.find(CALL_OPEN)
    if first < 0:
        if CALL_CLOSE in body:
            out.errors.append("</tool_call> without <tool_call>")
        out.answer = body.strip()
        return out
    out.answer = body[:first].strip()
    rest = body[first:]
    while rest:
        if not rest.startswith(CALL_OPEN):
            out.errors.append("text after a tool call")
            break
        inner, closed, rest = rest[len(CALL_OPEN):].partition(CALL_CLOSE)
        if not closed:
            out.errors.append("unclosed <tool_call>")
            break
        call, error = parse_call(inner.strip())
        if error:
            out.errors.append(error)
        else:
            out.tool_calls.append(call)
        rest = rest.lstrip()
    return out


# ----------------------------------------------------------------------------------------------
# Comparing actions (used by eval.py and rewards.py)
# ----------------------------------------------------------------------------------------------
def canonical(value) -> str:
    """A value as sorted-key JSON, so equal objects compare equal whatever their key order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def call_key(call: dict) -> tuple[str, str]:
    return call["name"], canonical(call["arguments"])


def calls_match(pred: list[dict], ref: list[dict]) -> bool:
    """Exact match, order-free: multiset{(name, args)} of pred == that of ref."""
    return Counter(map(call_key, pred)) == Counter(map(call_key, ref))


def names_match(pred: list[dict], ref: list[dict]) -> bool:
    """multiset{name} of pred == multiset{name} of ref."""
    return Counter(c["name"] for c in pred) == Counter(c["name"] for c in ref)


def f1(pred: Counter, ref: Counter) -> float:
    """F1 = 2 |P ∩ R| / (|P| + |R|) over multisets; 1.0 when both are empty."""
    total = sum(pred.values()) + sum(ref.values())
    return 1.0 if total == 0 else 2 * sum((pred & ref).values()) / total


def argument_f1(pred: list[dict], ref: list[dict]) -> float:
    """F1 over the multisets of (tool name, argument key, canonical value) triples of all calls."""
    def triples(calls):
        return Counter((c["name"], k, canonical(v)) for c in calls for k, v in c["arguments"].items())
    return f1(triples(pred), triples(ref))


def normalize_tokens(text: str) -> list[str]:
    """Lowercase words and numbers; punctuation other than inside numbers / ids is dropped."""
    return re.findall(r"[a-z0-9]+(?:[.\-@][a-z0-9]+)*", text.lower())


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style token F1 of normalised words: 2 |P ∩ R| / (|P| + |R|) over multisets."""
    return f1(Counter(normalize_tokens(pred)), Counter(normalize_tokens(ref)))
