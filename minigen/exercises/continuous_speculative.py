"""Checks for notebook 13's implement-it exercise: the residual draw of two Gaussians.

The learner writes `residual_draw(mean_p, mean_q, std, generator)`: for each row, one draw (N, D) from
norm(max(0, p - q)) with p = N(mean_p, std^2 I) and q = N(mean_q, std^2 I), by acceptance-rejection: propose
y ~ p, keep it with probability max(0, 1 - q(y) / p(y)), and propose again for the rows not kept. The check tests
the support (no draw where q >= p), the law in one dimension against the residual's exact CDF (a KS distance), a
row whose p equals q (nothing to draw: the caller never asks), and names the typical slips.
"""

from __future__ import annotations

import math

import torch

from minigen.continuous_speculative import Proposal, residual_keep_prob
from minigen.exercises import checked

SLIPS = {
    "no rejection": "every proposal was kept: that is a draw from p, not from the residual; keep y with probability "
    "max(0, 1 - q(y) / p(y)) and propose again where it was not kept",
    "ratio upside down": "draws landed where q > p: the keep probability is max(0, 1 - q(y) / p(y)), with p's "
    "density below",
    "one try": "rows whose first proposal was rejected kept a value no proposal gave: loop until every row has "
    "kept one",
    "std": "the draws follow the residual of std = 1, not of the std given: both the proposal and the densities "
    "use std",
}


def _residual_cdf(y: torch.Tensor, mean_p: float, mean_q: float, std: float) -> torch.Tensor:
    """CDF of norm(max(0, p - q)) in one dimension with mean_p < mean_q: p > q left of the midpoint m, so
    the residual is (Phi_p(y) - Phi_q(y)) / (Phi_p(m) - Phi_q(m)) for y < m and 1 after it."""
    m = 0.5 * (mean_p + mean_q)
    phi = lambda x, mu: torch.special.ndtr((x - mu) / std)  # noqa: E731
    yy = torch.minimum(y, torch.tensor(m, dtype=y.dtype))
    return (phi(yy, mean_p) - phi(yy, mean_q)) / (phi(torch.tensor(m), mean_p) - phi(torch.tensor(m), mean_q))


def _ks(samples: torch.Tensor, mean_p, mean_q, std) -> float:
    x = samples.double().sort().values
    n = len(x)
    cdf = _residual_cdf(x, mean_p, mean_q, std)
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    return float(torch.maximum((ranks - cdf).abs(), (cdf - (ranks - 1 / n)).abs()).max())


def _draw(residual_draw, mean_p, mean_q, std, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = residual_draw(mean_p.expand(n, -1).clone(), mean_q.expand(n, -1).clone(), std, g)
    if not isinstance(out, torch.Tensor) or out.shape != (n, mean_p.shape[-1]):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AssertionError(f"residual_draw must return a tensor ({n}, {mean_p.shape[-1]}), got {got}")
    return out.double()


@checked(compares_with=(Proposal.draw_residual, residual_keep_prob))
def check_residual_draw(residual_draw):
    """residual_draw(mean_p (N, D), mean_q (N, D), std, generator) returns (N, D) draws from norm(max(0, p - q))."""
    n, bound = 20_000, 1.63 / math.sqrt(20_000) * 1.5  # KS at about the 0.1% level, with margin
    # 1. one dimension, p = N(0, 1), q = N(1, 1): the residual lives left of 0.5
    y = _draw(residual_draw, torch.tensor([[0.0]]), torch.tensor([[1.0]]), 1.0, n)[:, 0]
    if (y == 0).float().mean() > 0.01 or (y == y[0]).float().mean() > 0.01:
        raise AssertionError(SLIPS["one try"])
    above = float((y > 0.5).float().mean())
    if 0.2 < above < 0.45:  # N(0, 1) has 31% right of 0.5
        raise AssertionError(f"{above:.0%} of the draws are right of 0.5, where q > p: {SLIPS['no rejection']}")
    if above > 0:
        raise AssertionError(f"{above:.1%} of the draws are right of 0.5, where q > p: {SLIPS['ratio upside down']}")
    ks = _ks(y, 0.0, 1.0, 1.0)
    if ks > bound:
        raise AssertionError(f"the draws are not distributed as the residual (KS distance {ks:.3f} > {bound:.3f})")
    # 2. another std: the residual of N(0, 0.3^2) and N(0.2, 0.3^2)
    y = _draw(residual_draw, torch.tensor([[0.0]]), torch.tensor([[0.2]]), 0.3, n, seed=1)[:, 0]
    if (y > 0.1).any():
        raise AssertionError(f"draws right of 0.1, where q > p for std 0.3: {SLIPS['std']}")
    ks = _ks(y, 0.0, 0.2, 0.3)
    if ks > bound:
        near_one = _ks(y, 0.0, 0.2, 1.0)
        raise AssertionError(SLIPS["std"] if near_one < ks else f"KS distance {ks:.3f} > {bound:.3f} for std 0.3")
    # 3. two dimensions, rows with their own means: every draw where p > q, i.e. nearer mean_p than mean_q
    g = torch.Generator().manual_seed(2)
    mean_p, mean_q = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    y = residual_draw(mean_p.clone(), mean_q.clone(), 0.7, g).double()
    nearer_p = (y - mean_p).square().sum(-1) < (y - mean_q).square().sum(-1)
    if not bool(nearer_p.all()):
        raise AssertionError(
            f"{int((~nearer_p).sum())} of 500 rows drew a point nearer mean_q: {SLIPS['ratio upside down']}"
        )
