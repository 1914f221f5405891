"""Metrics on held-out turn samples, and one table across models (stages).

    python eval.py --model tiny --model runs/sft --data D/retail_test.json [--thinking on|off] [--out table.json]
    python eval.py --model runs/grpo --episodes 100 [--trials 4] [--show 2]    whole conversations (episodes.py)
    python eval.py --model runs/grpo --bfcl simple_python,irrelevance          BFCL, scored by BFCL (bfcl.py)

Each held-out turn is decoded greedily from its context and compared with the reference action:

    format rate         well-formed output, finished with EOS, think block present iff thinking is on (r_format)
    decision accuracy   1[model called a tool] == 1[reference calls a tool] (r_decision)
    tool-name accuracy  on reference tool-call turns: multiset of called names == reference names
    exact match         on reference tool-call turns: multiset of (name, arguments) == reference (order-free)
    argument F1         on reference tool-call turns: F1 of (name, key, value) triples
    answer F1           on reference answer turns: token F1 of the answer text against the reference
    turn success        well-formed, not truncated, right decision, and exact match (tool turns) or
                        answer F1 >= 0.5 (answer turns)
    conversation succ.  every turn of the conversation succeeds (ALMITA's conversation-level correctness)
    reasoning length    mean words inside the think block
    reward              mean composite reward of the greedy completions under the reward the model's run trained
                        on (its args.json: design, weights, think budget; rewards.RewardWeights.of_run), or the
                        default composite at the model's scale for a model no GRPO run wrote
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from cli import BadInput, run_cli
from data import Action, TurnSample, load_turn_samples, prompt_ids, resolve_data, write_json_atomic
from episodes import load_tasks, run_episodes, score, transcript
from model import (PRECISIONS, autocast, eos_ids, for_inference, is_tiny, load, resolve_precision, special_tokens,
                   trained_as)
from rewards import RewardWeights, action_correct, composite_reward, r_decision, r_format
from sampling import generate, sampling_noise
from stats import difference_ci, mean_ci, show
from toolcalls import Parsed, argument_f1, calls_match, names_match, parse_completion, token_f1

# Defaults that depend on the model's scale, (tiny model, real model), for flags left unset: Qwen3's think-then-act
# completions run to hundreds of tokens, and its longer prompts fit fewer rows in a batch.
SCALE_DEFAULTS = {"batch_size": (64, 16), "max_new_tokens": (128, 1024)}


@dataclass
class TurnResult:
    conversation_id: str
    format_ok: bool
    decision: bool
    ref_tool_call: bool
    name_ok: bool
    exact: bool
    arg_f1: float
    answer_f1: float
    success: bool
    reasoning_words: int
    reward: float
    completion: str = ""   # the model's text, as decoded (kept in --out, shown by --show)


def turn_success(parsed: Parsed, truncated: bool, ref: Action) -> bool:
    """Well-formed, not truncated, right decision, and the right calls (exact) or a close answer."""
    return parsed.well_formed and not truncated and action_correct(parsed, ref)


def score_turn(sample: TurnSample, text: str, truncated: bool, thinking: bool, weights: RewardWeights = RewardWeights(),
               special: frozenset[str] = frozenset()) -> TurnResult:
    """One held-out turn's metrics; `reward` is the composite of `weights` (the run's own: RewardWeights.of_run) and
    special are the tokenizer's control tokens (a format error inside a completion: toolcalls.parse_completion)."""
    parsed, ref = parse_completion(text, special), sample.target
    return TurnResult(
        conversation_id=sample.conversation_id,
        format_ok=bool(r_format(parsed, truncated, thinking)),   # the metrics use the reward's own definitions
        decision=bool(r_decision(parsed, ref)),
        ref_tool_call=ref.is_tool_call,
        name_ok=ref.is_tool_call and names_match(parsed.tool_calls, ref.tool_calls),
        exact=ref.is_tool_call and calls_match(parsed.tool_calls, ref.tool_calls),
        arg_f1=argument_f1(parsed.tool_calls, ref.tool_calls) if ref.is_tool_call else 0.0,
        answer_f1=token_f1(parsed.answer, ref.content) if not ref.is_tool_call else 0.0,
        success=turn_success(parsed, truncated, ref),
        reasoning_words=parsed.reasoning_words,
        reward=composite_reward(parsed, truncated, ref, thinking, weights).total,
        completion=text)


def show_turns(samples: list[TurnSample], rows: dict[str, dict]) -> str:
    """Each turn's last context message, the reference action and every model's completion with its verdict
    (rows: eval.py's --out rows, which keep the completions)."""
    lines = []
    for k, s in enumerate(samples):
        last = s.messages[-1] if s.messages else {"role": "system", "content": s.system}
        ref = s.target
        gold = json.dumps(ref.tool_calls) if ref.is_tool_call else ref.content
        lines += [f"--- turn {k} ({s.conversation_id}, {len(s.messages)} messages before it)",
                  f"  last {last['role']}: {str(last.get('content'))[:300]}", f"  reference: {gold[:300]}"]
        for name, row in rows.items():
            text = row.get("completions", [None] * (k + 1))[k]
            verdict = "ok" if row["successes"][k] else "wrong"
            lines.append(f"  {name} [{verdict}]: " + ("(not kept)" if text is None else text.strip()[:600]))
    return "\n".join(lines)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def conversation_success(results: list[TurnResult]) -> float:
    """Fraction of conversations all of whose evaluated turns succeed."""
    by_conv: dict[str, bool] = defaultdict(lambda: True)
    for r in results:
        by_conv[r.conversation_id] &= r.success
    return mean([float(ok) for ok in by_conv.values()])


def aggregate(results: list[TurnResult]) -> dict[str, float]:
    tool = [r for r in results if r.ref_tool_call]
    answer = [r for r in results if not r.ref_tool_call]
    return {
        "turns": len(results),
        "format_rate": mean([r.format_ok for r in results]),
        "decision_acc": mean([r.decision for r in results]),
        "tool_name_acc": mean([r.name_ok for r in tool]),
        "exact_match": mean([r.exact for r in tool]),
        "arg_f1": mean([r.arg_f1 for r in tool]),
        "answer_f1": mean([r.answer_f1 for r in answer]),
        "turn_success": mean([r.success for r in results]),
        "conv_success": conversation_success(results),
        "reasoning_words": mean([r.reasoning_words for r in results]),
        "reward": mean([r.reward for r in results]),
    }


def generate_texts(model, tokenizer, samples: list[TurnSample], thinking: bool, batch_size: int,
                   max_new_tokens: int, precision: str, progress: bool = False, temperature: float = 0.0,
                   generator: torch.Generator | None = None, prefixes: list | None = None) -> list[tuple[str, bool]]:
    """Completions (text, truncated) for each sample, batched by prompt length; greedy unless a temperature.
    prefixes: each sample's cached sampling.Prefix (or None), reused where its prompt starts with it, and replaced
    in place by the sample's own prompt's."""
    return complete(model, tokenizer, [prompt_ids(tokenizer, s, thinking) for s in samples], batch_size,
                    max_new_tokens, precision, progress, temperature, generator, prefixes)


def complete(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int | list[int],
             precision: str, progress: bool = False, temperature: float = 0.0, generator: torch.Generator | None = None,
             prefixes: list | None = None) -> list[tuple[str, bool]]:
    """generate_texts on prompts already tokenised. max_new_tokens: one budget, or each prompt's own (BFCL's): a batch
    is generated to its largest and each completion cut at its own, the tokens it gets alone (to float rounding)."""
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[tuple[str, bool]] = [("", True)] * len(prompts)
    device = next(model.parameters()).device
    for k in tqdm(range(0, len(order), batch_size), desc="eval", disable=not progress, dynamic_ncols=True):
        idx = order[k:k + batch_size]
        most = max(budgets[i] for i in idx)
        noise = sampling_noise(len(idx), most, generator) if temperature > 0 else None
        with autocast(precision, device):
            gen = generate(model, [prompts[i] for i in idx], eos_ids=eos_ids(model, tokenizer),
                           pad_id=tokenizer.pad_token_id, max_new_tokens=most, temperature=temperature,
                           noise=noise, prefixes=None if prefixes is None else [prefixes[i] for i in idx])
        for i, ids, cut in zip(idx, gen.completion_lists(), gen.truncated.tolist()):
            ended = not cut and len(ids) <= budgets[i]   # its EOS within its own budget (the EOS is dropped)
            outputs[i] = (tokenizer.decode(ids[:-1] if ended else ids[:budgets[i]], skip_special_tokens=False),
                          not ended)
        for i, prefix in zip(idx, gen.prefixes or []):
            prefixes[i] = prefix
    return outputs


def evaluate_turns(model, tokenizer, samples: list[TurnSample], thinking: bool, batch_size: int = 64,
                   max_new_tokens: int = 128, precision: str = "fp32", progress: bool = False,
                   weights: RewardWeights = RewardWeights()) -> list[TurnResult]:
    """Each held-out turn's result (greedy decoding), its reward that of `weights`."""
    was_training = model.training
    model.eval()
    outputs = generate_texts(model, tokenizer, samples, thinking, batch_size, max_new_tokens, precision, progress)
    model.train(was_training)
    special = special_tokens(tokenizer)
    return [score_turn(s, text, trunc, thinking, weights, special) for s, (text, trunc) in zip(samples, outputs)]


def evaluate(model, tokenizer, samples: list[TurnSample], thinking: bool, **settings) -> dict[str, float]:
    """Held-out metrics of one model (see the module docstring); settings as evaluate_turns."""
    return aggregate(evaluate_turns(model, tokenizer, samples, thinking, **settings))


def scale_settings(model_name: str, batch_size: int | None = None, max_new_tokens: int | None = None
                   ) -> dict[str, int]:
    """batch_size and max_new_tokens as given, or SCALE_DEFAULTS for the model's scale."""
    real = not is_tiny(model_name)
    given = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    return {k: given[k] if given[k] is not None else pair[real] for k, pair in SCALE_DEFAULTS.items()}


def held_out_evaluator(args, tokenizer, thinking: bool) -> Callable | None:
    """A function model -> held-out metrics on the first --eval-limit turn samples of --eval-data (what a training
    run evaluates at step 0, every --eval-every steps and at the end), or None without --eval-data."""
    if not args.eval_data:
        return None
    samples = load_turn_samples(resolve_data(args.eval_data))[0][:args.eval_limit]
    settings = scale_settings(args.model)
    weights = RewardWeights.of_run(vars(args), real_model=not is_tiny(args.model))   # the reward the run trains on
    return lambda model: evaluate(model, tokenizer, samples, thinking, precision=args.precision, weights=weights,
                                  **settings)


def episode_agent(model, tokenizer, thinking: bool, settings: dict, precision: str, temperature: float,
                  generator: torch.Generator, reuse_cache: bool) -> Callable:
    """episodes.Agent of a model: one sampled completion for each active episode's conversation so far. With
    reuse_cache each episode keeps its last prompt's KV cache, and its next prompt, which repeats the conversation
    so far, computes only what is new (sampling.Prefix)."""
    cached: dict[int, object] = {}   # id(episode) -> its last prompt's Prefix

    def agent(active: list) -> list[str]:
        model.eval()
        prefixes = [cached.get(id(e)) for e in active] if reuse_cache else None
        texts = [text for text, _ in generate_texts(model, tokenizer, [e.context() for e in active], thinking,
                                                    settings["batch_size"], settings["max_new_tokens"], precision,
                                                    temperature=temperature, generator=generator, prefixes=prefixes)]
        if reuse_cache:
            cached.clear()   # finished episodes' caches go; the active ones' are replaced
            cached.update((id(e), q) for e, q in zip(active, prefixes))
        return texts
    return agent


COLUMNS = ["reward", "format_rate", "decision_acc", "tool_name_acc", "exact_match", "arg_f1", "answer_f1",
           "turn_success", "conv_success", "reasoning_words"]
EPISODE_COLUMNS = ["task_success", "end_state", "communicated", "pass^1", "pass^2", "pass^4", "turns", "tool_errors",
                   "violations", "turn_limit"]


def format_table(rows: dict[str, dict[str, float]], columns: list[str] = COLUMNS) -> str:
    columns = [c for c in columns if all(c in m for m in rows.values())]
    width = max(12, *(len(name) for name in rows))
    lines = [f"{'model':<{width}} " + " ".join(f"{c[:12]:>12}" for c in columns)]
    for name, m in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{m[c]:>12.3f}" for c in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate models on held-out turn samples; one table, a row per model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", help="repeat for several models (rows); required but with "
                   "--completions")
    p.add_argument("--name", action="append", help="row names, in --model order (default: the model paths)")
    p.add_argument("--data", default="demo:test", help="held-out APIGen-MT-5k or next-action test file, or a demo split")
    p.add_argument("--thinking", choices=["on", "off", "auto"], default="auto",
                   help="prompt mode; auto = on for models whose args.json says cold-start or grpo training")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N turn samples only")
    p.add_argument("--batch-size", type=int, default=None, help="(SCALE_DEFAULTS: 64 tiny, 16 real)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="(SCALE_DEFAULTS: 128 tiny, 1024 real)")
    p.add_argument("--out", help="write the table as JSON here (after each model, so a killed run keeps its rows)")
    p.add_argument("--resume", action="store_true", help="keep the rows the --out file already has (same data and "
                   "settings) and evaluate only the other models")
    p.add_argument("--baseline", metavar="NAME", help="also give each row's turn success minus this row's, with a "
                   "95%% interval paired over the held-out turns (stats.py)")
    p.add_argument("--episodes", metavar="N_OR_FILE", help="whole conversations instead of turns: N tasks of held-out "
                   "users (or a tasks file of `python episodes.py tasks`), a scripted user, tau-bench's metrics")
    p.add_argument("--trials", type=int, default=4, help="episodes: trials per task (the K of pass^k)")
    p.add_argument("--temperature", type=float, default=1.0, help="episodes: the agent's sampling temperature")
    p.add_argument("--turn-limit", type=int, default=12, help="episodes: agent turns before the user gives up")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N transcripts per model (episodes, "
                   "tau2), or the first N held-out turns with every model's completion side by side")
    p.add_argument("--seed", type=int, default=0, help="episodes: tasks and sampling")
    p.add_argument("--episode-cache", choices=["on", "off", "auto"], default="auto", help="episodes: keep each "
                   "episode's KV cache between turns and compute only what is new (the same completions); auto = on "
                   "for a tiny model, off for a real one, whose caches for every episode at once would not fit")
    p.add_argument("--bfcl", metavar="CATEGORIES", help="the Berkeley Function Calling Leaderboard instead: comma-"
                   "separated categories (simple_python, multiple, parallel, parallel_multiple, irrelevance, live_*), "
                   "prompted, decoded and scored as BFCL does, by BFCL's code (bfcl.py); --limit N entries of each; "
                   "a completion cut at --max-new-tokens is generated again within BFCL's own token budget")
    p.add_argument("--completions", metavar="FILE", help="--bfcl: score these completions (JSON lines {\"id\", "
                   "\"completion\"[, \"truncated\": true]}) instead of generating; no model is loaded")
    p.add_argument("--tau2", metavar="DOMAIN", help="tau2-bench instead: whole conversations in tau2's own retail or "
                   "airline world, scored by tau2's evaluator (tau2bench.py); --trials, --limit N tasks, --show")
    p.add_argument("--split", default="test", help="--tau2: task split (train, test, base = all)")
    p.add_argument("--agent", choices=["model", "gold"], default="model", help="--tau2: the --model rows, or the "
                   "gold actions through this project's text path (no model)")
    p.add_argument("--user", metavar="MODEL", help="--tau2: the model playing tau2's user simulator (any model this "
                   "project loads), or litellm:NAME for tau2's own user through litellm; needed unless --agent gold")
    p.add_argument("--max-steps", type=int, default=200, help="--tau2: messages before the conversation is cut (tau2's "
                   "default; cut conversations score 0)")
    p.add_argument("--user-max-new-tokens", type=int, default=128, help="--tau2: tokens a --user MODEL writes per "
                   "message at most (a user's message is a sentence or three; unbounded, a small model rambles on)")
    p.add_argument("--user-temperature", type=float, default=0.0, help="--tau2: the --user MODEL's sampling "
                   "temperature (tau2's user default: 0, greedy); a litellm: user keeps tau2's own settings")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute precision (autocast, with bf16 weights under bf16: model.for_inference; auto: bf16 "
                   "on a GPU, and on a CPU with bf16 hardware for a real model; fp32 otherwise)")
    args = p.parse_args(argv)
    if args.completions and not args.bfcl:
        p.error("--completions goes with --bfcl")
    gold = bool(args.tau2) and args.agent == "gold"
    if not args.model and not args.completions and not gold:
        p.error("--model is required (or --bfcl with --completions, or --tau2 with --agent gold)")
    if args.tau2 and not gold and not args.user:
        p.error("--tau2 needs --user MODEL (tau2's user is a model too), or --agent gold")
    args.model = args.model or [args.completions or "gold"]
    names = args.name or args.model
    if len(names) != len(args.model):
        p.error("give one --name per --model")
    if args.baseline and args.baseline not in names:
        p.error(f"--baseline {args.baseline}: not one of the rows ({', '.join(names)})")
    if args.resume and not args.out:
        p.error("--resume needs --out (the file whose rows it keeps)")

    def body():
        if args.episodes:
            return evaluate_episodes(args, names)
        if args.bfcl:
            return evaluate_bfcl(args, names)
        if args.tau2:
            return evaluate_tau2(args, names)
        samples = load_turn_samples(resolve_data(args.data))[0][:args.limit]
        what = {"data": args.data, "turns": len(samples)}
        rows = kept_rows(args, what)
        successes = {name: [row["successes"]] for name, row in rows.items()}
        intervals = {name: mean_ci(successes[name]) for name in rows}
        for name, model_name in zip(names, args.model):
            if name in rows:
                continue
            thinking = prompt_thinking(args, model_name)
            model, tokenizer, precision = load_for_eval(model_name, args)
            t0 = time.perf_counter()
            settings = scale_settings(model_name, args.batch_size, args.max_new_tokens)
            weights = RewardWeights.of_run(trained_as(model_name), real_model=not is_tiny(model_name))
            results = evaluate_turns(model, tokenizer, samples, thinking, precision=precision, progress=True,
                                     weights=weights, **settings)
            successes[name] = [[float(r.success) for r in results]]
            intervals[name] = mean_ci(successes[name])
            rows[name] = {**aggregate(results), "turn_success_ci": intervals[name][1:],
                          **row_settings(args, model_name), "seconds": round(time.perf_counter() - t0, 1), **what,
                          "successes": successes[name][0], "completions": [r.completion for r in results]}
            write_rows(args.out, rows)
        if args.show:
            print(show_turns(samples[:args.show], {name: rows[name] for name in names}))
        rows = {name: rows[name] for name in names}
        print(format_table(rows))
        print(f"\nturn success, 95% interval (bootstrap over the {len(samples)} held-out turns)"
              + (f"; difference to {args.baseline}, paired over the same turns:" if args.baseline else ":"))
        for name in names:
            line = f"  {name:<14} {show(*intervals[name])}"
            if args.baseline and name != args.baseline:
                diff = difference_ci(successes[name], successes[args.baseline])
                rows[name][f"turn_success_minus_{args.baseline}"] = list(diff)
                line += f"   {show(*diff, signed=True)}"
            print(line)
        write_rows(args.out, rows)
    return run_cli(body)


def row_settings(args, model_name: str) -> dict:
    """What a row's numbers depend on in every mode besides the mode's own work: the model, its prompt mode, its
    completion budget and the compute precision. Each row stores them, and --resume compares them (kept_rows). Batch
    size and device are left out: they change how the completions are computed, not what (up to float rounding)."""
    return {"model": model_name, "thinking": prompt_thinking(args, model_name),
            "max_new_tokens": scale_settings(model_name, None, args.max_new_tokens)["max_new_tokens"],
            "precision": resolve_precision(args.precision, args.device, model_name)}


def load_for_eval(model_name: str, args) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, precision): --model loaded on --device in eval mode, its compute precision resolved for it
    and its weights stored as that precision computes them (model.for_inference)."""
    precision = resolve_precision(args.precision, args.device, model_name)
    model, tokenizer = load(model_name, device=args.device)
    return for_inference(model.eval(), precision), tokenizer, precision


def kept_rows(args, what: dict) -> dict[str, dict]:
    """Under --resume, the rows of the --out file that this command also asks for, each checked to have been made
    under this command's settings: the mode's work (`what`: data and size, tasks, trials, seed, ...) and the row's own
    (row_settings); {} otherwise. A row made under other settings is refused, not kept: beside the new rows it would
    compare numbers of two different evaluations."""
    path = Path(args.out) if args.out else None
    if not (args.resume and path.is_file()):
        return {}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not JSON ({e}); remove it or drop --resume") from None
    models = dict(zip(args.name or args.model, args.model))
    rows = {name: row for name, row in saved.items() if name in models}
    for name, row in rows.items():
        for key, value in {**what, **row_settings(args, models[name])}.items():
            if row.get(key) != value:
                raise BadInput(f"{path}: row '{name}' has {key} {row.get(key)!r}, this command {value!r}; remove the "
                               f"file or drop --resume")
    if rows:
        print(f"--resume: kept the rows {', '.join(rows)} of {path}", file=sys.stderr)
    return rows


def write_rows(out: str | None, rows: dict) -> None:
    """The table as JSON in --out, whole or not at all (data.write_json_atomic)."""
    if out:
        write_json_atomic(Path(out), rows)


def evaluate_episodes(args, names: list[str]) -> None:
    """The episode table across models (episodes.py), with --show transcripts."""
    tasks = load_tasks(args.episodes, args.seed)
    what = {"episodes": str(args.episodes), "trials": args.trials, "seed": args.seed,
            "agent_turn_limit": args.turn_limit, "temperature": args.temperature}
    rows = kept_rows(args, what)
    for name, model_name in zip(names, args.model):
        if name in rows:
            continue
        thinking = prompt_thinking(args, model_name)
        model, tokenizer, precision = load_for_eval(model_name, args)
        settings = scale_settings(model_name, args.batch_size, args.max_new_tokens)
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        reuse = args.episode_cache == "on" or (args.episode_cache == "auto" and is_tiny(model_name))
        agent = episode_agent(model, tokenizer, thinking, settings, precision, args.temperature, generator, reuse)
        t0 = time.perf_counter()
        with tqdm(total=len(tasks) * args.trials, desc=f"episodes {name}", dynamic_ncols=True) as bar:
            episodes = run_episodes(agent, tasks, args.trials, args.turn_limit,
                                    progress=lambda done: bar.update(done - bar.n),
                                    special_tokens=special_tokens(tokenizer))
        rows[name] = {**score(episodes, args.trials), **row_settings(args, model_name),
                      "seconds": round(time.perf_counter() - t0, 1), **what}
        write_rows(args.out, rows)
        for e in episodes[::args.trials][:args.show]:
            print(transcript(e) + "\n")
    rows = {name: rows[name] for name in names}
    print(format_table(rows, EPISODE_COLUMNS))
    print(f"\ntask success, 95% interval (bootstrap over the {len(tasks)} tasks, each the mean of its trials):")
    for name in names:
        print(f"  {name:<14} {show(rows[name]['task_success'], *rows[name]['task_success_ci'])}")
    write_rows(args.out, rows)


def bfcl_completions(model, tokenizer, entries: list[dict], settings: dict, precision: str) -> dict:
    """Each entry's greedy completion (bfcl.Completion) to BFCL's prompt text, within the budget BFCL's own run gives
    it (bfcl.max_tokens: the context less the prompt, at most 4,096). All are generated within --max-new-tokens
    first; those cut there are generated again at their BFCL budget: cut short, a thought cut before its call would
    read as "no call", a pass on irrelevance."""
    import bfcl
    prompts = [tokenizer(bfcl.prompt_text(e), add_special_tokens=False)["input_ids"] for e in entries]
    context = bfcl.context_length(model.config, tokenizer)
    budgets = [bfcl.max_tokens(len(p), context) for p in prompts]
    first = complete(model, tokenizer, prompts, settings["batch_size"],
                     [min(b, settings["max_new_tokens"]) for b in budgets], precision, progress=True)
    completions = [bfcl.Completion(text, cut) for text, cut in first]
    again = [i for i, ((_, cut), b) in enumerate(zip(first, budgets)) if cut and b > settings["max_new_tokens"]]
    second = complete(model, tokenizer, [prompts[i] for i in again], settings["batch_size"],
                      [budgets[i] for i in again], precision, progress=True)
    for i, (text, cut) in zip(again, second):
        completions[i] = bfcl.Completion(text, cut, regenerated=True)
    return {e["id"]: c for e, c in zip(entries, completions)}


def evaluate_bfcl(args, names: list[str]) -> None:
    """BFCL's accuracy per category and its summary groups, a row per model (or per --completions file)."""
    import tempfile

    import bfcl   # its optional package (requirements-bfcl.txt) is imported only here
    categories = bfcl.parse_categories(args.bfcl)
    rows, score_root = kept_rows(args, {"bfcl": args.bfcl, "limit": args.limit}), Path(tempfile.mkdtemp())
    for name, model_name in zip(names, args.model):
        if name in rows:
            continue
        t0, results = time.perf_counter(), {}
        if args.completions:
            completions = bfcl.read_completions(args.completions)
        else:
            model, tokenizer, precision = load_for_eval(model_name, args)
            settings = scale_settings(model_name, args.batch_size, args.max_new_tokens)
        for category in categories:
            if not args.completions:
                completions = bfcl_completions(model, tokenizer, bfcl.entries(category, args.limit, with_hint=True),
                                               settings, precision)
            results[category] = bfcl.score(category, completions, args.limit, score_root / name.replace("/", "_"))
        rows[name] = {**{c: r["accuracy"] for c, r in results.items()}, **bfcl.summary(results),
                      "categories": results, "seconds": round(time.perf_counter() - t0, 1), "bfcl": args.bfcl,
                      "limit": args.limit, **row_settings(args, model_name)}
        write_rows(args.out, rows)
    rows = {name: rows[name] for name in names}
    print(format_table(rows, categories + list(bfcl.GROUPS)))
    print("\naccuracy, 95% interval (bootstrap over each category's entries; scored by bfcl-eval's own runner):")
    for name in names:
        print(f"  {name:<14} " + "   ".join(f"{c} {show(r['accuracy'], *r['accuracy_ci'])}"
                                            for c, r in rows[name]["categories"].items()))
    print("\ncompletions cut at --max-new-tokens and generated again / cut at BFCL's own budget, and so scored cut:")
    for name in names:
        print(f"  {name:<14} " + "   ".join(f"{c} {r['regenerated']} / {r['truncated']}"
                                            for c, r in rows[name]["categories"].items()))
    write_rows(args.out, rows)


def sampler_responder(model, tokenizer, thinking: bool, settings: dict, precision: str, temperature: float,
                      generator: torch.Generator) -> Callable[[list[dict], list[dict] | None], str]:
    """tau2bench.Respond of a model: one completion of the chat so far, reusing the KV cache of its last prompt
    (the conversation so far repeats it); one per conversation and role."""
    cached = [None]

    def respond(chat: list[dict], tools: list[dict] | None) -> str:
        model.eval()
        sample = TurnSample("tau2", "", tools or [], chat, Action())
        return generate_texts(model, tokenizer, [sample], thinking, 1, settings["max_new_tokens"], precision,
                              temperature=temperature, generator=generator, prefixes=cached)[0][0]
    return respond


def message_progress(bar: tqdm, shown: bool) -> Callable:
    """tau2bench.run's on_message: the conversation's bar (messages so far, the last one's role and seconds) and,
    when shown, a line per message with the seconds it took."""
    import tau2bench

    def on_message(message, seconds: float) -> None:
        bar.set_postfix_str(f"last: {message.role} {seconds:.1f} s", refresh=False)
        bar.update(1)
        if shown:
            bar.write(f"  {seconds:6.1f} s {tau2bench.message_line(message)}")
    return on_message


def evaluate_tau2(args, names: list[str]) -> None:
    """tau2-bench's metrics of each model (or of the gold actions), a row each; each conversation's progress by
    message, and with --show its first N tasks' conversations printed as they go."""
    import tau2bench   # its optional package (requirements-tau2.txt) is imported only here
    tasks = tau2bench.tasks(args.tau2, args.split, args.limit)
    what = {"tau2": args.tau2, "split": args.split, "limit": args.limit, "trials": args.trials, "seed": args.seed,
            "user": args.user, "max_steps": args.max_steps, "temperature": args.temperature,
            "user_max_new_tokens": args.user_max_new_tokens, "user_temperature": args.user_temperature}
    rows = kept_rows(args, what)
    user_model = None   # (model, tokenizer, settings) of a --user model, loaded once for every row
    if args.user and not args.user.startswith("litellm:") and args.agent == "model":
        user_model = (*load_for_eval(args.user, args), {"max_new_tokens": args.user_max_new_tokens})
    for name, model_name in zip(names, args.model):
        if name in rows:
            continue
        if args.agent == "model":
            thinking = prompt_thinking(args, model_name)
            model, tokenizer, precision = load_for_eval(model_name, args)
            settings = scale_settings(model_name, args.batch_size, args.max_new_tokens)
            special = special_tokens(tokenizer)
        t0, simulations, records = time.perf_counter(), [], []
        with tqdm(total=len(tasks) * args.trials, desc=f"tau2 {args.tau2} {name}", dynamic_ncols=True) as bar:
            for i, task in enumerate(tasks):
                for trial in range(args.trials):
                    seed = args.seed * 1_000_003 + i * args.trials + trial
                    if args.agent == "gold":
                        moves = tau2bench.gold_moves(task)
                        agent_of = lambda env, moves=moves: tau2bench.make_scripted_agent(env, moves)
                        user = tau2bench.make_gold_user()
                    else:
                        generator = torch.Generator(device=args.device).manual_seed(seed)
                        respond = sampler_responder(model, tokenizer, thinking, settings, precision,
                                                    args.temperature, generator)
                        agent_of = lambda env, respond=respond: tau2bench.make_agent(env, respond, special)
                        if user_model is None:
                            user = tau2bench.make_user(task, litellm_name=args.user.removeprefix("litellm:"))
                        else:
                            user_net, user_tok, user_precision, user_settings = user_model
                            user = tau2bench.make_user(task, sampler_responder(
                                user_net, user_tok, False, user_settings, user_precision, args.user_temperature,
                                generator))
                    shown = trial == 0 and i < args.show   # printed as it goes, a line per message
                    if shown:
                        bar.write(f"task {task.id}, trial 0:")
                    with tqdm(total=args.max_steps + 1, desc=f"task {task.id} trial {trial}", unit="msg", position=1,
                              leave=False, dynamic_ncols=True, disable=args.agent == "gold") as messages:
                        simulation = tau2bench.run(args.tau2, task, agent_of, user, args.max_steps, seed,
                                                   message_progress(messages, shown))
                    if shown:
                        bar.write(tau2bench.verdict_line(simulation) + "\n")
                    simulations.append(simulation)
                    records.append(tau2bench.simulation_record(simulation, trial))
                    bar.update(1)
        rows[name] = {**tau2bench.score(simulations, args.trials), "seconds": round(time.perf_counter() - t0, 1),
                      **what, **row_settings(args, model_name), "simulations": records}
        write_rows(args.out, rows)
    rows = {name: rows[name] for name in names}
    columns = ["success", "reward"] + [f"pass^{k}" for k in range(1, args.trials + 1)] + ["messages"]
    print(format_table(rows, columns))
    print(f"\ntask success, 95% interval (bootstrap over the {len(tasks)} tasks of tau2's {args.tau2} {args.split} "
          f"split; scored by tau2's own evaluator):")
    for name in names:
        print(f"  {name:<14} {show(rows[name]['success'], *rows[name]['success_ci'])}   ended by "
              + ", ".join(f"{k} {v}" for k, v in sorted(rows[name]["terminations"].items())))


def prompt_thinking(args, model_name: str) -> bool:
    """--thinking for one model: on, off, or (auto) on for a model trained to think."""
    return args.thinking == "on" or (args.thinking == "auto" and thinking_model(model_name))


def thinking_model(model_name: str) -> bool:
    """Whether a model directory was trained to think (cold start, or GRPO after it), from its args.json."""
    run = trained_as(model_name)
    return run.get("mode") == "cold-start" or run.get("thinking") == "on"


if __name__ == "__main__":
    sys.exit(main())
