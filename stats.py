"""Confidence intervals for held-out results: a percentile bootstrap over held-out items and training seeds.

A result is a matrix x[s, t]: the score (1/0 turn success, or a reward) of the model trained with seed s on
held-out item t; one row when there is one model. Its value is the mean over seeds and items. One bootstrap
replicate draws S seeds and T items with replacement and takes the mean of x over them, so the interval holds
both sources of noise: which held-out items there happen to be, and how training went with each seed.

    mean_ci(x)                 mean of x, and the 2.5 / 97.5 percentiles of the replicates (95%)
    difference_ci(x, y)        mean(x) - mean(y) over the same items: each replicate draws one set of items
                               for both (paired: an item that is hard for both cancels out) and seeds for each

With S = 1 only the items are resampled: the interval then says nothing about another training run.
"""

from __future__ import annotations

import torch

BOOTSTRAP_REPLICATES = 2000
LEVEL = 0.95


def replicate_means(x: torch.Tensor, item_draws: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[R] means of x [S, T] over each replicate's items (item_draws [R, T]) and S seeds drawn with replacement."""
    per_seed = x[:, item_draws].mean(-1)                                      # [S, R]
    seed_draws = torch.randint(x.shape[0], (item_draws.shape[0], x.shape[0]), generator=generator)   # [R, S]
    return per_seed.gather(0, seed_draws.T).mean(0)


def bootstrap(x: list[list[float]], y: list[list[float]] | None = None, replicates: int = BOOTSTRAP_REPLICATES,
              seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the mean of x, or mean(x) - mean(y) paired over items, with its 95% interval."""
    gen = torch.Generator().manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float64)
    items = torch.randint(xt.shape[1], (replicates, xt.shape[1]), generator=gen)
    stat = replicate_means(xt, items, gen)
    estimate = float(xt.mean())
    if y is not None:
        yt = torch.tensor(y, dtype=torch.float64)
        if yt.shape[1] != xt.shape[1]:
            raise ValueError(f"paired over items: {xt.shape[1]} vs {yt.shape[1]} items")
        stat = stat - replicate_means(yt, items, gen)
        estimate -= float(yt.mean())
    low, high = torch.quantile(stat, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)).tolist()
    return estimate, low, high


def mean_ci(x: list[list[float]], **kw) -> tuple[float, float, float]:
    """Mean over seeds and items of x [S][T], with its 95% interval."""
    return bootstrap(x, None, **kw)


def difference_ci(x: list[list[float]], y: list[list[float]], **kw) -> tuple[float, float, float]:
    """mean(x) - mean(y) over the same items (paired), with its 95% interval."""
    return bootstrap(x, y, **kw)


def show(estimate: float, low: float, high: float, signed: bool = False) -> str:
    """0.912 [0.894, 0.929] (signed: +0.012 [-0.004, +0.027])."""
    f = "+.3f" if signed else ".3f"
    return f"{estimate:{f}} [{low:{f}}, {high:{f}}]"
