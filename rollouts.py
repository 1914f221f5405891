"""Read what GRPO sampled: the groups of `grpo.py --log-rollouts N` (OUT/rollouts.jsonl) as tables.

    python rollouts.py runs/grpo                         the last logged step, every group
    python rollouts.py runs/grpo --step 1 --informative  the groups that taught something at step 1
    python rollouts.py runs/grpo --zero-variance         the groups that scored alike (A = 0: nothing learned)
    python rollouts.py runs/grpo --worst 10              the 10 lowest-reward completions, with their references
    python rollouts.py runs/grpo --kind cancel --reasoning   one kind of action, with the think text

Each group: its turn, the reference action, then one row per completion, best first: total reward, advantage,
the components (format, decision, tool or answer, efficiency), truncated, reasoning words, and the action it took
(a parse error shows as "!" and the error). A group of `grpo.py --episodes`: its task, then one row per episode,
best first: total reward, advantage, task success, policy violations, agent turns, how it ended, and its transcript.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from cli import BadInput, run_cli
from runs import ROLLOUTS


def read_groups(path: Path) -> list[dict]:
    """Every group line of a rollouts.jsonl (a run directory or the file itself)."""
    path = path / ROLLOUTS if path.is_dir() else path
    if not path.exists():
        raise BadInput(f"{path}: no rollout log (train with grpo.py --log-rollouts N)")
    groups = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            groups.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: line {number}: not JSON ({e.msg})") from None
    return groups


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def show_action(tool_calls: list[dict], answer: str) -> str:
    """name(key=value, ...) for each call, or the answer in quotes."""
    if tool_calls:
        return "; ".join(f"{c['name']}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in c["arguments"].items()) + ")"
                         for c in tool_calls)
    return json.dumps(answer)


def show_completion(c: dict) -> str:
    if c["errors"]:
        return f"! {c['errors'][0]}: {c['text']}"
    return show_action(c["tool_calls"], c["answer_text"])


def group_header(group: dict) -> str:
    totals = [c["total"] for c in group["completions"]]
    mean = sum(totals) / len(totals)
    state = "informative" if group["informative"] else "zero variance"
    ref = group["reference"]
    return (f"step {group['step']} · {group['conversation_id']} turn {group['turn']} · {group['kind']} · "
            f"reward mean {mean:.3f}, {state}\n  reference: {show_action(ref['tool_calls'], ref['answer'])}")


HEADER = f"  {'total':>6} {'adv':>6} {'fmt':>4} {'dec':>4} {'t/a':>5} {'eff':>4} {'trunc':>5} {'words':>5}  action"


def completion_row(c: dict, width: int) -> str:
    correct = c["tool"] if c["tool"] is not None else c["answer"]
    words = len(c["reasoning"].split()) if c["reasoning"] else 0
    return (f"  {c['total']:>6.3f} {c['advantage']:>+6.2f} {c['format']:>4.0f} {c['decision']:>4.0f} {correct:>5.2f} "
            f"{c['efficiency']:>4.2f} {'yes' if c['truncated'] else '':>5} {words:>5}  {clip(show_completion(c), width)}")


EPISODE_HEADER = f"  {'total':>6} {'adv':>6} {'ok':>3} {'viol':>4} {'turns':>5}  ended by"


def render_episodes(group: dict, episodes: list[dict], width: int) -> str:
    """An episode group (grpo.py --episodes): each episode's outcome row, then its transcript."""
    totals = [e["total"] for e in group["episodes"]]
    state = "informative" if group["informative"] else "zero variance"
    lines = [f"step {group['step']} · {group['task_id']} · {group['kind']} · reward mean "
             f"{sum(totals) / len(totals):.3f}, {state}", EPISODE_HEADER]
    for e in episodes:
        lines.append(f"  {e['total']:>6.3f} {e['advantage']:>+6.2f} {'yes' if e['success'] else 'no':>3} "
                     f"{e['violations']:>4} {e['turns']:>5}  {e['ended_by']}")
        lines += [f"{'':>10}{clip(line, width)}" for line in e["transcript"].splitlines()[1:]]
    return "\n".join(lines)


def members(group: dict) -> list[dict]:
    """A group's completions, or its episodes."""
    return group["episodes"] if "episodes" in group else group["completions"]


def render_one(group: dict, chosen: list[dict], width: int, reasoning: bool) -> str:
    return render_episodes(group, chosen, width) if "episodes" in group else render_group(group, chosen, width,
                                                                                           reasoning)


def render_group(group: dict, completions: list[dict], width: int, reasoning: bool) -> str:
    lines = [group_header(group), HEADER]
    for c in completions:
        lines.append(completion_row(c, width))
        if reasoning and c["reasoning"]:
            lines.append(f"{'':>46}think: {clip(c['reasoning'], width - 7)}")
    return "\n".join(lines)


def render(groups: list[dict], width: int = 100, reasoning: bool = False) -> str:
    """Each group under its header, its completions best first."""
    return "\n\n".join(render_one(g, sorted(members(g), key=lambda c: -c["total"]), width, reasoning) for g in groups)


def render_worst(groups: list[dict], n: int, width: int = 100, reasoning: bool = False) -> str:
    """The n lowest-total completions of the selection, each under its group's header and reference."""
    ranked = sorted(((c["total"], i, k) for i, g in enumerate(groups) for k, c in enumerate(members(g))))[:n]
    return "\n\n".join(render_one(groups[i], [members(groups[i])[k]], width, reasoning) for _, i, k in ranked)


def select(groups: list[dict], step: int | None, informative: bool, zero_variance: bool, kind: str | None
           ) -> list[dict]:
    """The groups of one step (default: the last logged), filtered."""
    steps = sorted({g["step"] for g in groups})
    if not steps:
        return []
    step = steps[-1] if step is None else step
    if step not in steps:
        raise BadInput(f"step {step} was not logged; logged steps: {', '.join(map(str, steps))}")
    chosen = [g for g in groups if g["step"] == step]
    if informative:
        chosen = [g for g in chosen if g["informative"]]
    if zero_variance:
        chosen = [g for g in chosen if not g["informative"]]
    if kind:
        chosen = [g for g in chosen if kind in g["kind"]]
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Show the groups GRPO sampled (grpo.py --log-rollouts) as tables.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, help="a grpo.py --out directory, or its rollouts.jsonl")
    p.add_argument("--step", type=int, help="the step to show (default: the last one logged)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--informative", action="store_true", help="only groups whose rewards differ")
    which.add_argument("--zero-variance", action="store_true", help="only groups whose rewards are all equal")
    p.add_argument("--kind", help="only turns whose reference action kind contains this (e.g. cancel, question)")
    p.add_argument("--worst", type=int, metavar="N", help="the N lowest-reward completions instead of whole groups")
    p.add_argument("--reasoning", action="store_true", help="print each completion's think text under it")
    p.add_argument("--width", type=int, default=100, help="characters of each action shown")
    args = p.parse_args(argv)

    def body():
        groups = select(read_groups(args.run), args.step, args.informative, args.zero_variance, args.kind)
        print(render_worst(groups, args.worst, args.width, args.reasoning) if args.worst
              else render(groups, args.width, args.reasoning) or "no group matches")
    return run_cli(body)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # `| head` ends the output quietly
    sys.exit(main())
