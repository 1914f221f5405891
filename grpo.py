"""GRPO with a composite reward (stage 3): think, then act.

    python grpo.py --model runs/cold --data D/retail_train.json --eval-data D/retail_test.json --out runs/grpo
    python grpo.py --model Qwen/Qwen3-1.7B --data apigen-mt_5k.json --out runs/grpo-1.7b     # one GPU, LoRA
    python grpo.py --model runs/cold --episodes 400 --prompts-per-step 4 --out runs/grpo-episodes   # whole conversations

One step (Shao et al. 2024, DeepSeekMath, sec. 4.1; the paper's stage 3), grpo_step's phases in call order:
  1. take B turn samples; sample G completions for each at temperature T           (draw_groups, sampling.generate)
  2. score each completion with the composite reward                                (score_rollout, rewards.py)
  3. advantages relative to the group: A_i = (r_i - mean_g r) / (std_g r + eps)     (group_advantages)
  4. token log-probs of the sampled ids under the old policy and the reference
     policy (LoRA disabled, or a frozen copy under full fine-tuning), each group's
     prompt computed once for its G completions (packing.py)                        (old_and_reference_logprobs)
  5. loss = -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta KL_k3,
     rho = exp(logp - logp_old), masked to the completion through its EOS           (clipped_policy_loss, kl_k3)
  6. aggregate over tokens (grpo / dapo / dr_grpo), backprop, clip, AdamW step      (policy_update, aggregate_loss)
With --episodes the items of phase 1 are tasks and a group is G whole conversations of one (rollout_episodes),
phase 2 is the episode's outcome (episode_reward), and every agent turn of an episode is a row of phases 4-6 with
its episode's advantage, the episode's turns together one sequence of the aggregation (loss_sequences); the rest
is the same code.
With --num-iterations 1 the old policy is the current one: logp_old = logp.detach(), so rho = 1 and the
loss is ~0 while its gradient is -A grad logp (not 0).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import parallel
from cli import run_cli
from data import DataError, TurnSample, action_kind, load_turn_samples, prompt_ids, resolve_data
from episodes import Episode, Task, judged, make_tasks, run_episodes, transcript
from eval import held_out_evaluator
from lora import disable_adapters
from model import (autocast, eos_ids, is_tiny, refresh_sampling_copy, sampling_copy, special_tokens,
                   without_dropout)
from packing import Packed, hidden_states, pack
from rewards import COMPONENTS, DESIGNS, THINK_BUDGETS, Reward, RewardWeights, composite_reward, paper_terms
from runs import (HelpFormatter, Run, add_run_arguments, linear_warmup, load_for_training, optimizer_step,
                  resolve_defaults, resume_args, scale_help)
from sampling import Generation, concatenate, generate, sampling_noise
from toolcalls import Parsed, parse_completion

LOSS_AGGREGATIONS = ("grpo", "dapo", "dr_grpo")
# Learning rate when --lr is not given: RL steps are noisier than SFT steps, so each is 10x below sft.py's.
LR_DEFAULTS = {"tiny": 1e-4, "lora": 1e-5, "full": 1e-6}
# Defaults that depend on the model's scale, (tiny model, real model), for flags left unset. Qwen3 thinks at length:
# 1024 new tokens and a 256-word think budget leave room for a trace and the action (the tiny model's 96 / 64 would
# truncate nearly every sample, every group would score alike and nothing would be learned); APIGen-MT prompts
# (policy + tool schemas + history) reach 4k tokens; rollouts in chunks of 32 rows bound the KV cache
# (README: one GPU); 4 sequences per update micro-batch bound the activations and the completion logits.
SCALE_DEFAULTS = {"lora_rank": (0, 16), "max_new_tokens": (96, 1024), "think_budget": THINK_BUDGETS,
                  "max_prompt_len": (1024, 4096), "rollout_batch": (128, 32), "micro_batch": (32, 4)}
KL_LOG_RATIO_CLAMP, KL_CLAMP = 20.0, 10.0   # verl's bounds on k3: a far-off reference cannot overflow exp


# ----------------------------------------------------------------------------------------------
# The equations
# ----------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale_std: bool = True) -> torch.Tensor:
    """A_{g,i} = (r_{g,i} - mean_i r_{g,i}) / (std_i r_{g,i} + eps) for rewards shaped [groups, G].

    std is the population std of the group. Groups with zero variance (all completions scored the same,
    so nothing to prefer) and singleton groups get A = 0. scale_std=False skips the division
    (Dr. GRPO, Liu et al. 2025: dividing by std up-weights groups that are nearly all right or all wrong).
    """
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    advantages = centered / (std + eps) if scale_std else centered
    return torch.where(informative(rewards)[:, None], advantages, torch.zeros_like(advantages))


def informative(rewards: torch.Tensor) -> torch.Tensor:
    """[groups] bool: the group's rewards are not all equal (A != 0 somewhere: it teaches something).

    Tested as equality, not as std > threshold: torch's float32 std of G equal values is often 1 ulp (up to 1.2e-7
    for rewards in [0, 1]), so a threshold below float32 rounding calls equal rewards informative and steps on noise.
    """
    return (rewards != rewards[:, :1]).any(dim=1)


def discounted_returns(outcome: torch.Tensor, turns_left: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_{e,j} = gamma^(T_e - 1 - j) R_e: the return from turn j of an episode of T_e agent turns whose one reward is
    its outcome R_e, paid after its last turn (turns_left[r] = T_e - 1 - j for row r, turn j of episode e)."""
    return outcome * gamma ** turns_left


def step_advantages(returns: torch.Tensor, step_group: torch.Tensor, eps: float = 1e-4,
                    scale_std: bool = True) -> torch.Tensor:
    """GiGPO's step-level advantage (Feng et al. 2025, arXiv 2505.10978, sec. 4.2): the turns a task's G episodes took
    from the same state form a step group s, and each turn's return is compared with its step group's,

        A^S_r = (R_r - mean_{r' in s(r)} R_r') / (std_{r' in s(r)} R_r' + eps)      (group_advantages, per step group)

    0 for a turn alone in its step group (no other action from that state to compare it with) and for a step group
    of equal returns. step_group: [rows] long, the label of each row's step group (step_groups)."""
    advantages = torch.zeros_like(returns)
    for label in step_group.unique():
        members = (step_group == label).nonzero().squeeze(-1)
        advantages[members] = group_advantages(returns[members][None], eps, scale_std)[0]
    return advantages


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) (Schulman 2020), with x = ref_logp - logp:

        k3 = min(exp(x) - x - 1, 10),  x clamped to [-20, 20]
           >= 0, unbiased inside the clamps, zero when the two log-probs are equal.

    The clamps (as verl's) keep exp finite when the policy has moved far from the reference on a token; such a
    token's KL term then has no gradient, the rest of the step is unaffected.
    """
    x = (ref_logp - logp).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return (torch.exp(x) - x - 1).clamp(max=KL_CLAMP)


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, n_sequences: int, n_tokens: int,
                   max_len: int, lengths: torch.Tensor) -> torch.Tensor:
    """Reduce a [n, T] per-token loss over the completion mask (Dr. GRPO, Liu et al. 2025, sec. 3), over the step's
    N sequences o_i of at most L tokens (loss_sequences: a completion, or an episode's turns end to end):

        grpo     (1/N) sum_i (1/|o_i|) sum_{t in o_i} l_t    per-sequence token mean, then mean (original GRPO)
        dapo     sum_{i,t} l_{i,t} / sum_i |o_i|             global token mean (DAPO)
        dr_grpo  sum_{i,t} l_{i,t} / (N L)                   constant normaliser (Dr. GRPO)

    Each row is one sequence or a part of one (an episode's turn); lengths[r] is |o_i| of row r's sequence, so grpo's
    sum over rows, (1/N) sum_r (1/lengths[r]) sum_t l_{r,t}, is the one over sequences. n_sequences (N), n_tokens
    (sum_i |o_i|) and max_len (L) are those of the whole batch, all B x G sequences of the step (also those of
    zero-variance groups, which are left out of the passes: their A = 0, so the loss is the same as with them in,
    less their KL term), so that the sum of this over micro-batches equals the loss of the whole batch and
    dr_grpo's normaliser stays constant from step to step.
    """
    masked = per_token * mask
    if mode == "grpo":
        return (masked.sum(-1) / lengths).sum() / n_sequences
    if mode == "dapo":
        return masked.sum() / max(n_tokens, 1)
    if mode == "dr_grpo":
        return masked.sum() / (n_sequences * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r} (one of {LOSS_AGGREGATIONS})")


def sequence_lengths(row_lengths: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """[rows] |o_i| of each row's sequence i = sequence[r]: |o_i| = sum_{r: sequence[r] = i} row_lengths[r]."""
    totals = row_lengths.new_zeros(int(sequence.max()) + 1).index_add_(0, sequence, row_lengths)
    return totals[sequence]


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                        advantages: torch.Tensor, beta: float, eps_low: float, eps_high: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip objective with a KL penalty (GRPO; clip-higher eps_high from DAPO):

        rho = exp(logp - old_logp)
        l   = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta k3(logp, ref_logp)

    advantages is [N] (one per sequence, broadcast over tokens). Returns (l, k3, clipped) per token,
    where clipped marks tokens whose clipped term was the smaller one (no gradient flows through them).
    """
    a = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    per_token = -torch.min(unclipped, clipped)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    return per_token + beta * kl, kl, clipped < unclipped


def token_logprobs(model, b: "MicroBatch", temperature: float, chunk: int = 1024) -> torch.Tensor:
    """log pi(o_t | q, o_<t) of the sampled completion ids, [n, w] like b.mask (0 where it is 0).

    One forward of the micro-batch's prefix-tree rows (packing.py: a group's prompt once, each completion after
    it); only the hidden states that predict real completion tokens go through the LM head, `chunk` tokens at a
    time, as logits / T (the distribution the tokens were sampled from); log_softmax(z)[y] = z[y] - logsumexp(z),
    never a full [N, T, V] log_softmax.
    """
    hidden = hidden_states(model, b.packed, b.predictors)   # [real completion tokens, H], row-major like b.mask
    head = model.get_output_embeddings()
    out = [hidden.new_zeros(0, dtype=torch.float32)]
    for k in range(0, len(b.targets), chunk):
        logits = head(hidden[k:k + chunk]).float().div_(temperature)   # in place: one fp32 copy, not two
        out.append(logits.gather(-1, b.targets[k:k + chunk, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    return torch.zeros(b.mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(b.mask.bool(),
                                                                                              torch.cat(out))


# ----------------------------------------------------------------------------------------------
# One step: rollout -> advantages -> reference -> update
# ----------------------------------------------------------------------------------------------
def grpo_step(model, tokenizer, frozen_ref, optimizer, scheduler, params, samples: list[TurnSample],
              prompts: list[list[int]], generator: torch.Generator, args, thinking: bool, weights: RewardWeights,
              log_groups: bool = False, sampler=None) -> dict:
    """One GRPO step, the steps of the module docstring in its phases below, on the step's draw of prompts (B of them;
    up to refill_cap x B with --refill). Under torchrun each rank holds whole groups, and the phases that need the
    global batch sum over the ranks (parallel.py). log_groups adds the step's groups, as the rollout log records
    them, under "groups". sampler: what the rollouts sample from (model.sampling_copy of the policy, refreshed;
    default the policy itself)."""
    clock = [time.perf_counter()]
    policy = model if sampler is None else sampler
    groups = draw_groups(lambda first: rollout(policy, tokenizer, samples, prompts, first, generator, args, thinking,
                                               weights), len(samples), args, tokenizer.pad_token_id)   # 1, 2
    return optimise(model, tokenizer, frozen_ref, optimizer, scheduler, params, groups, args, clock, log_groups)


def optimise(model, tokenizer, frozen_ref, optimizer, scheduler, params, groups: "Groups", args, clock: list[float],
             log_groups: bool) -> dict:
    """Phases 3-6 on the step's scored groups, whatever they hold (turn completions, or whole episodes): the group
    advantages (3, and under --step-credit each turn's step advantage), the rows' old and reference log-probs (4), the
    clipped loss with KL and the optimizer step (5, 6); the step's metrics, and its groups when logged."""
    device = next(model.parameters()).device
    advantages = group_advantages(groups.totals(), scale_std=not args.no_std_scale).view(-1).to(device)   # 3
    clock.append(time.perf_counter())
    batch = training_batch(groups, row_advantages(groups, advantages, args).to(device), args, tokenizer.pad_token_id,
                           device)
    old_logp, ref_logp = old_and_reference_logprobs(model, frozen_ref, batch, args)                       # 4
    clock.append(time.perf_counter())
    update = policy_update(model, optimizer, scheduler, params, batch, old_logp, ref_logp, args)         # 5, 6
    clock.append(time.perf_counter())
    record = step_metrics(groups, update, clock)
    if log_groups:   # every rank takes this branch alike (a collective inside)
        records = episode_records(groups, advantages) if groups.kind == "episode" else rollout_groups(groups,
                                                                                                     advantages)
        record["groups"] = in_draw_order(records, args.prompts_per_step)
    return record


# ----------------------------------------------------------------------------------------------
# Phases 1-2: draw prompts, sample G completions of each, score them (with refill)
# ----------------------------------------------------------------------------------------------
@dataclass
class Score:
    """One completion as the composite reward saw it (rewards.composite_reward)."""
    text: str                  # the model's text up to the EOS that ended it, special tokens kept
    parsed: Parsed
    reward: Reward             # every component, and the total of the run's design
    terms: dict[str, float]    # the paper design's terms (rewards.paper_terms): which one tells a group apart
    truncated: bool            # no EOS within --max-new-tokens
    tokens: int                # completion length, EOS included
    ref_tool_call: bool        # the reference action calls a tool

    @property
    def total(self) -> float:
        return self.reward.total

    def logged(self) -> dict:
        """What the rollout log shows of the completion."""
        return {"text": self.text, "total": self.total, **{c: getattr(self.reward, c) for c in COMPONENTS},
                "truncated": self.truncated, "reasoning": self.parsed.reasoning, "tool_calls": self.parsed.tool_calls,
                "answer_text": self.parsed.answer, "errors": self.parsed.errors}


@dataclass
class Groups:
    """The step's groups on this rank: group i is samples[i] (a turn sample, or an episode task), its G completions
    (or episodes) scores[i*G .. i*G + G - 1]. gen holds the rows to train on: row r belongs to completion (episode)
    row_owner[r]; a turn completion is one row, an episode one row per agent turn."""
    samples: list
    gen: Generation
    scores: list
    trained: torch.Tensor          # [groups] bool: the groups whose rows go into the update; a rollout makes every
    #                                group a candidate, draw_groups keeps those the update trains on
    group_size: int
    row_owner: torch.Tensor        # [rows] long
    kind: str = "turn"             # "turn" or "episode"

    def totals(self) -> torch.Tensor:
        return group_totals(self.scores, self.group_size)

    def join(self, more: "Groups", pad_id: int) -> "Groups":
        """These groups, then those of a later draw (--refill)."""
        return Groups(self.samples + more.samples, concatenate([self.gen, more.gen], pad_id), self.scores + more.scores,
                      torch.cat([self.trained, more.trained]), self.group_size,
                      torch.cat([self.row_owner, more.row_owner + len(self.scores)]), self.kind)


def group_totals(scores: list[Score], group_size: int) -> torch.Tensor:
    """[groups, G] total rewards."""
    return torch.tensor([s.total for s in scores], dtype=torch.float32).view(-1, group_size)


def draw_groups(roll: Callable[[int], Groups], n_drawable: int, args, pad_id: int) -> Groups:
    """The step's groups on this rank, scored, and which of them the update trains on; roll(first) rolls out the
    draw's B items (prompts or tasks) from `first` on, of n_drawable.

    Without --refill: the first B items of the draw; the informative groups are trained on (all of them under
    --keep-zero-variance). With --refill (DAPO's dynamic sampling): B more items at a time until the *global*
    batch holds B informative groups or the draw is spent, and the first B informative groups in the draw's order
    are trained on: the decision and the choice are those of one process, whatever the number of ranks."""
    B = args.prompts_per_step
    groups, drawn = roll(0), B
    while args.refill and drawn < n_drawable and parallel.all_sum(int(informative(groups.totals()).sum())) < B:
        groups, drawn = groups.join(roll(drawn), pad_id), drawn + B
    useful = informative(groups.totals())
    if args.refill:
        return replace(groups, trained=first_in_draw_order(useful, B))
    return replace(groups, trained=torch.ones_like(useful) if args.keep_zero_variance else useful)


def rollout(model, tokenizer, samples: list[TurnSample], prompts: list[list[int]], first: int,
            generator: torch.Generator, args, thinking: bool, weights: RewardWeights) -> Groups:
    """G sampled completions of this rank's share of the B prompts from `first` on, scored (score_rollout); the
    noise of all B x G rows is drawn and each rank keeps its rows' (sampling.py: what one process would sample)."""
    B, G = args.prompts_per_step, args.group_size
    noise = sampling_noise(B * G, args.max_new_tokens, generator)[parallel.share(B * G)]
    share = parallel.share(B)
    samples, prompts = samples[first + share.start:first + share.stop], prompts[first + share.start:first + share.stop]
    model.eval()
    device = next(model.parameters()).device
    with autocast(args.precision, device):
        gen = generate(model, prompts, eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id,
                       group_size=G, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, noise=noise.to(device), rollout_batch=args.rollout_batch,
                       share_prefix=not args.no_shared_prefix)
    return Groups(samples, gen, score_rollout(tokenizer, gen, samples, G, thinking, weights),
                  torch.ones(len(samples), dtype=torch.bool), G, torch.arange(len(samples) * G))


def score_rollout(tokenizer, gen: Generation, samples: list[TurnSample], group_size: int, thinking: bool,
                  weights: RewardWeights) -> list[Score]:
    """Every completion parsed and scored (sample i's group is rows i*G .. i*G + G - 1)."""
    scores, special = [], special_tokens(tokenizer)
    for row, (ids, text, truncated) in enumerate(zip(gen.completion_lists(), gen.completion_texts(tokenizer),
                                                     gen.truncated.tolist())):
        parsed, ref = parse_completion(text, special), samples[row // group_size].target
        reward = composite_reward(parsed, truncated, ref, thinking, weights)
        scores.append(Score(text, parsed, reward, paper_terms(reward, weights), truncated, len(ids), ref.is_tool_call))
    return scores


def in_draw_order(items: list, B: int) -> list:
    """Every rank's per-group items, gathered in the global draw's order. rollout shares each draw of B prompts out
    in rank order (parallel.share), so the global order runs draw by draw, and within a draw rank by rank: with W
    ranks each holding share = B / W groups of every draw, rank r's local group d x share + j (draw d, its j-th) is
    global group d x B + r x share + j. Here: cut each rank's list into draws of `share`, then take draw d of rank 0,
    draw d of rank 1, ..., for d = 0, 1, ..."""
    share, n = B // parallel.world(), len(items)   # every rank holds n groups: the same draws
    gathered = parallel.gather(items)
    by_rank = [gathered[r * n:(r + 1) * n] for r in range(parallel.world())]
    return [x for d in range(0, n, share) for part in by_rank for x in part[d:d + share]]


def first_in_draw_order(useful: torch.Tensor, B: int) -> torch.Tensor:
    """[local groups] bool: which of this rank's groups are among the first B True groups of the global draw order
    (the flags gathered by in_draw_order, then each local group looked up at its global index, as in_draw_order
    numbers them)."""
    share = B // parallel.world()
    flags = torch.tensor(in_draw_order(useful.tolist(), B), dtype=torch.bool)
    first = flags & (flags.cumsum(0) <= B)
    local = torch.arange(len(useful))
    return first[local // share * B + parallel.rank() * share + local % share]


# ----------------------------------------------------------------------------------------------
# Phase 4: the rows to train on, and their log-probs under the old and the reference policy
# ----------------------------------------------------------------------------------------------
@dataclass
class MicroBatch:
    packed: Packed             # prompt + completion of each row; a group's rows in one prefix-tree row (packing.py)
    predictors: torch.Tensor   # [real completion tokens]: flat index of the node that predicts each, row-major
    targets: torch.Tensor      # [real completion tokens]: the sampled ids
    mask: torch.Tensor         # [n, w] float: 1 on real completion tokens (through EOS)
    advantages: torch.Tensor   # [n]
    lengths: torch.Tensor      # [n] float: |o_i| of each row's sequence (aggregate_loss), its own or its episode's

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.packed.to(device), self.predictors.to(device), self.targets.to(device),
                          self.mask.to(device), self.advantages.to(device), self.lengths.to(device))


@dataclass
class Batch:
    """The rows the update trains on, and the normalisers of aggregate_loss: those of the global batch."""
    micro: list[MicroBatch]
    n_sequences: int           # N: every sequence drawn over the ranks (under --refill: those of the groups kept)
    n_tokens: int              # sum_i |o_i| over the same sequences
    max_len: int               # L: the most tokens a sequence can hold
    n_trained_tokens: int      # completion tokens of the rows trained on (kl and clip_fraction are per such token)


def row_advantages(groups: Groups, advantages: torch.Tensor, args) -> torch.Tensor:
    """[rows] the advantage each row trains with: its completion's (episode's) group advantage A^E, and under
    --episodes with --step-credit w > 0, GiGPO's combination A^E + w A^S (step_advantages of the returns
    discounted_returns gives each turn, --step-gamma)."""
    owner = groups.row_owner.to(advantages.device)
    if groups.kind != "episode" or not args.step_credit:
        return advantages[owner]
    returns = discounted_returns(groups.totals().view(-1).to(owner.device)[owner],
                                 turns_left(groups.row_owner).to(owner.device), args.step_gamma)
    step = step_advantages(returns, step_groups(groups).to(owner.device), scale_std=not args.no_std_scale)
    return advantages[owner] + args.step_credit * step


def turns_left(row_owner: torch.Tensor) -> torch.Tensor:
    """[rows] T_e - 1 - j for row r, turn j of episode e = row_owner[r] (an episode's rows are its turns, in order)."""
    turn, taken = [], {}
    for e in row_owner.tolist():
        turn.append(taken.get(e, 0))
        taken[e] = turn[-1] + 1
    return torch.tensor([taken[e] - 1 - j for e, j in zip(row_owner.tolist(), turn)])


def step_groups(groups: Groups) -> torch.Tensor:
    """[rows] long: one label for the turns of one task's G episodes taken from the same state, the same
    conversation so far token for token (the row's prompt: exactly what the policy acted on). Not the database and
    the pending request: two conversations that reach the same database in other words are other inputs to the
    policy, and GiGPO's anchor states are identical observations."""
    gen, labels, keys = groups.gen, [], {}
    for r, group in enumerate((groups.row_owner // groups.group_size).tolist()):
        prompt = tuple(gen.prompt_ids[r][gen.prompt_mask[r].bool()].tolist())
        labels.append(keys.setdefault((group, prompt), len(keys)))
    return torch.tensor(labels)


def training_batch(groups: Groups, advantages: torch.Tensor, args, pad_id: int, device) -> Batch:
    """The trained groups' rows in micro-batches of similar length, and the normalisers summed over the ranks;
    advantages: one per row (row_advantages).

    A group whose completions all scored the same has A = 0 and teaches nothing: as in DAPO's dynamic sampling it is
    left out of the reference and update passes (--keep-zero-variance keeps it, for its KL term), while its rows
    still count in the normalisers, so the loss is that of every row drawn (less their KL term). Under --refill
    the batch is the B groups kept. Each row's sequence length is that of its whole sequence (loss_sequences),
    counted here before the rows are split into micro-batches; a rank holds whole groups, so whole episodes."""
    mask = groups.gen.completion_mask
    label = groups.row_owner // groups.group_size   # each row's group
    rows = groups.trained[label].nonzero().squeeze(-1)
    counted = rows if args.refill else torch.arange(len(mask))   # the rows of the normalisers
    sequence, max_len = loss_sequences(groups, args)
    n_trained_tokens = int(parallel.all_sum(int(mask[rows].sum())))
    n_sequences = int(parallel.all_sum(len(sequence[counted].unique())))
    n_tokens = int(parallel.all_sum(int(mask[counted].sum())))
    return Batch(micro_batches(groups.gen, rows, advantages, args.micro_batch,
                               label.tolist(), pad_id, device, share=not args.no_shared_prefix,
                               lengths=sequence_lengths(mask.sum(1).float().cpu(), sequence)),
                 n_sequences, n_tokens, max_len, n_trained_tokens)


def loss_sequences(groups: Groups, args) -> tuple[torch.Tensor, int]:
    """The sequences o_i of aggregate_loss: the one each row belongs to ([rows] long), and L, the most tokens one can
    hold. A turn completion is a sequence (L = max_new_tokens). Under --episodes with --episode-weight episode, an
    episode e is one: its turns' completions o_e,j end to end, |o_e| = sum_j |o_e,j|, L = turn_limit x max_new_tokens,
    so with N episodes

        grpo     (1/N) sum_e (1/|o_e|) sum_{j,t} l_{e,j,t}                 each episode 1/N, whatever its turns
        dapo     sum_{e,j,t} l_{e,j,t} / sum_e |o_e|                       as a row per turn: a token mean sees no rows
        dr_grpo  sum_{e,j,t} l_{e,j,t} / (N turn_limit max_new_tokens)     constant from step to step

    and an episode weighs what one completion weighs at the turn level, however its tokens were split into turns.
    --episode-weight turn makes each turn a sequence (N turns, L = max_new_tokens): under grpo an episode then weighs
    by its number of turns, and dr_grpo's normaliser counts turns."""
    if groups.kind == "episode" and args.episode_weight == "episode":
        return groups.row_owner, args.turn_limit * args.max_new_tokens
    return torch.arange(len(groups.row_owner)), args.max_new_tokens


def micro_batches(gen: Generation, rows: torch.Tensor, advantages: torch.Tensor, size: int, groups: list[int],
                  pad_id: int, device, share: bool = True, lengths: torch.Tensor | None = None) -> list[MicroBatch]:
    """The update's rows (advantages and lengths: one per row of gen, lengths those of the rows' sequences, by default
    each row's own; groups: each row's group) in micro-batches of `size` rows, sorted by (the group's shortest
    prompt, group, prompt length, completion length), so the rows of a group sit together and share their packed
    row (micro_batch): each group's prompt (an episode group's common conversation) is computed once, not once per
    row, and no row pays for another's padding. The loss and gradient are those of the padded batch
    (tests/test_grpo.py).
    """
    prompt_len, completion_len = gen.prompt_mask.sum(1).tolist(), gen.completion_mask.sum(1).tolist()
    shortest: dict[int, int] = {}
    for r in rows.tolist():
        shortest[groups[r]] = min(shortest.get(groups[r], prompt_len[r]), prompt_len[r])
    order = sorted(rows.tolist(), key=lambda r: (shortest[groups[r]], groups[r], prompt_len[r], completion_len[r]))
    batches = []
    for k in range(0, len(order), size):
        chunk = order[k:k + size]
        batches.append(micro_batch(
            [gen.prompt_ids[r, gen.prompt_ids.shape[1] - prompt_len[r]:].tolist() for r in chunk],
            [gen.completion_ids[r, :completion_len[r]].tolist() for r in chunk], [groups[r] for r in chunk],
            advantages[torch.tensor(chunk, device=advantages.device)], pad_id, share,
            None if lengths is None else lengths[torch.tensor(chunk)]).to(device))
    return batches


def micro_batch(prompts: list[list[int]], completions: list[list[int]], groups: list[int], advantages: torch.Tensor,
                pad_id: int, share: bool = True, lengths: torch.Tensor | None = None) -> MicroBatch:
    """Rows (prompt, completion) as one MicroBatch: the rows of one group (same `groups` label, hence the same prompt)
    share a packed row and its prompt tokens; share=False gives each row its own (a padded batch). lengths: those
    of the rows' sequences (aggregate_loss), by default each completion's own."""
    members = [[i for i, g in enumerate(groups) if g == label] for label in dict.fromkeys(groups)] if share \
        else [[i] for i in range(len(prompts))]
    packed = pack([[prompts[i] + completions[i] for i in m] for m in members], pad_id)
    nodes = dict(zip((i for m in members for i in m), packed.nodes))
    predictors = [nodes[i][len(prompts[i]) - 1 + t] for i in range(len(prompts)) for t in range(len(completions[i]))]
    width = max(len(c) for c in completions)
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in completions])
    return MicroBatch(packed, torch.tensor(predictors, dtype=torch.long),
                      torch.tensor([t for c in completions for t in c], dtype=torch.long), mask, advantages,
                      mask.sum(1) if lengths is None else lengths)


@torch.no_grad()
def old_and_reference_logprobs(model, frozen_ref, batch: Batch, args) -> tuple[list, list]:
    """Per micro-batch, log pi(o_t) of the sampled tokens under the old policy (the one that sampled: computed once
    when --num-iterations > 1; None otherwise, and the update takes logp.detach()) and under the reference policy
    (reference_context; None when beta = 0)."""
    device = next(model.parameters()).device
    none = [None] * len(batch.micro)
    with autocast(args.precision, device):
        ref_logp = none
        if args.beta > 0 and batch.micro:
            with reference_context(model, frozen_ref) as ref_model:
                ref_logp = [token_logprobs(ref_model, b, args.temperature) for b in batch.micro]
        old_logp = [token_logprobs(model, b, args.temperature) for b in batch.micro] \
            if args.num_iterations > 1 else none
    return old_logp, ref_logp


def reference_context(model, frozen_ref):
    """The reference policy: the frozen copy (full fine-tuning) or the model with adapters disabled."""
    return nullcontext(frozen_ref) if frozen_ref is not None else disable_adapters(model)


# ----------------------------------------------------------------------------------------------
# Phases 5-6: the policy update
# ----------------------------------------------------------------------------------------------
@dataclass
class Update:
    loss: float = 0.0          # the batch's loss, mean over the --num-iterations updates
    kl: float = 0.0            # mean k3 per trained token
    clip_fraction: float = 0.0 # fraction of trained tokens whose ratio term was clipped
    grad_norm: float = 0.0     # gradient norm before clipping, of the last update
    finite: bool = True        # False: the last update was dropped (runs.optimizer_step)


def policy_update(model, optimizer, scheduler, params, batch: Batch, old_logp: list, ref_logp: list, args) -> Update:
    """--num-iterations updates on the batch: per micro-batch the clipped loss with its KL term (clipped_policy_loss)
    reduced with the global normalisers (aggregate_loss) and backpropagated; then one optimizer step on the gradient
    summed over the ranks (runs.optimizer_step). No update when no rank has a row to train on."""
    device = next(model.parameters()).device
    model.train()
    update = Update()
    for _ in range(args.num_iterations if parallel.any_rank(bool(batch.micro)) else 0):
        loss, kl, clipped = 0.0, 0.0, 0.0
        for b, ref, old in zip(batch.micro, ref_logp, old_logp):
            with autocast(args.precision, device):
                logp = token_logprobs(model, b, args.temperature)
            old = logp.detach() if old is None else old   # mu = 1: ratio 1, gradient intact
            per_token, k3, was_clipped = clipped_policy_loss(logp, old, ref, b.advantages, args.beta, args.eps_low,
                                                             args.eps_high)
            part = aggregate_loss(per_token, b.mask, args.loss_agg, batch.n_sequences, batch.n_tokens, batch.max_len,
                                  b.lengths)
            part.backward()
            loss += part.item()
            kl += float((k3.detach() * b.mask).sum())
            clipped += float((was_clipped.float() * b.mask).sum())
        loss, kl, clipped = (parallel.all_sum(v) for v in (loss, kl, clipped))   # of the whole batch
        update.loss += loss / args.num_iterations
        update.kl += kl / max(batch.n_trained_tokens, 1) / args.num_iterations
        update.clip_fraction += clipped / max(batch.n_trained_tokens, 1) / args.num_iterations
        update.grad_norm, update.finite = optimizer_step(optimizer, scheduler, params, args.max_grad_norm, loss)
        if not update.finite:
            break
    return update


# ----------------------------------------------------------------------------------------------
# What a step shows: the log record (docs/commands.md) and the rollout log (rollouts.py)
# ----------------------------------------------------------------------------------------------
def step_metrics(groups: Groups, update: Update, clock: list[float]) -> dict:
    """The step's log record, over every rank's completions; clock: the times at the start and after the rollout,
    the reference pass and the update."""
    G, scores = groups.group_size, parallel.gather(groups.scores)   # whole groups of every rank
    totals = group_totals(scores, G)
    gen = groups.gen
    tokens = parallel.all_sum(float(gen.prompt_mask.sum() + gen.completion_mask.sum()))
    rows = parallel.all_sum(len(gen.completion_mask))
    new_tokens = parallel.all_sum(float(gen.completion_mask.sum()))
    return {
        "reward": {"total": float(totals.mean()), "std": float(totals.std(unbiased=False)),
                   **({} if groups.kind == "episode" else
                      {c: mean_of([getattr(s.reward, c) for s in scores]) for c in COMPONENTS})},
        "zero_variance_groups": 1.0 - float(informative(totals).float().mean()),
        "prompts_drawn": int(parallel.all_sum(len(groups.samples))),
        **(episode_metrics(scores) if groups.kind == "episode" else turn_metrics(scores, G)),
        "loss": update.loss, "kl": update.kl, "clip_fraction": update.clip_fraction,
        "grad_norm": update.grad_norm, "finite": update.finite,
        "new_tokens": new_tokens, "completion_len": new_tokens / rows,
        "truncated": parallel.all_sum(float(gen.truncated.sum())) / rows,
        "seconds": {"rollout": clock[1] - clock[0], "reference": clock[2] - clock[1], "update": clock[3] - clock[2],
                    "total": clock[3] - clock[0]},
        "tokens_per_s": tokens / (clock[3] - clock[0]),
    }


def turn_metrics(scores: list[Score], group_size: int) -> dict:
    """What the turn-level step's completions did (docs/commands.md)."""
    return {"decision": decision_confusion(scores),
            "parse_failure": 1.0 - mean_of([s.parsed.well_formed for s in scores]),
            "separated_by": separated_by(scores, group_size),
            "reasoning_words": mean_of([s.parsed.reasoning_words for s in scores])}


def episode_metrics(scores: list["EpisodeScore"]) -> dict:
    """What the episode step's episodes did: means per episode (docs/commands.md)."""
    means = {key: mean_of([getattr(s, field) for s in scores]) for key, field in (
        ("task_success", "success"), ("end_state", "end_state"), ("communicated", "communicated"),
        ("violations", "violations"), ("tool_errors", "tool_errors"), ("agent_turns", "turns"),
        ("format_errors", "format_errors"))}
    return {**means, "turn_limit": mean_of([s.ended_by == "turn limit" for s in scores])}


def mean_of(values: list) -> float | None:
    """The mean of the values that are not None (a component that does not apply to a turn is None)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def decision_confusion(scores: list[Score]) -> dict[str, float]:
    """Fractions of the step's completions by (what it did | what the reference does); they sum to 1."""
    cells = {f"{did}|{ref}": 0 for did in ("call", "answer") for ref in ("call", "answer")}
    for s in scores:
        cells[f"{'call' if s.parsed.tool_calls else 'answer'}|{'call' if s.ref_tool_call else 'answer'}"] += 1
    return {k: v / len(scores) for k, v in cells.items()}


def separated_by(scores: list[Score], group_size: int) -> dict[str, float]:
    """For each informative group (`informative`), the component whose paper term (rewards.paper_terms) varies
    most within the group, the one that told its completions apart; the fraction of informative groups each
    component separated (an empty dict when no group was informative)."""
    counts: dict[str, int] = {}
    for k, useful in zip(range(0, len(scores), group_size), informative(group_totals(scores, group_size)).tolist()):
        if not useful:
            continue
        group = scores[k:k + group_size]
        spread = {c: torch.tensor([s.terms[c] for s in group]).var(unbiased=False).item() for c in COMPONENTS}
        top = max(spread, key=spread.get)
        counts[top] = counts.get(top, 0) + 1
    n = sum(counts.values())
    return {c: counts[c] / n for c in COMPONENTS if c in counts}


def rollout_groups(groups: Groups, advantages: torch.Tensor) -> list[dict]:
    """This rank's groups as rollouts.jsonl records (one line each; `python rollouts.py` shows them): each
    completion with its advantage, whether the group was informative and whether the update trained on it."""
    G, records = groups.group_size, []
    useful = informative(groups.totals()).tolist()
    for i, sample in enumerate(groups.samples):
        completions = [{"advantage": round(float(advantages[r]), 4), **groups.scores[r].logged()}
                       for r in range(i * G, (i + 1) * G)]
        records.append({"conversation_id": sample.conversation_id, "turn": len(sample.messages),
                        "kind": action_kind(sample.target), "informative": useful[i],
                        "trained": bool(groups.trained[i]),
                        "reference": {"reasoning": sample.target.reasoning, "tool_calls": sample.target.tool_calls,
                                      "answer": sample.target.content if not sample.target.is_tool_call else ""},
                        "completions": completions})
    return records


def episode_records(groups: Groups, advantages: torch.Tensor) -> list[dict]:
    """This rank's episode groups as rollouts.jsonl records: each episode's outcome, advantage and transcript."""
    G, records = groups.group_size, []
    useful = informative(groups.totals()).tolist()
    for i, task in enumerate(groups.samples):
        episodes = [{"advantage": round(float(advantages[r]), 4), **groups.scores[r].logged()}
                    for r in range(i * G, (i + 1) * G)]
        records.append({"task_id": task.task_id, "kind": " + ".join(task.flows), "informative": useful[i],
                        "trained": bool(groups.trained[i]), "episodes": episodes})
    return records


# ----------------------------------------------------------------------------------------------
# Phases 1-2 on whole conversations (--episodes): G episodes of a training task, scored by their outcome
# ----------------------------------------------------------------------------------------------
def episode_reward(success: bool, violations: int, well_formed: float, w_violation: float, w_format: float) -> float:
    """R = 1[task success] - w_violation x violations + w_format x well_formed.

    Task success is episodes.py's (the end state right and every value told); a violation is a write the policy
    forbids (cancelling an order that is not pending, returning one not delivered); well_formed, the fraction of
    the agent's turns that parse without a format error, is an optional shaping term (w_format 0 by default)."""
    return float(success) - w_violation * violations + w_format * well_formed


@dataclass
class EpisodeScore:
    """One episode as its outcome reward saw it."""
    total: float
    success: bool
    end_state: bool
    communicated: bool
    violations: int
    tool_errors: int
    turns: int                 # agent turns (completions)
    format_errors: int
    ended_by: str              # "user" or "turn limit"
    transcript: str            # episodes.transcript

    def logged(self) -> dict:
        return dict(vars(self))


def rollout_episodes(model, tokenizer, tasks: list[Task], first: int, generator: torch.Generator, args,
                     thinking: bool) -> Groups:
    """G episodes of each of this rank's share of the B tasks from `first` on, with the scripted user and the tools
    executing on each episode's own database (episodes.run_episodes), scored by episode_reward.

    Every agent turn is sampled on the prompt of the conversation so far as the chat template renders it at that
    turn (earlier turns' reasoning dropped, as in evaluation), and kept as one row of the result: those exact
    prompt ids, the sampled ids, their log-probs at sampling time. So an episode is several rows, not one growing
    sequence, and what is trained is what was sampled, in the context it was sampled in; tool outputs and user turns
    are prompt tokens, never trained on. An episode ends before a turn whose prompt would be longer than
    --max-prompt-len, as at the turn limit (run_episodes' `fits`); an opening that long is refused. The G episodes of
    a task share its user's seed, so they differ by the agent's samples only. One number drawn from `generator`
    seeds the draw's users and its per-round noise (every round draws the noise of all B x G episodes, each episode
    takes its row's): the same episodes on any number of ranks, and one draw of `generator` per call whatever the
    episodes' lengths."""
    B, G = args.prompts_per_step, args.group_size
    share = parallel.share(B)
    mine = tasks[first + share.start:first + share.stop]
    position = {t.task_id: k for k, t in enumerate(mine)}
    seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    rounds = torch.Generator(device=generator.device).manual_seed(seed)
    device = next(model.parameters()).device
    parts, owners = [], []

    def agent(active: list[Episode]) -> list[str]:
        """One round: the next turn of every active episode, sampled in one generate call; each turn's row is kept in
        `parts` and its episode (local index) in `owners`."""
        noise = sampling_noise(B * G, args.max_new_tokens, rounds)   # the round's noise of all B x G episodes
        local = [position[e.task.task_id] * G + e.trial for e in active]   # episode index on this rank
        prompts = [prompt_ids(tokenizer, e.context(), thinking) for e in active]
        too_long = [e.task.task_id for e, p in zip(active, prompts) if len(p) > args.max_prompt_len]
        if too_long:   # an opening: a later context that long has ended its episode (fits)
            raise DataError(f"task {too_long[0]}: its opening prompt is longer than --max-prompt-len "
                            f"{args.max_prompt_len}")
        with autocast(args.precision, device):
            gen = generate(model, prompts, eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           noise=noise[share.start * G + torch.tensor(local)].to(device),   # its global row
                           rollout_batch=args.rollout_batch, share_prefix=not args.no_shared_prefix)
        parts.append(gen)
        owners.extend(local)
        return gen.completion_texts(tokenizer)

    def fits(e: Episode) -> bool:
        return len(prompt_ids(tokenizer, e.context(), thinking)) <= args.max_prompt_len

    model.eval()
    episodes = run_episodes(agent, mine, G, args.turn_limit, fits=fits, user_seed=seed,
                            special_tokens=special_tokens(tokenizer))
    scores = [EpisodeScore(episode_reward(state and told, e.violations, 1 - e.format_errors / e.agent_turns,
                                          args.w_violation, args.w_episode_format),
                           state and told, state, told, e.violations, e.tool_errors, e.agent_turns, e.format_errors,
                           e.ended_by, transcript(e))
              for e, state, told in judged(episodes)]
    return Groups(mine, concatenate(parts, tokenizer.pad_token_id), scores, torch.ones(len(mine), dtype=torch.bool), G,
                  torch.tensor(owners), "episode")


def episode_step(model, tokenizer, frozen_ref, optimizer, scheduler, params, tasks: list[Task],
                 generator: torch.Generator, args, thinking: bool, log_groups: bool = False, sampler=None) -> dict:
    """One GRPO step on whole conversations: phases 1-2 are rollout_episodes (G episodes of each of B tasks, the
    outcome reward), phases 3-6 those of grpo_step, every agent turn of an episode with its episode's advantage."""
    clock = [time.perf_counter()]
    policy = model if sampler is None else sampler
    groups = draw_groups(lambda first: rollout_episodes(policy, tokenizer, tasks, first, generator, args, thinking),
                         len(tasks), args, tokenizer.pad_token_id)                                        # 1, 2
    return optimise(model, tokenizer, frozen_ref, optimizer, scheduler, params, groups, args, clock, log_groups)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GRPO with a composite reward for tool-calling agents.",
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("sampling")
    g.add_argument("--group-size", type=positive_int, default=8, help="G: completions per prompt")
    g.add_argument("--prompts-per-step", type=positive_int, default=16, help="B: turn samples per step")
    g.add_argument("--max-new-tokens", type=positive_int, default=None, help="tokens sampled per completion at most "
                   + scale_help(SCALE_DEFAULTS, "max_new_tokens"))
    g.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (> 0: the log-probs "
                   "of the loss are those of logits / T)")
    g.add_argument("--top-p", type=unit_interval, default=1.0, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--thinking", choices=["on", "off"], default="on", help="think-then-act prompts (the method)")
    g.add_argument("--refill", action="store_true", help="DAPO's dynamic sampling: draw B more prompts at a time "
                   "until B groups are informative (rewards not all equal); train on those B")
    g.add_argument("--refill-cap", type=positive_int, default=3, help="--refill draws at most this many x B prompts "
                   "a step (then trains on the informative groups it has)")
    g = p.add_argument_group("objective")
    g.add_argument("--beta", type=float, default=0.04, help="KL penalty weight (0 disables the reference pass)")
    g.add_argument("--eps-low", type=float, default=0.2, help="ratio clip below 1")
    g.add_argument("--eps-high", type=float, default=0.28, help="ratio clip above 1 (DAPO clip-higher)")
    g.add_argument("--loss-agg", choices=LOSS_AGGREGATIONS, default="dapo", help="aggregate_loss's reduction")
    g.add_argument("--no-std-scale", action="store_true", help="advantages without division by the group std")
    g.add_argument("--num-iterations", type=positive_int, default=1, help="policy updates per rollout batch (mu)")
    g.add_argument("--keep-zero-variance", action="store_true",
                   help="keep groups whose rewards are all equal (A = 0) in the update, for their KL term")
    g = p.add_argument_group("reward (defaults and their reasons: rewards.py)")
    w = RewardWeights()
    g.add_argument("--reward", choices=DESIGNS, default=w.design, help="reward design: the paper's composite, "
                   "binary (Tool-N1), fine (ToolRL), or the composite without one component (ablations)")
    g.add_argument("--w-format", type=float, default=w.format, help="weight of format compliance")
    g.add_argument("--w-decision", type=float, default=w.decision, help="weight of the call-or-answer decision")
    g.add_argument("--w-tool", type=float, default=w.tool, help="weight of tool accuracy (right decision only)")
    g.add_argument("--w-answer", type=float, default=w.answer, help="weight of answer F1 (right decision only)")
    g.add_argument("--w-efficiency", type=float, default=w.efficiency, help="weight of reasoning efficiency")
    g.add_argument("--think-budget", type=positive_int, default=None, help="reasoning words with full efficiency "
                   + scale_help(SCALE_DEFAULTS, "think_budget"))
    g = p.add_argument_group("whole conversations (--episodes)")
    g.add_argument("--episodes", type=int, default=0, metavar="N", help="train on whole conversations instead of "
                   "next actions: each step takes B of N demo-world retail tasks of training users (episodes.py), "
                   "runs G episodes of each with the scripted user and the executing tools, and rewards each "
                   "episode's outcome (episode_reward); --data is then unused; 0: the turn-level step")
    g.add_argument("--turn-limit", type=positive_int, default=12, help="--episodes: agent turns before the user "
                   "gives up (eval.py's default)")
    g.add_argument("--w-violation", type=float, default=0.5, help="--episodes: reward lost per policy violation")
    g.add_argument("--w-episode-format", type=float, default=0.0, help="--episodes: weight of the shaping term, the "
                   "fraction of the episode's agent turns without a format error")
    g.add_argument("--episode-weight", choices=("episode", "turn"), default="episode", help="--episodes: a sequence "
                   "of --loss-agg is an episode, its turns' completions end to end (it weighs what a completion "
                   "weighs at the turn level, however its tokens were split into turns), or each turn (under grpo "
                   "and dr_grpo an episode then weighs by its number of turns), for comparison")
    g.add_argument("--step-credit", type=float, default=0.0, metavar="W", help="--episodes: each turn trains with "
                   "A^E + W A^S, A^S GiGPO's step advantage among the turns a task's G episodes took from the same "
                   "conversation so far (step_advantages); 0: the episode's advantage A^E only")
    g.add_argument("--step-gamma", type=unit_interval, default=0.95, help="--episodes --step-credit: discount of the "
                   "outcome to earlier turns, R_j = gamma^(T - 1 - j) R (GiGPO's 0.95)")
    groups = add_run_arguments(p, out="runs/grpo", save_every=50)
    g = groups["optimisation"]
    g.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {LR_DEFAULTS['tiny']} tiny, "
                   f"{LR_DEFAULTS['lora']} LoRA, {LR_DEFAULTS['full']} full fine-tuning of a real model)")
    g.add_argument("--warmup", type=int, default=5, help="optimizer updates of linear warmup, then constant")
    g.add_argument("--steps", type=positive_int, default=200, help="GRPO steps (one rollout batch each)")
    g = groups["run"]
    g.add_argument("--model", default="tiny", help="start policy: the cold-start model directory, or a hub id")
    g.add_argument("--data", default="demo:train", help="training turn samples: APIGen-MT-5k file or demo split")
    g.add_argument("--log-rollouts", type=int, default=0, metavar="N", help="write every group of steps 1, N + 1, "
                   "2N + 1, ... to OUT/rollouts.jsonl (completions, rewards, advantages; see rollouts.py); 0: never")
    g = groups["advanced"]
    g.add_argument("--max-prompt-len", type=positive_int, default=None, help="longer prompts are left out of "
                   "training; under --episodes an episode ends before a turn whose prompt would be longer, as at "
                   "--turn-limit " + scale_help(SCALE_DEFAULTS, "max_prompt_len"))
    g.add_argument("--rollout-batch", type=positive_int, default=None, help="rows (completions) generated at once: "
                   "bounds the KV cache whatever B x G is " + scale_help(SCALE_DEFAULTS, "rollout_batch"))
    g.add_argument("--micro-batch", type=positive_int, default=None, help="sequences per forward/backward in the "
                   "update " + scale_help(SCALE_DEFAULTS, "micro_batch"))
    g.add_argument("--no-shared-prefix", action="store_true", help="compute a group's prompt once per completion "
                   "in the update and reference passes, as padded rows do (packing.py), and each prompt's start in "
                   "the rollout, not once for the prompts that share it (sampling.py), for comparison")
    args = p.parse_args(argv)
    if args.step_credit and not args.episodes:
        p.error("--step-credit weighs the turns of whole conversations: it goes with --episodes")
    if args.refill and args.keep_zero_variance:
        p.error("--refill trains on informative groups only; it cannot --keep-zero-variance")
    if args.episodes and args.episodes < args.prompts_per_step:
        p.error(f"--episodes {args.episodes}: fewer tasks than --prompts-per-step {args.prompts_per_step}")
    if args.lora_dropout:
        p.error("--lora-dropout must be 0 in GRPO: the ratio and the KL compare the policy with itself, and dropout "
                "would make them differ on an unchanged policy (every dropout is off in GRPO's passes)")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))   # torchrun's: each rank takes whole groups (parallel.py)
    if args.prompts_per_step % ranks:
        p.error(f"--prompts-per-step {args.prompts_per_step} does not split over {ranks} processes")
    return resolve_defaults(resume_args(args), SCALE_DEFAULTS, LR_DEFAULTS)


def train(args: argparse.Namespace, stop_after: int | None = None) -> Path | None:
    """Train and save (see runs.Run); stop_after=k simulates a kill after step k."""
    run = Run(args, "grpo", progress=("reward.total", "kl"), stop_after=stop_after)
    model, tokenizer = load_for_training(args)
    without_dropout(model)   # one policy: the one that sampled, its old self and its reference compute alike
    frozen_ref = None   # under LoRA the reference is the same model with its adapters disabled
    if not args.lora_rank and args.beta > 0:   # a copy in the policy's own dtype: KL is exactly 0 before any update
        frozen_ref = copy.deepcopy(model).eval().requires_grad_(False)
    thinking = args.thinking == "on"
    weights = RewardWeights.of_run(vars(args), real_model=not is_tiny(args.model))
    if args.episodes:   # whole conversations of training users' tasks
        tasks = make_tasks(args.episodes, split="train")
    else:
        samples, prompts = load_prompts(args, tokenizer, thinking)
    n = args.episodes or len(samples)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(args.warmup))
    evaluator = held_out_evaluator(args, tokenizer, thinking)
    generator = torch.Generator(device=args.device)
    sampler = sampling_copy(model, args.precision)   # bf16: a copy with the casts made once (model.for_inference)
    for step in range(run.start(args.steps, model, tokenizer, optimizer, scheduler, evaluator), args.steps):
        refresh_sampling_copy(sampler, model)   # the policy as this step starts (after a resume too)
        batch_rng = random.Random(args.seed * 1_000_003 + step)   # the batch of step k is fixed: resumable
        generator.manual_seed(args.seed * 1_000_003 + step)
        draw = args.prompts_per_step * (args.refill_cap if args.refill else 1)
        chosen = batch_rng.sample(range(n), min(draw, n // args.prompts_per_step * args.prompts_per_step))   # whole
        log_groups = bool(args.log_rollouts) and step % args.log_rollouts == 0                              # draws of B
        if args.episodes:
            record = episode_step(model, tokenizer, frozen_ref, optimizer, scheduler, params,
                                  [tasks[i] for i in chosen], generator, args, thinking, log_groups, sampler)
        else:
            record = grpo_step(model, tokenizer, frozen_ref, optimizer, scheduler, params, [samples[i] for i in chosen],
                               [prompts[i] for i in chosen], generator, args, thinking, weights, log_groups, sampler)
        if log_groups:
            run.write_rollouts(step + 1, record.pop("groups"))
        if run.end_step(step + 1, record):
            break
    return run.finish()


def load_prompts(args, tokenizer, thinking: bool) -> tuple[list[TurnSample], list[list[int]]]:
    samples, _ = load_turn_samples(args.data)
    prompts = [prompt_ids(tokenizer, s, thinking) for s in samples]
    keep = [i for i, p in enumerate(prompts) if len(p) <= args.max_prompt_len]
    if len(keep) < len(samples):
        print(f"left out {len(samples) - len(keep)} prompts longer than --max-prompt-len", file=sys.stderr)
    if len(keep) < args.prompts_per_step:
        raise DataError(f"{Path(args.data).name}: {len(keep)} usable prompts, fewer than --prompts-per-step")
    return [samples[i] for i in keep], [prompts[i] for i in keep]


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_args(argv)
        args.data = resolve_data(args.data)
        saved = train(args)
        if saved:
            print(f"saved {saved}")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
