"""The composite reward: one small function per component, each in [0, 1].

The paper names the components (format compliance, the conditional decision to call a tool or answer,
tool accuracy, answer correctness, reasoning efficiency) but not their formulas or weights; these are
ours, written out below and in the README. All of them read the *parsed* completion (toolcalls.py) and
the reference action of the turn sample, and none of them can raise on model output.

    R = w_fmt * r_format + w_dec * r_decision
        + r_decision * (w_tool * r_tool * 1[ref calls a tool] + w_ans * r_answer * 1[ref answers])
        + w_eff * r_efficiency

Tool and answer credit count only when the decision is right (a right answer to a turn that needed a
tool is still wrong). Default weights 0.1 / 0.2 / 0.6 / 0.6 / 0.1 put R in [0, 1], with most of it on
getting the action right.

Reward designs (RewardWeights.design, grpo.py --reward), all in [0, 1]; the components above are computed and
logged under every design, only the total R differs:
    paper          R as above (the default)
    binary         R = r_format * 1[action correct]                         (Tool-N1: all or nothing)
    fine           R = w_fmt r_format + (1 - w_fmt) r_fine                  (ToolRL: name / key / value credit)
    no-<component> R as above with that component's weight set to 0         (the ablations)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from itertools import permutations

from data import Action
from toolcalls import Parsed, calls_match, canonical, f1, token_f1

COMPONENTS = ("format", "decision", "tool", "answer", "efficiency")
DESIGNS = ("paper", "binary", "fine") + tuple(f"no-{c}" for c in COMPONENTS)
ANSWER_F1_SUCCESS = 0.5  # an answer is right at token F1 >= 0.5: most of its reported values are right


# Reasoning words with full efficiency credit, (tiny model, real model): the tiny model's traces are a sentence, a
# real model's (Qwen3 thinks at length) need room, or every completion of a group would score alike.
THINK_BUDGETS = (64, 256)


@dataclass
class RewardWeights:
    format: float = 0.1
    decision: float = 0.2
    tool: float = 0.6
    answer: float = 0.6
    efficiency: float = 0.1
    think_budget: int = THINK_BUDGETS[0]   # reasoning words with full efficiency credit
    design: str = "paper"                  # one of DESIGNS; no-<component> zeroes that component's weight

    @classmethod
    def of_run(cls, run: dict, real_model: bool) -> "RewardWeights":
        """The reward a training run optimised, from its arguments (grpo.py's --reward, --w-*, --think-budget, as in
        its args.json); the defaults for the model's scale where a run set none (an SFT run, or no run at all)."""
        default = cls(think_budget=THINK_BUDGETS[real_model])
        given = {"format": run.get("w_format"), "decision": run.get("w_decision"), "tool": run.get("w_tool"),
                 "answer": run.get("w_answer"), "efficiency": run.get("w_efficiency"),
                 "think_budget": run.get("think_budget"), "design": run.get("reward")}
        return cls(**{**asdict(default), **{k: v for k, v in given.items() if v is not None}})

    def __post_init__(self):
        if self.think_budget < 1:   # r_efficiency divides by it
            raise ValueError(f"think_budget must be >= 1, got {self.think_budget}")
        if self.design not in DESIGNS:
            raise ValueError(f"unknown reward design {self.design!r} (one of {', '.join(DESIGNS)})")
        if self.design.startswith("no-"):
            setattr(self, self.design[3:], 0.0)


def r_format(parsed: Parsed, truncated: bool, thinking: bool) -> float:
    """1[no parse error] * 1[finished with EOS, not truncated] * 1[think block present == thinking mode].

    Parse errors: unclosed think, invalid tool-call JSON, missing name or arguments, arguments that are
    not an object, text after a tool call, stray tags.
    """
    return float(parsed.well_formed and not truncated and (parsed.reasoning is not None) == thinking)


def r_decision(parsed: Parsed, ref: Action) -> float:
    """1[the completion calls at least one (valid) tool] == 1[the reference calls a tool]."""
    return float(bool(parsed.tool_calls) == ref.is_tool_call)


def call_similarity(pred: dict, ref: dict) -> float:
    """s(p, r) = 1[same name] * (1 + F1(keys) + V) / 3,
    V = #{k in ref args: p[k] == r[k]} / max(|p args|, |r args|, 1)   (extra keys dilute V)."""
    if pred["name"] != ref["name"]:
        return 0.0
    p, r = pred["arguments"], ref["arguments"]
    key_f1 = f1(Counter(p.keys()), Counter(r.keys()))
    right = sum(1 for k, v in r.items() if k in p and canonical(p[k]) == canonical(v))
    values = right / max(len(p), len(r), 1) if (p or r) else 1.0
    return (1 + key_f1 + values) / 3


def r_tool(parsed: Parsed, ref: Action) -> float:
    """Order-free matching of predicted to reference calls (the best one-to-one assignment):

        r_tool = max_matching sum s(p, r) / max(|P|, |R|)

    so each missing or extra call costs its share. Up to 6 calls are matched exactly (permutations),
    beyond that greedily (model output is untrusted: it may hold hundreds of calls).
    """
    pred, refs = parsed.tool_calls, ref.tool_calls
    if not pred or not refs:
        return float(not pred and not refs)
    sim = [[call_similarity(p, r) for r in refs] for p in pred]
    if max(len(pred), len(refs)) <= 6:
        if len(pred) <= len(refs):   # each predicted call i takes a distinct reference call perm[i]
            best = max(sum(sim[i][j] for i, j in enumerate(perm)) for perm in permutations(range(len(refs)), len(pred)))
        else:                        # each reference call j takes a distinct predicted call perm[j]
            best = max(sum(sim[i][j] for j, i in enumerate(perm)) for perm in permutations(range(len(pred)), len(refs)))
    else:
        pairs = sorted(((sim[i][j], i, j) for i in range(len(pred)) for j in range(len(refs))), reverse=True)
        used_pred, used_ref, best = set(), set(), 0.0
        for s, i, j in pairs:
            if i not in used_pred and j not in used_ref:
                used_pred.add(i)
                used_ref.add(j)
                best += s
    return best / max(len(pred), len(refs))


def action_correct(parsed: Parsed, ref: Action) -> bool:
    """Right decision, and the right calls (order-free exact match) or an answer with token F1 >= 0.5."""
    if not r_decision(parsed, ref):
        return False
    if ref.is_tool_call:
        return calls_match(parsed.tool_calls, ref.tool_calls)
    return token_f1(parsed.answer, ref.content) >= ANSWER_F1_SUCCESS


def jaccard(a: Counter, b: Counter) -> float:
    """|a & b| / |a | b| of two multisets (1 when both are empty)."""
    union = sum((a | b).values())
    return sum((a & b).values()) / union if union else 1.0


def r_fine(parsed: Parsed, ref: Action) -> float:
    """ToolRL's graded match (Qian et al. 2025, sec. 3.3), rescaled to [0, 1]. On a tool-call turn:

        r_fine = (J(names) + sum_pairs J(keys) + sum_pairs #{k in ref args: p[k] == r[k]}) / (1 + |R| + sum_r |r args|)

    J is the Jaccard index (multisets); each reference call r (in order) pairs with the first unpaired predicted
    call of the same name. The denominator is the score of an exact match, so r_fine = 1 iff the calls match.
    On an answer turn: the answer's token F1, 0 if it called a tool.
    """
    if not ref.is_tool_call:
        return 0.0 if parsed.tool_calls else r_answer(parsed, ref)
    pred, refs = parsed.tool_calls, ref.tool_calls
    names = jaccard(Counter(c["name"] for c in pred), Counter(c["name"] for c in refs))
    free, keys, values = list(pred), 0.0, 0
    for r in refs:
        p = next((c for c in free if c["name"] == r["name"]), None)
        if p is None:
            continue
        free.remove(p)
        keys += jaccard(Counter(p["arguments"].keys()), Counter(r["arguments"].keys()))
        values += sum(1 for k, v in r["arguments"].items()
                      if k in p["arguments"] and canonical(p["arguments"][k]) == canonical(v))
    return (names + keys + values) / (1 + len(refs) + sum(len(r["arguments"]) for r in refs))


def r_answer(parsed: Parsed, ref: Action) -> float:
    """Token F1 of the answer text against the reference answer (lowercased words, ids and numbers)."""
    return token_f1(parsed.answer, ref.content)


def r_efficiency(parsed: Parsed, thinking: bool, budget: int) -> float:
    """Reasoning efficiency on L = words of reasoning, budget B:

        thinking on:  0 if L == 0 (no credit for not thinking),  1 if 0 < L <= B,
                      max(0, 1 - (L - B) / B) beyond (0 at 2B)
        thinking off: 1

    An empty think block earns nothing: a policy paid for shortness would otherwise learn to stop
    thinking, the known failure of length terms, while the method's claim is that acting teaches thinking.
    """
    if not thinking:
        return 1.0
    n = parsed.reasoning_words
    if n == 0:
        return 0.0
    return 1.0 if n <= budget else max(0.0, 1.0 - (n - budget) / budget)


@dataclass
class Reward:
    format: float
    decision: float
    tool: float | None      # None on answer turns (not applicable)
    answer: float | None    # None on tool-call turns
    efficiency: float
    total: float

    def as_dict(self) -> dict:
        return asdict(self)


def paper_terms(r: Reward, w: RewardWeights) -> dict[str, float]:
    """The paper design's terms, one per component: R = sum of these.

        format w_fmt f,  decision w_dec d,  tool d w_tool t,  answer d w_ans a,  efficiency w_eff e
    (t and a count as 0 where they do not apply).
    """
    return {"format": w.format * r.format, "decision": w.decision * r.decision,
            "tool": r.decision * w.tool * (r.tool or 0.0), "answer": r.decision * w.answer * (r.answer or 0.0),
            "efficiency": w.efficiency * r.efficiency}


def composite_reward(parsed: Parsed, truncated: bool, ref: Action, thinking: bool,
                     w: RewardWeights = RewardWeights()) -> Reward:
    """Every component, and the total R of the design w.design (see the module docstring)."""
    fmt, dec = r_format(parsed, truncated, thinking), r_decision(parsed, ref)
    tool = r_tool(parsed, ref) if ref.is_tool_call else None
    answer = r_answer(parsed, ref) if not ref.is_tool_call else None
    reward = Reward(fmt, dec, tool, answer, r_efficiency(parsed, thinking, w.think_budget), 0.0)
    if w.design == "binary":
        reward.total = fmt * float(action_correct(parsed, ref))
    elif w.design == "fine":
        reward.total = w.format * fmt + (1 - w.format) * r_fine(parsed, ref)
    else:
        reward.total = sum(paper_terms(reward, w).values())
    return reward
