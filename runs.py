"""A training run's life, the same for every stage: everything but the algorithm.

    run = Run(args, "grpo", progress=("reward.total", "kl"))    # OUT/, OUT/args.json, the seed
    model, tokenizer = load_for_training(args)                   # fp32 weights, LoRA, checkpointing
    ...optimizer, scheduler, evaluator...
    for step in range(run.start(total, model, tokenizer, optimizer, scheduler, evaluator), total):
        record = grpo_step(...)             # the algorithm: one optimizer update and what it measured
        if run.end_step(step + 1, record):  # NaN guard, log, eval and save cadence, time budget
            break
    return run.finish()                     # OUT becomes the model (LoRA merged, adapter beside it)

The output directory of a run: args.json (its arguments; `--resume OUT` reads them back and
`model.trained_as` tells later stages what the run trained), log.jsonl (one JSON line a step),
checkpoint (a symlink to the last complete checkpoint directory, swapped in one atomic rename every
--save-every steps and when SIGTERM / SIGINT stops the run), and at the end the model itself. A resumed run
restores the checkpoint and drops the log lines of the steps after it, so it ends exactly as an uninterrupted
run would. Under torchrun (parallel.py) every rank runs this same life; rank 0 alone writes the log, evaluates and
saves, and the ranks decide together when to stop (a signal or the time budget seen by one stops all).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import parallel
from cli import BadInput, Stopped
from lora import inject_lora, load_adapter, lora_layers, merge_lora, save_adapter, store_bases
from model import PRECISIONS, is_tiny, load, resolve_precision, save, staging_dir, trained_as

ROLLOUTS = "rollouts.jsonl"   # grpo.py --log-rollouts: the sampled groups of a step (rollouts.py shows them)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------
def resume_args(args: argparse.Namespace) -> argparse.Namespace:
    """With --resume OUT, the run's own saved arguments (OUT/args.json), pointed back at OUT."""
    if not args.resume:
        return args
    saved = trained_as(args.resume)
    if not saved:
        raise BadInput(f"{Path(args.resume, 'args.json')}: missing; --resume takes the --out directory of an "
                       f"earlier run")
    return argparse.Namespace(**{**vars(args), **saved, "resume": args.resume, "out": args.resume})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every flag's default; a flag whose default depends on the model's scale (None until
    resolve_defaults fills it) says both in its own help (scale_help)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def scale_help(table: dict[str, tuple], flag: str) -> str:
    """'(default: <tiny> tiny, <real> real)' for a flag of a stage's SCALE_DEFAULTS."""
    tiny, real = table[flag]
    return f"(default: {tiny} tiny, {real} real)"


def add_run_arguments(p: argparse.ArgumentParser, out: str, save_every: int) -> dict[str, argparse._ArgumentGroup]:
    """The flags every training stage shares, in three groups a stage adds its own flags to: optimisation (LoRA,
    gradient clipping), run (where the run goes, its budget and cadences, evaluation, the seed) and advanced (the
    device, precision and checkpointing). Returns the groups by name."""
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lora-rank", type=int, default=None, help="LoRA rank; 0 = full fine-tuning (default: 0 tiny, "
                     "16 real)")
    opt.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale alpha (the update is alpha/r BA)")
    opt.add_argument("--lora-dropout", type=float, default=0.0)
    opt.add_argument("--max-grad-norm", "--clip", dest="max_grad_norm", type=float, default=1.0,
                     help="clip the gradient to this global L2 norm (--clip: the same flag)")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=out, help="output directory (a valid --model when done)")
    run.add_argument("--resume", metavar="OUT", help="continue the run whose --out was OUT from its last checkpoint")
    run.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much training time "
                     "(the result then depends on the machine's speed and load: a step budget reproduces)")
    run.add_argument("--eval-data", help="held-out turn samples, evaluated at step 0, every --eval-every steps and at "
                     "the end")
    run.add_argument("--eval-every", type=int, default=0)
    run.add_argument("--eval-limit", type=int, default=200, help="held-out samples per evaluation")
    run.add_argument("--save-every", type=int, default=save_every, help="checkpoint every N optimizer steps")
    run.add_argument("--seed", type=int, default=0)
    advanced = p.add_argument_group("advanced")
    advanced.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    advanced.add_argument("--precision", choices=PRECISIONS, default="auto", help="compute precision of every forward "
                          "pass (autocast); weights stay fp32 (auto: bf16 on a GPU, and on a CPU with bf16 hardware "
                          "for a real model; fp32 otherwise)")
    advanced.add_argument("--grad-checkpointing", choices=["auto", "on", "off"], default="auto", help="recompute "
                          "each decoder layer's activations in backward instead of keeping them (auto: on on a GPU)")
    return {"optimisation": opt, "run": run, "advanced": advanced}


def scale_defaults(args: argparse.Namespace, table: dict[str, tuple]) -> dict[str, object]:
    """Fill each flag of `table` left unset (None) with its (tiny model, real model) default for --model's scale;
    returns what was filled."""
    real = not is_tiny(args.model)
    filled = {flag: pair[real] for flag, pair in table.items() if getattr(args, flag) is None}
    vars(args).update(filled)
    return filled


def resolve_defaults(args: argparse.Namespace, table: dict[str, tuple], lr: dict[str, float]) -> argparse.Namespace:
    """The defaults a stage leaves open, printed at start: the scale-dependent flags of `table` (LoRA for real
    models, full fine-tuning for tiny ones, lengths and batch sizes); the learning rate from lr = {"tiny": full
    fine-tuning of a tiny model, "lora": LoRA, "full": full fine-tuning of a real model}; precision and gradient
    checkpointing for --device."""
    filled = scale_defaults(args, table)
    if args.lr is None:
        args.lr = filled["lr"] = lr["lora"] if args.lora_rank else lr["tiny" if is_tiny(args.model) else "full"]
    args.precision = resolve_precision(args.precision, args.device, args.model)
    if args.grad_checkpointing == "auto":
        args.grad_checkpointing = "on" if torch.device(args.device).type == "cuda" else "off"
    scale = "tiny" if is_tiny(args.model) else "real"
    print(f"defaults for a {scale} model: " + "".join(f"--{k.replace('_', '-')} {v}, " for k, v in filled.items())
          + f"--precision {args.precision}, --grad-checkpointing {args.grad_checkpointing}", file=sys.stderr)
    return args


# ----------------------------------------------------------------------------------------------
# Model, precision, optimizer
# ----------------------------------------------------------------------------------------------
def load_for_training(args: argparse.Namespace):
    """(model, tokenizer) of --model on --device, ready to train: fp32 weights (bf16 is only a compute precision,
    see model.autocast), LoRA adapters under --lora-rank (under bf16, each frozen base layer stored in bf16 where
    that loses nothing: the same bits, lora.store_bases), and gradient checkpointing under --grad-checkpointing
    (activations dominate memory on a real model; each decoder layer's are recomputed in backward)."""
    model, tokenizer = load(args.model, dtype=torch.float32, device=args.device)
    if args.lora_rank:
        inject_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
        if args.precision == "bf16":
            stored = store_bases(model, torch.bfloat16)
            print(f"LoRA: {stored} of {len(lora_layers(model))} frozen base layers stored in bf16 (those whose "
                  f"weights are bf16 values: the same bits, half the bytes)", file=sys.stderr)
    if args.grad_checkpointing == "on":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    parallel.same_start(model)
    model.train()
    return model, tokenizer


def linear_warmup(warmup: int) -> Callable[[int], float]:
    """lr multiplier: linear 0 -> 1 over `warmup` optimizer updates, then constant 1."""
    return lambda step: (step + 1) / warmup if step < warmup else 1.0


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.1) -> Callable[[int], float]:
    """lr multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> min_ratio at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def optimizer_step(optimizer, scheduler, params: list[torch.nn.Parameter], max_grad_norm: float, loss: float
                   ) -> tuple[float, bool]:
    """Sum the accumulated gradient over the ranks (parallel.py; nothing in one process), clip it to max_grad_norm
    and take the step, unless the loss (of the whole batch) or the gradient is not finite: then the update is
    dropped (the weights stay good) and the caller's record says finite=False. Returns (gradient norm before
    clipping, finite)."""
    parallel.sum_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
        scheduler.step()   # the schedule counts optimizer updates
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), finite


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
@contextmanager
def swapped_dir(link: Path):
    """Yield a fresh directory beside `link`; once it is complete, `link` (a symlink) points to it in one atomic
    rename, and the directory it pointed to before is removed. At every moment `link` names a complete directory
    (or nothing, before the first), whenever the process is killed: a kill while writing leaves a hidden
    half-written directory, removed by the next swap, and the old one in place."""
    with staging_dir(link) as new:
        yield new
    if link.is_dir() and not link.is_symlink():   # a checkpoint of the layout before this one: set it aside once
        os.replace(link, link.with_name(f".{link.name}.before"))
    pointer = link.with_name(f".{link.name}.link")
    pointer.unlink(missing_ok=True)
    os.symlink(new.name, pointer)   # relative: the run directory can be moved
    os.replace(pointer, link)       # the one atomic step
    for stale in link.parent.glob(f".{link.name}.*"):   # the previous checkpoint, and any half-written one
        if stale.is_dir() and not stale.is_symlink() and stale != new:
            shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(ckpt_dir: str | Path, model, tokenizer, optimizer, scheduler, state: dict,
                    base_model: str) -> None:
    """A resumable training checkpoint, written atomically: weights (only the adapter under LoRA),
    optimizer moments and RNG in safetensors, step / schedule / data position in state.json. No pickle."""
    sd = optimizer.state_dict()
    tensors = {f"opt.{i}.{k}": v.contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with swapped_dir(Path(ckpt_dir)) as tmp:
        if lora_layers(model):
            save_adapter(model, tmp / "adapter", base_model=base_model)
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "training_state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "param_groups": sd["param_groups"],
                                                    "scheduler": scheduler.state_dict()}, indent=1))


def load_full_weights(ckpt_dir: Path, model) -> None:
    """Every weight of a full fine-tuning checkpoint, from model.safetensors or from the shards its index names
    (save_pretrained shards a large model: model-0000k-of-0000n.safetensors + model.safetensors.index.json). A weight
    of the model in none of them, or one the model lacks, is an error: left at its initial value it would resume
    another run. Tied weights (the LM head of tie_word_embeddings) are saved once and tied again."""
    index = ckpt_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for name in files:
        if not (ckpt_dir / name).exists():
            raise BadInput(f"{ckpt_dir / name}: missing; the checkpoint is incomplete")
        state.update(load_file(str(ckpt_dir / name)))
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if getattr(model.config, "tie_word_embeddings",
                                                                            False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise BadInput(f"{ckpt_dir}: the checkpoint does not match the model: missing {missing[:5]}, unexpected "
                       f"{result.unexpected_keys[:5]}")
    if tied:
        model.tie_weights()


def load_checkpoint(ckpt_dir: str | Path, model, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote into an already built model / optimizer / scheduler."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "adapter").is_dir():
        load_adapter(model, ckpt_dir / "adapter")
    else:
        load_full_weights(ckpt_dir, model)
    state = json.loads((ckpt_dir / "state.json").read_text())
    tensors = load_file(str(ckpt_dir / "training_state.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def lookup(record: dict, dotted: str):
    """record["a"]["b"] for "a.b" (None where a key is missing)."""
    for key in dotted.split("."):
        record = record.get(key) if isinstance(record, dict) else None
    return record


class Run:
    """The bookkeeping of one training run, around a loop the stage writes itself (see the module docstring).

    Every step's record gains "step" and "train_seconds" (training time so far: the steps alone, without
    evaluation or checkpoint writing); --max-minutes compares against the latter. stop_after=k simulates a
    kill right after step k: its checkpoints are written, the final save is not.
    """

    def __init__(self, args: argparse.Namespace, desc: str, progress: tuple[str, ...], stop_after: int | None = None):
        self.args, self.desc, self.progress, self.stop_after = args, desc, progress, stop_after
        device = parallel.start()   # under torchrun: join the process group (each rank its own GPU)
        if device is not None:
            args.device = str(device)
        self.main = parallel.is_main()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.main:
            (self.out / "args.json").write_text(json.dumps(vars(args), indent=1))
        torch.manual_seed(args.seed)
        self.state = {"step": 0, "train_seconds": 0.0}
        self.killed = False

    def start(self, total_steps: int, model, tokenizer, optimizer, scheduler, evaluator: Callable | None = None
              ) -> int:
        """Restore the last checkpoint under --resume (and drop the log lines after it), evaluate the starting
        model at step 0 of a fresh run, open the log and the progress bar. Returns the first step to run."""
        self.total, self.model, self.tokenizer = total_steps, model, tokenizer
        self.optimizer, self.scheduler = optimizer, scheduler
        self.evaluator = evaluator
        ckpt, log_path = self.out / "checkpoint", self.out / "log.jsonl"
        if self.args.resume:
            if not (ckpt / "state.json").exists():
                raise BadInput(f"{ckpt}: no checkpoint to resume from (the run stopped before its first save); run "
                               f"it again without --resume to start over")
            self.state = load_checkpoint(ckpt, model, optimizer, scheduler)
            for path in (log_path, self.out / ROLLOUTS) if self.main else ():   # the steps after it run again
                if path.exists():
                    kept = [line for line in path.read_text().splitlines()
                            if json.loads(line)["step"] <= self.state["step"]]
                    path.write_text("".join(line + "\n" for line in kept))
            print(f"resumed from {ckpt} at step {self.state['step']}", file=sys.stderr)
        self.log = log_path.open("a") if self.main else None
        if evaluator and self.state["step"] == 0 and self.main:
            self.write({"step": 0, "eval": evaluator(model)})
        self.bar = tqdm(total=self.total, initial=self.state["step"], desc=self.desc, dynamic_ncols=True,
                        disable=not self.main)
        self.stop_signal = None
        self.previous_handlers = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.clock = time.perf_counter()
        return self.state["step"]

    def on_signal(self, signum: int, frame) -> None:
        """SIGTERM / SIGINT (preemption, Ctrl-C): finish the step, checkpoint, stop. A second one stops at once."""
        if self.stop_signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint (send it again to "
              f"stop at once)", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)

    def write(self, record: dict) -> None:
        if self.log:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def write_rollouts(self, step: int, groups: list[dict]) -> None:
        """Append step `step`'s groups to OUT/rollouts.jsonl, one line each (rank 0)."""
        if not self.main:
            return
        with (self.out / ROLLOUTS).open("a") as f:
            f.writelines(json.dumps({"step": step, **group}) + "\n" for group in groups)

    def end_step(self, step: int, record: dict) -> bool:
        """Book step `step` (1-based): stop on a non-finite update, log the record (with held-out metrics on
        the eval cadence and at the end), checkpoint on the save cadence. Returns True when the loop ends:
        the last step, the time budget spent, or the simulated kill."""
        self.state["step"] = step
        self.state["train_seconds"] += time.perf_counter() - self.clock
        record = {"step": step, **record, "train_seconds": round(self.state["train_seconds"], 2)}
        if not record["finite"]:   # the update was not applied; the last checkpoint is still good
            self.write(record)
            self.close()
            raise FloatingPointError(f"loss or gradient is not finite at step {step}; the update was not applied "
                                     f"and the last good checkpoint is in {self.out / 'checkpoint'}")
        args = self.args
        over_time = bool(args.max_minutes and self.state["train_seconds"] > 60 * args.max_minutes)
        done = step == self.total or parallel.any_rank(over_time)
        stopping = parallel.any_rank(self.stop_signal is not None)
        if self.evaluator and self.main and (done or (args.eval_every and step % args.eval_every == 0)):
            record["eval"] = self.evaluator(self.model)
        self.write(record)
        self.bar.set_postfix({key: f"{lookup(record, key):.4g}" for key in self.progress})
        self.bar.update(1)
        if not done and (step % args.save_every == 0 or stopping):
            if self.main:
                save_checkpoint(self.out / "checkpoint", self.model, self.tokenizer, self.optimizer, self.scheduler,
                                self.state, base_model=self.args.model)
            parallel.barrier()   # no rank exits (and has torchrun stop the others) while rank 0 writes
        if not done and stopping:
            self.stop_signal = self.stop_signal or signal.SIGTERM   # a signal another rank received
            self.close()
            raise Stopped(f"{signal.Signals(self.stop_signal).name} after step {step}, checkpoint written; continue "
                          f"with: python {self.desc.split()[0]}.py --resume {self.out}", self.stop_signal)
        self.killed = not done and self.stop_after is not None and step >= self.stop_after
        self.clock = time.perf_counter()
        return done or self.killed

    def finish(self) -> Path | None:
        """Save the final model: OUT becomes a valid --model in fp32 (LoRA merged; the adapter beside it in OUT/adapter,
        PEFT's format, for PEFT or vLLM on top of --model; the run's args.json and log.jsonl). None after a
        simulated kill."""
        self.close()
        if self.killed or not self.main:
            parallel.barrier()
            parallel.stop()
            return None
        model, out = self.model, self.out
        extra = {name: out / name for name in ("log.jsonl", "args.json", ROLLOUTS) if (out / name).exists()}
        if lora_layers(model):
            save_adapter(model, out / "adapter", base_model=self.args.model)
            extra["adapter"] = out / "adapter"
            merge_lora(model)   # in fp32: the weights hold the whole update (see model.autocast)
        model.eval()
        path = save(model, self.tokenizer, out, extra)
        parallel.barrier()
        parallel.stop()
        return path
