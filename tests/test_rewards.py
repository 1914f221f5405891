"""Every expected value is computed by hand from the formulas in rewards.py (weights 0.1 / 0.2 / 0.6 / 0.6 / 0.1,
think budget 64 words):  R = 0.1 fmt + 0.2 dec + dec * 0.6 * (tool or answer) + 0.1 eff."""

import random

import pytest

from data import Action
from rewards import RewardWeights, composite_reward, r_efficiency, r_tool
from toolcalls import parse_completion

A = {"name": "get_order_details", "arguments": {"order_id": "W1"}}
B = {"name": "get_product_details", "arguments": {"product_id": "P7"}}
REF_A = Action("", [A])
REF_AB = Action("", [A, B])
REF_ANSWER = Action("Your order W1 is delivered.")
THINK = "<think>\nI check it.\n</think>\n\n"   # 3 words: within budget, efficiency 1


def call(name, args_json):
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args_json}}}\n</tool_call>'


CALL_A = call("get_order_details", '{"order_id": "W1"}')
CALL_B = call("get_product_details", '{"product_id": "P7"}')

CASES = [
    # (name, completion, truncated, reference, thinking, expected R)
    ("perfect call", THINK + CALL_A, False, REF_A, True, 0.1 + 0.2 + 0.6 + 0.1),                 # 1.0
    ("perfect answer", THINK + "Your order W1 is delivered.", False, REF_ANSWER, True, 1.0),
    ("called a tool, answer expected", THINK + CALL_A, False, REF_ANSWER, True, 0.1 + 0 + 0.1),   # 0.2
    ("answered, tool expected", THINK + "It is delivered.", False, REF_A, True, 0.1 + 0 + 0.1),    # 0.2
    # right name, wrong value: key F1 1, values 0/1 -> s = (1 + 1 + 0) / 3
    ("right name wrong argument", THINK + CALL_A.replace("W1", "W2"), False, REF_A, True, 0.4 + 0.6 * 2 / 3),
    # one right + one extra call: (1 + 0) / max(2, 1) = 0.5
    ("extra call", THINK + CALL_A + "\n" + CALL_B, False, REF_A, True, 0.4 + 0.6 * 0.5),
    ("missing parallel call", THINK + CALL_A, False, REF_AB, True, 0.4 + 0.6 * 0.5),
    ("parallel calls in another order", THINK + CALL_B + "\n" + CALL_A, False, REF_AB, True, 1.0),
    ("arguments as a JSON string", THINK + call("get_order_details", '"{\\"order_id\\": \\"W1\\"}"'), False, REF_A,
     True, 1.0),
    # "order w1 is pending" vs "your order w1 is delivered": overlap 3, F1 = 6 / 9
    ("partial answer F1", THINK + "Order W1 is pending.", False, REF_ANSWER, True, 0.4 + 0.6 * 6 / 9),
    # 96 words > 64: efficiency 1 - (96 - 64) / 64 = 0.5
    ("overlong thinking", "<think>\n" + "word " * 96 + "\n</think>\n\n" + CALL_A, False, REF_A, True,
     0.1 + 0.2 + 0.6 + 0.1 * 0.5),
    # cut inside the call: unclosed tool_call (format 0), no valid call (decision 0), efficiency 1
    ("truncated completion", THINK + CALL_A[:30], True, REF_A, True, 0.1),
    ("malformed JSON", THINK + call("get_order_details", "{order_id: W1}"), False, REF_A, True, 0.1),
    # no think block in thinking mode (format 0), no call = right decision on an answer turn, F1 0, efficiency 0
    ("empty output", "", False, REF_ANSWER, True, 0.2),
    # empty think block: well-formed, but no credit for not thinking
    ("empty think block", "<think>\n\n</think>\n\n" + CALL_A, False, REF_A, True, 0.1 + 0.2 + 0.6),
    ("thinking off, no think block", CALL_A, False, REF_A, False, 1.0),
    ("thinking off, think block present", THINK + CALL_A, False, REF_A, False, 0.2 + 0.6 + 0.1),
    # extra key: key F1 = 2*1/(2+1) = 2/3, values 1 / max(2, 1) = 1/2 -> s = (1 + 2/3 + 1/2) / 3 = 13/18
    ("extra argument key", THINK + call("get_order_details", '{"order_id": "W1", "note": "x"}'), False, REF_A, True,
     0.4 + 0.6 * 13 / 18),
    ("wrong tool name", THINK + call("cancel_pending_order", '{"order_id": "W1"}'), False, REF_A, True, 0.4),
    # valid call followed by junk: format 0, the call still counts
    ("text after the call", THINK + CALL_A + " thanks!", False, REF_A, True, 0.2 + 0.6 + 0.1),
]


@pytest.mark.parametrize("name,text,truncated,ref,thinking,expected", CASES, ids=[c[0] for c in CASES])
def test_composite_by_hand(name, text, truncated, ref, thinking, expected):
    reward = composite_reward(parse_completion(text), truncated, ref, thinking)
    assert reward.total == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= reward.total <= 1.0 + 1e-9


def test_components_are_separate_and_applicable():
    r = composite_reward(parse_completion(THINK + CALL_A.replace("W1", "W2")), False, REF_A, True)
    assert (r.format, r.decision, r.efficiency, r.answer) == (1.0, 1.0, 1.0, None)
    assert r.tool == pytest.approx(2 / 3)
    r = composite_reward(parse_completion(THINK + "Order W1 is pending."), False, REF_ANSWER, True)
    assert r.tool is None and r.answer == pytest.approx(6 / 9)


def test_weights_are_settable():
    w = RewardWeights(format=0.0, decision=1.0, tool=0.0, answer=0.0, efficiency=0.0)
    assert composite_reward(parse_completion(CALL_A), False, REF_A, True, w).total == 1.0


def test_efficiency_curve_by_hand():
    def eff(words):
        return r_efficiency(parse_completion("<think>\n" + "w " * words + "\n</think>\n\nok"), True, 64)
    assert (eff(0), eff(1), eff(64), eff(80), eff(128), eff(500)) == (0.0, 1.0, 1.0, 0.75, 0.0, 0.0)
    assert r_efficiency(parse_completion("ok"), False, 64) == 1.0


def test_many_calls_use_greedy_matching():
    # 7 copies of the right call against one reference: one matches, 1 / max(7, 1)
    assert r_tool(parse_completion(THINK + "\n".join([CALL_A] * 7)), REF_A) == pytest.approx(1 / 7)


def test_never_raises_on_random_output():
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", '{"name": "get_order_details"', ', "arguments": ',
              '{"order_id": "W1"}', "}", "\n", "x", "[", '"', "null"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        for ref in (REF_A, REF_AB, REF_ANSWER):
            r = composite_reward(parse_completion(text), rng.random() < 0.5, ref, rng.random() < 0.5)
            assert 0.0 <= r.total <= 1.0 + 1e-9


# ----- reward designs (module docstring of rewards.py), by hand -----
C = {"name": "cancel_order", "arguments": {"order_id": "W1", "reason": "no longer needed"}}
REF_C = Action("", [C])


def design(name):
    return RewardWeights(design=name)


@pytest.mark.parametrize("completion,ref,expected", [
    (THINK + CALL_A, REF_A, 1.0),                                          # exact call, well formed
    (THINK + CALL_A.replace("W1", "W2"), REF_A, 0.0),                      # one wrong value: nothing
    (CALL_A, REF_A, 0.0),                                                  # right call, no think block: format 0
    (THINK + "Your order W1 is delivered.", REF_ANSWER, 1.0),              # answer F1 1 >= 0.5
    # "Order W1." vs "Your order W1 is delivered.": overlap {order, w1}, precision 2/2, recall 2/5, F1 = 4/7 >= 0.5
    (THINK + "Order W1.", REF_ANSWER, 1.0),
    (THINK + "Delivered.", REF_ANSWER, 0.0),                               # P 1, R 1/5: F1 = 1/3 < 0.5
    (THINK + CALL_A, REF_ANSWER, 0.0),                                     # wrong decision
])
def test_binary_design_is_all_or_nothing(completion, ref, expected):
    assert composite_reward(parse_completion(completion), False, ref, True, design("binary")).total == expected


def test_fine_design_gives_name_key_and_value_credit():
    w = design("fine")   # R = 0.1 fmt + 0.9 r_fine, r_fine = (J(names) + sum J(keys) + #values) / (1 + |R| + #ref args)
    wrong_reason = call("cancel_order", '{"order_id": "W1", "reason": "ordered by mistake"}')
    # names 1, keys 1, values 1 of 2: (1 + 1 + 1) / (1 + 1 + 2) = 3/4
    assert composite_reward(parse_completion(THINK + wrong_reason), False, REF_C, True, w).total == \
        pytest.approx(0.1 + 0.9 * 3 / 4)
    only_id = call("cancel_order", '{"order_id": "W1"}')
    # keys J({order_id}, {order_id, reason}) = 1/2, values 1: (1 + 1/2 + 1) / 4 = 5/8
    assert composite_reward(parse_completion(THINK + only_id), False, REF_C, True, w).total == \
        pytest.approx(0.1 + 0.9 * 5 / 8)
    # an extra call: names J({cancel, get}, {cancel}) = 1/2, the pair still scores keys 1, values 2: (1/2 + 1 + 2) / 4
    exact = call("cancel_order", '{"order_id": "W1", "reason": "no longer needed"}')
    assert composite_reward(parse_completion(THINK + exact + "\n" + CALL_A), False, REF_C, True, w).total == \
        pytest.approx(0.1 + 0.9 * 3.5 / 4)
    assert composite_reward(parse_completion(THINK + exact), False, REF_C, True, w).total == pytest.approx(1.0)
    assert composite_reward(parse_completion(THINK + "It is cancelled."), False, REF_C, True, w).total == \
        pytest.approx(0.1)                                                  # answered a tool turn: match 0
    assert composite_reward(parse_completion(THINK + CALL_A), False, REF_ANSWER, True, w).total == pytest.approx(0.1)


@pytest.mark.parametrize("ablated", ["format", "decision", "tool", "answer", "efficiency"])
def test_each_ablation_removes_exactly_its_term(ablated):
    # R_paper - R_no-X = the paper's X term; here every term is non-zero: a right-name, wrong-value call and an answer
    cases = [(THINK + CALL_A.replace("W1", "W2"), REF_A), (THINK + "Order W1 shipped.", REF_ANSWER)]
    terms = {"format": 0.1, "decision": 0.2, "efficiency": 0.1}
    for completion, ref in cases:
        parsed = parse_completion(completion)
        full = composite_reward(parsed, False, ref, True).total
        without = composite_reward(parsed, False, ref, True, design(f"no-{ablated}")).total
        if ablated in terms:
            expected = terms[ablated]
        elif ablated == "tool":
            expected = 0.6 * 2 / 3 if ref is REF_A else 0.0     # s = (1 + 1 + 0) / 3
        else:   # answer F1 of "order w1 shipped" vs "your order w1 is delivered": 2 overlap, P 2/3, R 2/5 -> 1/2
            expected = 0.6 * 0.5 if ref is REF_ANSWER else 0.0
        if ablated == "decision":   # d also gates tool / answer credit; only its own weight is removed
            expected = 0.2
        assert full - without == pytest.approx(expected)


def test_unknown_design_is_refused():
    with pytest.raises(ValueError, match="unknown reward design"):
        RewardWeights(design="sparse")
