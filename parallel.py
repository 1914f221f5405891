"""Data parallelism on torch.distributed, for sft.py and grpo.py launched by torchrun (one process per GPU, or
several processes on a CPU):

    torchrun --nproc-per-node 2 grpo.py --model runs/cold --data D/retail_train.json --out runs/grpo

Every rank holds the whole model (and its frozen reference) and starts from the same weights; a step's global batch
is split between the ranks (grpo.py: whole groups, sft.py: micro-batches), each rank backpropagates its share with
the loss normalisers of the *global* batch, and one all-reduce per update sums the gradients, so every rank takes
the update that one process would take on the global batch, and the ranks stay identical. Rank 0 alone logs,
evaluates and writes checkpoints; every rank resumes from the same checkpoint.

Why not DistributedDataParallel: DDP all-reduces inside each backward and needs every rank to call backward the
same number of times, but a GRPO rank whose groups all scored alike has nothing to backpropagate (its rows are left
out of the update), and ranks hold different numbers of micro-batches. Summing the gradients once, before the
optimizer step, is exact whatever each rank did. Outside torchrun (WORLD_SIZE unset) every function here is the
single-process identity.

Backends: on GPUs "cpu:gloo,cuda:nccl" -- nccl for the gradients and weights (CUDA tensors), gloo for the run's
bookkeeping (counts, stop flags, rollout records: CPU tensors and objects); a bare "nccl" serves CUDA tensors only,
and the first CPU all-reduce would fail. On the CPU, gloo. While rank 0 evaluates or writes a checkpoint the other
ranks wait in their next collective: the process group's timeout, COLLECTIVE_TIMEOUT, bounds that wait instead of
NCCL's 10-minute default, so a long held-out evaluation does not kill the job.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = {"cuda": "cpu:gloo,cuda:nccl", "cpu": "gloo"}   # device type -> process group backend (see above)
COLLECTIVE_TIMEOUT = timedelta(hours=2)   # longest wait in a collective: rank 0's evaluation or save included


def start() -> torch.device | None:
    """Join the process group when launched by torchrun; the device this rank trains on (its own GPU), or None
    when not distributed or on the CPU (the caller's --device stands)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        return None
    if not torch.cuda.is_available():
        dist.init_process_group(BACKENDS["cpu"], timeout=COLLECTIVE_TIMEOUT)
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group(BACKENDS["cuda"], timeout=COLLECTIVE_TIMEOUT)
    return torch.device("cuda", local)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def share(n: int) -> slice:
    """This rank's contiguous share of n items (n divisible by the world size), so that concatenating the shares
    in rank order gives the items in their order."""
    if n % world():
        raise ValueError(f"{n} items do not split evenly over {world()} ranks")
    k = n // world()
    return slice(rank() * k, (rank() + 1) * k)


def all_sum(value: float) -> float:
    """The sum over ranks of a number."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one: decisions to stop are taken together."""
    return all_sum(float(flag)) > 0


def gather(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return items
    parts: list = [None] * world()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each rank's accumulated gradient by the sum over ranks, in one flat all-reduce (a rank that did
    no backward contributes zeros)."""
    if not dist.is_initialized():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def same_start(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights (a randomly initialised adapter included)."""
    if dist.is_initialized():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
