"""The bootstrap intervals of stats.py against values derived by hand."""

import math

import pytest

from stats import difference_ci, mean_ci


def test_constant_scores_have_a_zero_width_interval():
    assert mean_ci([[0.25] * 50, [0.25] * 50]) == pytest.approx((0.25, 0.25, 0.25))


def test_bernoulli_interval_matches_the_normal_approximation():
    # p = 1/2 over T = 400 items: half width ~ 1.96 sqrt(p (1 - p) / T) = 0.049
    mean, low, high = mean_ci([[1.0, 0.0] * 200])
    assert mean == 0.5 and low < 0.5 < high
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.15)


def test_pairing_cancels_what_both_share():
    # y is x less 0.1 on every item: every paired replicate differs by exactly 0.1, however the items are drawn
    x = [[float(i % 3) for i in range(90)]]
    y = [[v - 0.1 for v in x[0]]]
    assert difference_ci(x, y) == pytest.approx((0.1, 0.1, 0.1))
    # unpaired, the same two results would have wide intervals each
    _, low, high = mean_ci(x)
    assert high - low > 0.2


def test_seeds_are_resampled():
    # one seed got everything right, the other nothing: the replicate means are 0, 1/2, 1 w.p. 1/4, 1/2, 1/4,
    # so the 95% interval is [0, 1] (items add nothing: each row is constant)
    mean, low, high = mean_ci([[1.0] * 20, [0.0] * 20])
    assert (mean, low, high) == (0.5, 0.0, 1.0)
