"""GRPO (or cold-start) configurations x seeds from one start model, evaluated on the same held-out work, in one
table.

    python experiment.py --model runs/cold --out runs/ablation --seeds 0 1 2 \\
        --configs paper binary fine no-format no-decision no-tool no-answer no-efficiency -- --steps 40
    python experiment.py --model runs/cold --out runs/grid --grid w-tool=0.3,0.9 w-efficiency=0,0.3 -- --steps 40
    python experiment.py --stage cold-start --model runs/sft --data demo:cold_start --baseline start --seeds 0 \\
        --compare no_think=runs/cold@off --configs e2="--epochs 2" e6="--epochs 6" -- --replay-ratio 1

A configuration is a reward design (rewards.DESIGNS: paper, binary, fine, no-<component>), `refill` (DAPO's
dynamic sampling), or NAME=FLAGS for any grpo.py flags (e.g. "clip10=--eps-high 0.1"); --grid adds the product of
two (or more) flags' values. Everything after -- goes to every run, after the configuration's own flags (argparse
keeps the last value: a flag that a configuration changes belongs in the configurations only). Each (configuration,
seed) trains with `python grpo.py` (--stage cold-start: `python sft.py --mode cold-start`) into OUT/CONFIG/seedS and
is evaluated greedily on --eval-data (eval.evaluate_turns), and with --episodes on whole conversations. The start
model is evaluated once, as the row "start", and so is each --compare NAME=MODEL (e.g. the base SFT model: how GRPO
compares with the stage without thinking); MODEL@off / MODEL@on evaluates it with thinking off / on instead of the
way it was trained (eval.thinking_model).

The table gives, per configuration, each metric's mean over seeds and held-out turns with a 95% interval, and the
difference to the first configuration (the baseline) with its own interval, paired over the held-out turns
(stats.py: a bootstrap over turns and seeds). Choose between configurations with --split val (the training users'
validation conversations and episode tasks; files with a _val suffix beside the held-out ones), report on the
held-out work (the default, --split test). Resumable: a finished (configuration, seed) is not run again, an
interrupted one resumes from its checkpoint, and an evaluation is reused if it was made with this command's
evaluation flags (made_with), or else made again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from cli import BadInput, run_cli
from data import load_turn_samples, resolve_data, write_json_atomic
from episodes import load_tasks, run_episodes, score, task_successes
from eval import aggregate, episode_agent, evaluate_turns, scale_settings, thinking_model
from model import is_tiny, load, resolve_precision, special_tokens, trained_as
from rewards import DESIGNS, RewardWeights
from stats import difference_ci, mean_ci, show

HERE = Path(__file__).resolve().parent
METRICS = ("turn_success", "reward")   # per-turn scores, each with an interval; with --episodes also per task:
#                                        "episode" (task success) and "violations" (policy violations per episode)


def config_flags(spec: str) -> tuple[str, list[str]]:
    """(name, grpo.py flags) of one --configs entry."""
    if spec in DESIGNS:
        return spec, ["--reward", spec]
    if spec == "refill":
        return spec, ["--refill"]
    name, sep, flags = spec.partition("=")
    if not sep or not name:
        raise BadInput(f"--configs {spec!r}: not a reward design ({', '.join(DESIGNS)}), refill, or NAME=FLAGS")
    return name, shlex.split(flags)


def grid_configs(grid: list[str]) -> list[tuple[str, list[str]]]:
    """The product of FLAG=v1,v2,... entries: (name, flags) for each combination."""
    if not grid:
        return []
    axes = []
    for entry in grid:
        flag, sep, values = entry.partition("=")
        if not sep or not values:
            raise BadInput(f"--grid {entry!r}: expected FLAG=v1,v2 (e.g. w-tool=0.3,0.9)")
        axes.append([(flag, v) for v in values.split(",")])
    return [(",".join(f"{f}={v}" for f, v in combo), [x for f, v in combo for x in (f"--{f}", v)])
            for combo in itertools.product(*axes)]


STAGES = {"grpo": ["grpo.py"], "cold-start": ["sft.py", "--mode", "cold-start"]}   # --stage: the training command


def train(run_dir: Path, args, flags: list[str], seed: int) -> None:
    """python grpo.py (or sft.py --mode cold-start) into run_dir (or --resume it); nothing when its final model is
    there. The command that trains it is kept beside it (seedS.command.json; the final save keeps only its own files
    in run_dir): a run made by another command (another start model, data or flag) is refused, never reused in its
    place."""
    script, *mode = STAGES[args.stage]
    command = [*mode, "--model", args.model, "--data", args.data, "--out", str(run_dir), "--seed", str(seed),
               *flags, *args.grpo_flags]
    made_by = run_dir.parent / f"{run_dir.name}.command.json"
    if made_by.exists() and (before := json.loads(made_by.read_text())) != command:
        raise BadInput(f"{run_dir}: trained by `python {script} {shlex.join(before)}`, not by this command's "
                       f"`python {script} {shlex.join(command)}`; remove it or choose another --out")
    if (run_dir / "model.safetensors").exists():
        return
    if (run_dir / "checkpoint" / "state.json").exists():
        command = ["--resume", str(run_dir)]
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(made_by, command)
    print(f"$ python {script} {shlex.join(command)}", flush=True)
    status = subprocess.run([sys.executable, str(HERE / script), *command]).returncode
    if status:
        raise SystemExit(status)


def made_with(model_dir: str, args, thinking: bool | None = None) -> dict:
    """What an evaluation's numbers depend on: the model, the held-out turns, the compute precision, the episodes
    (their tasks, trials and sampling), and the prompt's thinking mode and the new-token budget where they are not
    the model's own defaults (recorded only then, so evaluations made before these flags existed stay valid). A cached
    evaluation is reused only if made with the same."""
    flags = {"model": model_dir, "eval_data": args.eval_data, "limit": args.limit, "episodes": args.episodes,
             "precision": resolve_precision(args.precision, args.device, model_dir)}
    if thinking is not None:
        flags["thinking"] = thinking
    if args.max_new_tokens:
        flags["max_new_tokens"] = args.max_new_tokens
    if args.episodes:
        flags.update(trials=args.trials, seed=args.seed)
        if args.split != "test":
            flags["episode_split"] = args.split
    return flags


def cached_result(result_path: Path, flags: dict) -> dict | None:
    """The evaluation cached in result_path if it was made with these flags (made_with); None if there is none, or
    if it was made with others (said on stderr: it is evaluated again and replaced)."""
    if not result_path.exists():
        return None
    result = json.loads(result_path.read_text())
    made = result.get("made_with")
    if made == flags:
        return result
    if made is None:
        print(f"{result_path}: records no flags (an older version's); evaluating it again", file=sys.stderr)
        return None
    changed = [k for k in flags if k in made and made[k] != flags[k]]   # trials, seed: only with episodes, which differ
    print(f"{result_path}: made with {', '.join(f'{k} {made[k]!r}' for k in changed)}, this command "
          f"{', '.join(f'{k} {flags[k]!r}' for k in changed)}; evaluating it again", file=sys.stderr)
    return None


def evaluate_run(model_dir: str, result_path: Path, samples, tasks, args, thinking: bool | None = None) -> dict:
    """Per-turn (and per-task) scores of one trained model, cached in result_path with the flags it was made with;
    prompts think as the model was trained to (eval.thinking_model) unless `thinking` says otherwise."""
    flags = made_with(model_dir, args, thinking)
    cached = cached_result(result_path, flags)
    if cached is not None:
        return cached
    model, tokenizer = load(model_dir, device=args.device)
    thinking = thinking_model(model_dir) if thinking is None else thinking
    settings = scale_settings(model_dir) | ({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})
    precision = flags["precision"]
    weights = RewardWeights.of_run(trained_as(model_dir), real_model=not is_tiny(model_dir))   # its own reward
    turns = evaluate_turns(model, tokenizer, samples, thinking, precision=precision, progress=True, weights=weights,
                           **settings)
    result = {"made_with": flags, "metrics": aggregate(turns), "turn_success": [float(t.success) for t in turns],
              "reward": [t.reward for t in turns]}
    if tasks:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        agent = episode_agent(model, tokenizer, thinking, settings, precision, 1.0, generator,
                              reuse_cache=is_tiny(model_dir))
        episodes = run_episodes(agent, tasks, args.trials, 12, special_tokens=special_tokens(tokenizer))
        result["metrics"].update({f"episode_{k}": v for k, v in score(episodes, args.trials).items()
                                  if isinstance(v, float)})
        result["episode"] = [s / args.trials for s in task_successes(episodes).values()]
        per_task: dict[str, list[int]] = {}
        for e in episodes:
            per_task.setdefault(e.task.task_id, []).append(e.violations)
        result["violations"] = [sum(v) / len(v) for v in per_task.values()]   # per task, mean over its trials
    write_json_atomic(result_path, result)   # whole or not at all: a kill leaves no half-written result
    return result


def training_summary(run_dir: Path) -> dict[str, float] | None:
    """What a run's log.jsonl says of its training, per step means over the run: the fraction of its groups that were
    informative (1 - zero_variance_groups), the new tokens it sampled in all, and its training success (task success
    under --episodes, else the reward) over its first and its last 10 steps: the training curve in two numbers. None
    for a run without a log."""
    if not (run_dir / "log.jsonl").is_file():
        return None
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if "zero_variance_groups" in r]   # GRPO training steps (not evaluation lines)
    if not records:   # a cold-start run: its loss curve is its log
        return None
    success = [r["task_success"] if "task_success" in r else r["reward"]["total"] for r in records]
    return {"informative": sum(1 - r["zero_variance_groups"] for r in records) / len(records),
            "sampled_tokens": sum(r["new_tokens"] for r in records),
            "train_first10": sum(success[:10]) / len(success[:10]),
            "train_last10": sum(success[-10:]) / len(success[-10:])}


TRAINING = ("informative", "sampled_tokens", "train_first10", "train_last10")


def table(results: dict[str, list[dict]], baseline: str, metrics: tuple[str, ...]) -> tuple[str, dict]:
    """Markdown table and its JSON: per configuration, each metric with its 95% interval, its difference to the
    baseline (paired over held-out items), the plain means of the aggregate metrics, and of each trained run's
    training_summary (blank for the start model and --compare rows)."""
    plain = ["exact_match", "format_rate", "reasoning_words"]
    if "episode" in metrics:   # the episodes' other tau-bench metrics, means over seeds
        plain += [f"episode_{m}" for m in ("pass^1", "pass^2", "pass^4", "turn_limit", "turns")
                  if all(f"episode_{m}" in r["metrics"] for runs in results.values() for r in runs)]
    header = ["configuration", "seeds"] + [f"{m} [95% CI]" for m in metrics] + \
             [f"{m} - {baseline} [95% CI]" for m in metrics] + plain + list(TRAINING)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = {}
    for name, runs in results.items():
        row = {"seeds": len(runs)}
        cells = [name, str(len(runs))]
        for m in metrics:
            row[m] = mean_ci([r[m] for r in runs])
            cells.append(show(*row[m]))
        for m in metrics:
            if name == baseline or baseline not in results:
                cells.append("")
                continue
            row[f"{m}_minus_baseline"] = difference_ci([r[m] for r in runs], [r[m] for r in results[baseline]])
            cells.append(show(*row[f"{m}_minus_baseline"], signed=True))
        for m in plain:
            row[m] = sum(r["metrics"][m] for r in runs) / len(runs)
            cells.append(f"{row[m]:.3f}" if m != "reasoning_words" else f"{row[m]:.1f}")
        for m in TRAINING:
            trained = [r["training"][m] for r in runs if r.get("training")]
            row[m] = sum(trained) / len(trained) if trained else None
            cells.append("" if row[m] is None else f"{row[m]:,.0f}" if m == "sampled_tokens" else f"{row[m]:.3f}")
        rows[name] = row
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, grpo_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description="GRPO (or cold-start) configurations x seeds from one start model, one "
                                "table with 95% intervals. Flags after -- go to every training run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=STAGES, default="grpo", help="what each configuration trains: GRPO, or a "
                   "cold start (sft.py --mode cold-start) from a base SFT model")
    p.add_argument("--model", required=True, help="the start model of every run (a cold-start model; with --stage "
                   "cold-start a base SFT model)")
    p.add_argument("--data", default="demo:train", help="training data (with --stage cold-start: the cold-start set)")
    p.add_argument("--split", choices=["test", "val"], default="test", help="the work every model is evaluated on: "
                   "test (held-out users: to report) or val (the training users' validation conversations and "
                   "episode tasks: to choose a configuration on); val's evaluations and table are written beside "
                   "test's with a _val suffix")
    p.add_argument("--eval-data", help="the turn samples; when not given, demo:test (with --split val demo:val)")
    p.add_argument("--limit", type=int, help="evaluate the first N held-out turns only")
    p.add_argument("--max-new-tokens", type=int, help="evaluation: tokens per completion at most (default: "
                   "eval.SCALE_DEFAULTS)")
    p.add_argument("--out", required=True, help="one directory per configuration and seed, and the table")
    p.add_argument("--configs", nargs="+", default=["paper"], help="reward designs, refill, or NAME=FLAGS")
    p.add_argument("--baseline", help="the row the differences are taken against (default: the first configuration; "
                   "`start` for the start model)")
    p.add_argument("--grid", nargs="+", default=[], metavar="FLAG=V1,V2", help="add every combination of these "
                   "grpo.py flags' values (e.g. w-tool=0.3,0.9 w-efficiency=0,0.3)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=MODEL", help="more rows: these models "
                   "evaluated as they are (e.g. base_sft=runs/sft); MODEL@off / @on: with thinking off / on")
    p.add_argument("--episodes", type=int, default=0, metavar="N", help="also N tasks of whole conversations "
                   "(episodes.py) per model, --trials each")
    p.add_argument("--trials", type=int, default=2, help="episodes: trials per task")
    p.add_argument("--seed", type=int, default=0, help="episodes: tasks and sampling")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", help="evaluation compute precision (model.PRECISIONS)")
    args = p.parse_args(ours)
    args.grpo_flags = grpo_flags
    args.eval_data = args.eval_data or f"demo:{args.split}"

    def body():
        configs = [config_flags(c) for c in args.configs] + grid_configs(args.grid)
        names = [n for n, _ in configs]
        if len(set(names)) < len(names):
            raise BadInput(f"--configs: a configuration is named twice ({', '.join(names)})")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        samples = load_turn_samples(resolve_data(args.eval_data))[0][:args.limit]
        tasks = load_tasks(str(args.episodes), args.seed, args.split) if args.episodes else []
        suffix = "" if args.split == "test" else f"_{args.split}"   # test's files keep their names
        results = {"start": [evaluate_run(args.model, out / f"start{suffix}.json", samples, tasks, args)]}
        for entry in args.compare:
            name, sep, model_dir = entry.partition("=")
            if not sep or name in names or name == "start":
                raise BadInput(f"--compare {entry!r}: expected NAME=MODEL with a new NAME")
            model_dir, _, mode = model_dir.partition("@")
            if mode not in ("", "on", "off"):
                raise BadInput(f"--compare {entry!r}: after @ comes on or off (the prompt's thinking mode)")
            thinking = None if not mode else mode == "on"
            results[name] = [evaluate_run(model_dir, out / f"{name}{suffix}.json", samples, tasks, args, thinking)]
        results.update({name: [] for name in names})
        for seed in args.seeds:   # seed by seed: a run cut short still has every configuration at its first seeds
            for name, flags in configs:
                run_dir = out / name / f"seed{seed}"
                train(run_dir, args, flags, seed)
                result = evaluate_run(str(run_dir), run_dir / f"eval{suffix}.json", samples, tasks, args)
                results[name].append({**result, "training": training_summary(run_dir)})
        metrics = METRICS + (("episode", "violations") if tasks else ())
        baseline = args.baseline or names[0]
        if baseline not in results:
            raise BadInput(f"--baseline {baseline}: not a row ({', '.join(results)})")
        text, rows = table(results, baseline, metrics)
        command = "python experiment.py " + shlex.join(argv)
        (out / f"table{suffix}.md").write_text(f"{command}\n\n{text}\n")
        write_json_atomic(out / f"table{suffix}.json", {"command": command, "rows": rows})
        print(text)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
