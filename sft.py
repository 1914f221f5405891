"""Supervised fine-tuning: base SFT (stage 1), cold-start reasoning SFT (stage 2), and pretraining.

    python sft.py --mode base       --model tiny       --data D/retail_train.json      --out runs/sft
    python sft.py --mode cold-start --model runs/sft   --data D/retail_cold_start.json --out runs/cold
    python sft.py --mode pretrain   --model tiny-random --data demo:pretrain-stream     --out assets/tiny

Masked loss (stage 1 and 2): one turn sample = context + reference action; only the action's tokens
(through the closing <|im_end|>) are supervised:

    L = - (1 / N) * sum_{t in S} log p_theta(x_t | x_<t),   S = target positions of the batch, N = |S|

The target span comes from the tokenizer's own chat template: render the context with
add_generation_prompt=True (the prompt) and context + action (the full text); the prompt must be a
prefix of the full text, and the rest, up to <|im_end|>, is the target. Prompt and target are
tokenised separately, exactly as the prompt is tokenised at inference.
  base:       thinking off; Qwen3 appends an empty <think>\\n\\n</think>\\n\\n to the *prompt*, the target
              is the action alone (never supervise an empty think block the model will not generate).
  cold-start: thinking on; the target is <think>\\n{reasoning}\\n</think>\\n\\n{action}. The set must hold
              fewer than 100 reasoning-annotated turns (the method's point) unless --allow-large-cold-start.
              Its contexts carry no earlier reasoning (data.load_turn_samples drops it, as GRPO and evaluation
              contexts carry none), and each epoch mixes in --replay-ratio no-thinking base SFT samples per
              reasoning sample, so that learning to think from a few examples does not erase the action policy
              of stage 1.
  pretrain:   loss on every token of whole conversations (builds the tiny base from tiny-random).

A micro-batch keeps each conversation's turn samples together and packs them into prefix-tree rows (packing.py):
sample k + 1 of a conversation repeats sample k's history, so its shared tokens are computed once. Each sample's
loss is that of the sample alone (tests/test_sft.py); on the demo world a step computes half the tokens.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import parallel
from cli import run_cli
from data import (MAX_COLD_START_TURNS, DataError, TurnSample, convert_record, load_turn_samples, read_records,
                  render_prompt, resolve_data)
from eval import held_out_evaluator
from model import autocast, load, trained_as
from packing import Packed, hidden_states, pack, tree_size
from pretrain_worlds import pretrain_stream
from runs import (HelpFormatter, Run, add_run_arguments, load_for_training, optimizer_step, resolve_defaults,
                  resume_args, scale_help, warmup_cosine)

IGNORE = -100
PRETRAIN_STREAM = "demo:pretrain-stream"
DEFAULT_DATA = {"base": "demo:train", "cold-start": "demo:cold_start", "pretrain": PRETRAIN_STREAM}
# Peak learning rate when --lr is not given: full fine-tuning of a tiny model learns fast at 1e-3; LoRA on a real
# model at 2e-4 and full fine-tuning of a real model at 1e-5 are the usual SFT rates for models of 1-8 B.
LR_DEFAULTS = {"tiny": 1e-3, "lora": 2e-4, "full": 1e-5}
# Defaults that depend on the model's scale, (tiny model, real model), for flags left unset. A real model gets
# LoRA r16 (full fine-tuning of 1.7 B needs ~4x the memory), whole APIGen-MT contexts (policy + tool schemas +
# history reach 4k tokens), and 4 sequences per micro-batch x 8 accumulated = 32 per update (the tiny model's
# 16 fit in one micro-batch). row_tokens bounds a packed row of a micro-batch (collate): 512 holds a demo-world
# conversation's turn samples under the tiny tokenizer (their prefix tree: 296 tokens on average); a real
# model's conversation alone is ~1,100 (SmolLM2) to 4k tokens, so its rows hold 4,096, enough for several
# conversations to share their system prompt and tool schemas.
SCALE_DEFAULTS = {"lora_rank": (0, 16), "max_len": (1024, 4096), "batch_size": (16, 4), "grad_accum": (1, 8),
                  "row_tokens": (512, 4096)}


# ----------------------------------------------------------------------------------------------
# Encoding: turn samples -> (input_ids, labels)
# ----------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    conversation: str = ""     # the turn samples of one conversation share its history (packing.py)


def target_text(tokenizer, sample: TurnSample, thinking: bool, prompt: str, where: str = "") -> str:
    """The supervised text: what the template puts after the prompt (render_prompt's text) for this action,
    through <|im_end|>."""
    action = sample.target if thinking else type(sample.target)(sample.target.content, sample.target.tool_calls)
    full = tokenizer.apply_chat_template(sample.chat() + [action.message()], tools=sample.template_tools(),
                                         tokenize=False, enable_thinking=thinking)
    if not full.startswith(prompt):
        raise DataError(f"{where or sample.conversation_id}: the chat template's generation prompt is not a "
                        f"prefix of the rendered conversation, so the target span is undefined")
    end = full.find(tokenizer.eos_token, len(prompt))
    if end < 0:
        raise DataError(f"{where or sample.conversation_id}: no {tokenizer.eos_token} after the target")
    return full[len(prompt):end + len(tokenizer.eos_token)]


def encode_turn(tokenizer, sample: TurnSample, thinking: bool, max_len: int, where: str = "") -> Encoded | None:
    """Prompt tokens get label -100, target tokens are their own labels. A sample longer than max_len (prompt +
    target) gives None and is skipped: cutting its prompt would drop the system prompt and tool schemas, a
    context the model never sees in GRPO (which leaves such prompts out) or in evaluation (which keeps them)."""
    text = render_prompt(tokenizer, sample, thinking)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]   # as data.prompt_ids tokenises it at inference
    target = tokenizer(target_text(tokenizer, sample, thinking, text, where), add_special_tokens=False)["input_ids"]
    if len(prompt) + len(target) > max_len:
        return None
    return Encoded(prompt + target, [IGNORE] * len(prompt) + target, sample.conversation_id)


def encode_whole(tokenizer, record: dict, max_len: int, where: str = "stream") -> Encoded:
    """Pretraining: a whole conversation, every token supervised."""
    conv = convert_record(record, where, where)
    chat = ([{"role": "system", "content": conv.system}] if conv.system else []) + conv.messages
    tools = [{"type": "function", "function": t} for t in conv.tools] or None
    ids = tokenizer.apply_chat_template(chat, tools=tools, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False)["input_ids"][:max_len]
    return Encoded(ids, list(ids), where)


@dataclass
class SFTBatch:
    packed: Packed             # the micro-batch's sequences in prefix-tree rows
    predictors: torch.Tensor   # [N]: flat index of the node before each supervised token (it predicts the token)
    targets: torch.Tensor      # [N]: the supervised tokens

    def to(self, device) -> "SFTBatch":
        return SFTBatch(self.packed.to(device), self.predictors.to(device), self.targets.to(device))


def collate(batch: list[Encoded], pad_id: int, share: bool = True,
            row_tokens: int = SCALE_DEFAULTS["row_tokens"][0]) -> SFTBatch:
    """The micro-batch packed into prefix-tree rows (packing.py): each conversation's turn samples in one row, where
    they share its history; conversations first fit, largest first, into rows of row_tokens tokens (a larger one
    alone), where they share the system prompt and tool schemas. share=False: a row per sample (a padded batch)."""
    rows = pack_rows(batch, row_tokens) if share else [[e] for e in batch]
    packed = pack([[e.input_ids for e in row] for row in rows], pad_id)
    predictors, targets = [], []
    for e, nodes in zip((e for row in rows for e in row), packed.nodes):
        supervised = [t for t in range(1, len(e.labels)) if e.labels[t] != IGNORE]
        predictors += [nodes[t - 1] for t in supervised]   # position t - 1 predicts token t
        targets += [e.labels[t] for t in supervised]
    return SFTBatch(packed, torch.tensor(predictors, dtype=torch.long), torch.tensor(targets, dtype=torch.long))


def pack_rows(batch: list[Encoded], row_tokens: int) -> list[list[Encoded]]:
    """The batch's conversations, first fit, largest prefix tree first, into rows of row_tokens tree nodes, each
    conversation counted at its own tree's size (an upper bound: what it shares with the row is not subtracted)."""
    sized = sorted(((tree_size([e.input_ids for e in c]), c) for c in conversations_of(batch)), key=lambda x: -x[0])
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for n, c in sized:
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([]), room.append(max(row_tokens, n))
            r = len(rows) - 1
        rows[r] += c
        room[r] -= n
    return rows


def conversations_of(encoded: list[Encoded]) -> list[list[Encoded]]:
    """The samples grouped by conversation, each group and the groups in order of first appearance."""
    groups: dict[str, list[Encoded]] = {}
    for e in encoded:
        groups.setdefault(e.conversation, []).append(e)
    return list(groups.values())


def conversation_batches(encoded: list[Encoded], batch_size: int, seed: int, epoch: int) -> list[list[Encoded]]:
    """Micro-batches of batch_size samples that keep a conversation's turn samples together (to share their
    history): the conversations in a seeded random order per epoch, each one's samples in turn, cut every
    batch_size samples."""
    conversations = conversations_of(encoded)
    random.Random(seed * 1000 + epoch).shuffle(conversations)
    order = [e for c in conversations for e in c]
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------------------------
# Loss and schedule
# ----------------------------------------------------------------------------------------------
def masked_token_nll(model, batch: SFTBatch) -> tuple[torch.Tensor, int]:
    """sum_{t in S} -log p(x_t | x_<t) and |S|, S = the supervised positions of the batch's sequences.

    Logits are computed only at supervised positions: the hidden states are gathered before the LM head.
    """
    hidden = hidden_states(model, batch.packed, batch.predictors)
    logits = model.get_output_embeddings()(hidden).float()
    return F.cross_entropy(logits, batch.targets, reduction="sum"), len(batch.targets)


def sft_step(model, optimizer, scheduler, params: list[torch.nn.Parameter], batches: list[SFTBatch],
             max_grad_norm: float, precision: str) -> dict:
    """One optimizer update over the micro-batches of a step (gradient accumulation): the loss is the mean NLL
    over every supervised token of all of them, so accumulation equals one big batch; then clip the gradient to
    max_grad_norm and step.
    Under torchrun each rank backpropagates micro-batches rank, rank + world, ... (parallel.py) with the same
    normaliser, the token count of all of them, and optimizer_step sums the gradients: the update of one process."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    n_tokens = sum(len(b.targets) for b in batches)
    loss_sum = 0.0
    for b in batches[parallel.rank()::parallel.world()]:
        with autocast(precision, device):
            nll, _ = masked_token_nll(model, b.to(device))
        (nll / n_tokens).backward()
        loss_sum += nll.item()
    loss_sum = parallel.all_sum(loss_sum)
    lr = scheduler.get_last_lr()[0]
    grad_norm, finite = optimizer_step(optimizer, scheduler, params, max_grad_norm, loss_sum)
    seen = sum(b.packed.n_sequence_tokens for b in batches)   # the sequences' tokens, before sharing
    return {"loss": loss_sum / n_tokens, "grad_norm": grad_norm, "lr": lr,
            "tokens_per_s": seen / (time.perf_counter() - t0), "finite": finite}


# ----------------------------------------------------------------------------------------------
# Data for a run
# ----------------------------------------------------------------------------------------------
def load_encoded(args, tokenizer, limit: int | None = None) -> list[Encoded]:
    """The training sequences of a finite data file for this mode (the first `limit` of them)."""
    if args.mode == "pretrain":
        name = Path(args.data).name
        return [encode_whole(tokenizer, r, args.max_len, f"{name}: record {i}")
                for i, r in enumerate(read_records(args.data)[:limit])]
    samples, skipped = load_turn_samples(args.data, args.skip_bad)
    for err in skipped:
        print(f"skipped: {err}", file=sys.stderr)
    if args.mode == "cold-start":
        with_reasoning = [s for s in samples if s.target.reasoning is not None]
        if len(with_reasoning) > MAX_COLD_START_TURNS and not args.allow_large_cold_start:
            raise DataError(f"{Path(args.data).name}: {len(with_reasoning)} reasoning-annotated turns; the cold "
                            f"start uses fewer than 100 (pass --allow-large-cold-start to train on them anyway)")
        samples = with_reasoning
    if not samples:
        raise DataError(f"{Path(args.data).name}: no usable turn samples for mode {args.mode}")
    encoded = [encode_turn(tokenizer, s, args.mode == "cold-start", args.max_len, f"{Path(args.data).name}: "
                           f"sample {i} ({s.conversation_id})") for i, s in enumerate(samples[:limit])]
    if None in encoded:
        print(f"skipped {encoded.count(None)} of {len(encoded)} samples longer than --max-len {args.max_len} tokens "
              f"(prompt + target)", file=sys.stderr)
    return [e for e in encoded if e is not None]


def base_sft_data(model: str) -> str:
    """The training data of the base SFT run of this script that wrote `model`: what the cold start replays."""
    run = trained_as(model)
    if run.get("mode") != "base":
        raise DataError(f"--replay-data: not given, and {model} is not a base SFT output of sft.py (no args.json "
                        f"with mode 'base'); pass the base SFT data file, or --replay-ratio 0")
    return run["data"]


def replays(args) -> bool:
    """Whether this run mixes base SFT samples into its epochs: a cold start with a nonzero --replay-ratio."""
    return args.mode == "cold-start" and bool(args.replay_ratio)


def replay_samples(args) -> list[TurnSample]:
    """The turn samples of the base SFT data, replayed without thinking (none unless the run replays)."""
    if not replays(args):
        return []
    samples, _ = load_turn_samples(args.replay_data, args.skip_bad)
    return samples


class BatchSource:
    """Micro-batch number k of the run, deterministic in (seed, k): resumable at any k."""

    def __init__(self, args, tokenizer):
        self.args, self.tokenizer = args, tokenizer
        if args.data == PRETRAIN_STREAM:
            self.stream, self.position = pretrain_stream(args.seed), 0
        else:
            self.stream, self.encoded = None, load_encoded(args, tokenizer)
            self.replay, self.replay_cache = replay_samples(args), {}
            self.n_replay = min(len(self.replay), round(args.replay_ratio * len(self.encoded)))
            self.per_epoch = math.ceil((len(self.encoded) + self.n_replay) / args.batch_size)
            self.epoch, self.batches = -1, []

    def steps_per_epoch(self) -> int | None:
        return None if self.stream else math.ceil(self.per_epoch / self.args.grad_accum)

    def replayed(self, epoch: int) -> list[Encoded]:
        """This epoch's fresh draw of n_replay no-thinking base SFT samples (encoded as in base mode); a sample
        whose target exceeds --max-len is passed over for the next one, so every epoch has the same size."""
        rng = random.Random(f"replay {self.args.seed} {epoch}")
        drawn = rng.sample(range(len(self.replay)), self.n_replay)
        spare = sorted(set(range(len(self.replay))) - set(drawn))
        rng.shuffle(spare)  # stand-ins, in random order, for drawn samples that are too long
        encoded = (self.replay_encoded(i) for i in drawn + spare)
        return list(itertools.islice((e for e in encoded if e is not None), self.n_replay))

    def replay_encoded(self, i: int) -> Encoded | None:
        """Replay sample i encoded as in base mode, once per run (a sample recurs in many epochs' draws)."""
        if i not in self.replay_cache:
            self.replay_cache[i] = encode_turn(self.tokenizer, self.replay[i], False, self.args.max_len)
        return self.replay_cache[i]

    def batch(self, k: int) -> list[Encoded]:
        if self.stream:
            skip = k * self.args.batch_size - self.position  # only forward: resuming skips ahead once
            records = list(itertools.islice(self.stream, skip, skip + self.args.batch_size))
            self.position = (k + 1) * self.args.batch_size
            return [encode_whole(self.tokenizer, r, self.args.max_len, f"stream record {k * self.args.batch_size + i}")
                    for i, r in enumerate(records)]
        epoch, index = divmod(k, self.per_epoch)
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, conversation_batches(self.encoded + self.replayed(epoch),
                                                                  self.args.batch_size, self.args.seed, epoch)
        return self.batches[index]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Base SFT, cold-start reasoning SFT, or pretraining (loss on all tokens).",
                                formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--mode", choices=["base", "cold-start", "pretrain"], default="base")
    data.add_argument("--data", help=f"APIGen-MT-5k file (JSON / JSONL), a demo split (demo:train, demo:cold_start), "
                      f"or for pretrain {PRETRAIN_STREAM} (default: the demo split of the mode)")
    data.add_argument("--max-len", type=int, default=None, help="tokens per sequence; longer samples are skipped, "
                      f"with a count {scale_help(SCALE_DEFAULTS, 'max_len')}")
    data.add_argument("--row-tokens", type=int, default=None, help="tree nodes per packed row of a micro-batch: "
                      "conversations that fit together share their system prompt and tools in one row; attention "
                      "costs rows x L^2 " + scale_help(SCALE_DEFAULTS, "row_tokens"))
    data.add_argument("--allow-large-cold-start", action="store_true")
    data.add_argument("--replay-ratio", type=float, default=3.0, help="cold start: no-thinking base SFT samples "
                      "mixed into each epoch per reasoning sample, against forgetting the action policy; 0 = none")
    data.add_argument("--replay-data", help="cold start: the base SFT data to replay (default: the data of the base "
                      "SFT run that produced --model, from its args.json)")
    data.add_argument("--skip-bad", action="store_true", help="skip invalid records instead of failing")
    data.add_argument("--inspect", type=int, metavar="N", default=0,
                      help="print N rendered samples with the supervised span marked, then exit")
    groups = add_run_arguments(p, out="runs/sft", save_every=200)
    opt = groups["optimisation"]
    opt.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {LR_DEFAULTS['tiny']} "
                     f"tiny, {LR_DEFAULTS['lora']} LoRA, {LR_DEFAULTS['full']} full fine-tuning of a real model)")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch "
                     + scale_help(SCALE_DEFAULTS, "batch_size"))
    opt.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step "
                     + scale_help(SCALE_DEFAULTS, "grad_accum"))
    opt.add_argument("--epochs", type=float, default=1.0, help="passes over a finite data file")
    opt.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs; required for "
                     "the pretraining stream)")
    opt.add_argument("--schedule-steps", type=int, default=None, help="length of the warmup + cosine schedule, when "
                     "it differs from the steps run (to reproduce a run that --max-minutes stopped early)")
    opt.add_argument("--warmup", type=int, default=20, help="linear warmup steps before the cosine decay")
    groups["run"].add_argument("--model", default="tiny", help="tiny, tiny-random, a model directory or a hub id")
    return resolve_defaults(resume_args(p.parse_args(argv)), SCALE_DEFAULTS, LR_DEFAULTS)


def inspect_samples(args, tokenizer) -> None:
    encoded = load_encoded(args, tokenizer, limit=args.inspect)
    for i, e in enumerate(encoded):
        pieces, supervised = [], False
        for token, label in zip(e.input_ids, e.labels):
            if (label != IGNORE) != supervised:
                supervised = label != IGNORE
                pieces.append("\u27e6" if supervised else "\u27e7")
            pieces.append(tokenizer.decode([token]))
        if supervised:
            pieces.append("\u27e7")
        n_target = sum(label != IGNORE for label in e.labels)
        print(f"--- sample {i}: {len(e.input_ids)} tokens, {n_target} supervised (between \u27e6 and \u27e7)")
        print("".join(pieces))


def train(args: argparse.Namespace, stop_after: int | None = None) -> Path | None:
    """Train and save (see runs.Run); stop_after=k simulates a kill after step k."""
    run = Run(args, f"sft {args.mode}", progress=("loss", "tokens_per_s"), stop_after=stop_after)
    model, tokenizer = load_for_training(args)
    source = BatchSource(args, tokenizer)
    total = args.max_steps or math.ceil(args.epochs * source.steps_per_epoch())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.warmup, args.schedule_steps or total))
    evaluator = held_out_evaluator(args, tokenizer, thinking=args.mode == "cold-start")
    for step in range(run.start(total, model, tokenizer, optimizer, scheduler, evaluator), total):
        batches = [collate(source.batch(step * args.grad_accum + m), tokenizer.pad_token_id,
                           row_tokens=args.row_tokens) for m in range(args.grad_accum)]
        record = sft_step(model, optimizer, scheduler, params, batches, args.max_grad_norm, args.precision)
        if run.end_step(step + 1, record):
            break
    return run.finish()


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_args(argv)
        args.data = resolve_data(args.data or DEFAULT_DATA[args.mode])
        if replays(args) and not args.inspect:
            args.replay_data = resolve_data(args.replay_data or base_sft_data(args.model))
        if args.inspect:
            inspect_samples(args, load(args.model)[1])
        elif args.data == PRETRAIN_STREAM and not args.max_steps:
            raise DataError("the pretraining stream is endless: pass --max-steps")
        else:
            saved = train(args)
            if saved:
                print(f"saved {saved}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
