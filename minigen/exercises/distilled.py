"""Checks for notebook 12's implement-it exercise: the closed-form velocity of distilled decoding's flow.

The learner writes `token_velocity(x, t, probs, codes)`: for straight paths x_t = (1 - t) c + t eps from a code c
drawn from `probs` to Gaussian noise eps, the exact velocity E[eps - c | x_t = x] = (x - c_hat) / t, with c_hat the
posterior mean of the code given x. It must equal `minigen.distilled.categorical_velocity`; the typical slips (the
codes not shrunk by 1 - t, the prior left out, t instead of t^2 in the Gaussian, the sign, no division by t) are
named.
"""

from __future__ import annotations

import torch

from minigen.distilled import categorical_velocity
from minigen.exercises import checked


def _reference(x, t, probs, codes, slip=None):
    """The velocity, or the velocity with one typical slip, for naming what a learner's answer did."""
    centres = codes if slip == "codes not shrunk" else (1 - t) * codes  # (V, D)
    var = t if slip == "t, not t squared" else t * t
    prior = torch.ones_like(probs) if slip == "prior left out" else probs
    logits = prior.clamp_min(1e-30).log() - torch.cdist(x, centres) ** 2 / (2 * var)  # (N, V)
    posterior = logits.softmax(-1) * (prior > 0)  # (N, V): a code the teacher rules out keeps weight 0
    mean = posterior / posterior.sum(-1, keepdim=True) @ codes  # (N, D)
    if slip == "sign":
        return (mean - x) / t
    if slip == "no division by t":
        return x - mean
    return (x - mean) / t


SLIPS = {
    "codes not shrunk": "the distances were taken to the codes themselves: at time t the path from code c sits "
    "around (1 - t) c, so compare x with (1 - t) * codes",
    "prior left out": "the posterior ignored probs: p(c | x_t) is proportional to probs[c] times the Gaussian "
    "N(x_t; (1 - t) c, t^2 I), so add log(probs) to the logits",
    "t, not t squared": "the Gaussian's variance was t: x_t = (1 - t) c + t eps has standard deviation t, so the "
    "exponent is -|x - (1 - t) c|^2 / (2 t^2)",
    "sign": "the velocity points the wrong way: d x_t / dt = eps - c, and with eps = (x - (1 - t) c) / t that is "
    "(x - c) / t, averaged: (x - c_hat) / t",
    "no division by t": "the velocity was not divided by t: eps - c = (x - c) / t along each path",
}


@checked(compares_with=(categorical_velocity,))
def check_token_velocity(token_velocity):
    """token_velocity(x (N, D), t, probs (N, V), codes (V, D)) -> velocity (N, D), equal to
    minigen.distilled.categorical_velocity at early, middle and late times."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(6, 3, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(40, 6, generator=g, dtype=torch.float64), -1)
    for t in (1.0, 0.7, 0.3, 0.1):
        x = torch.randn(40, 3, generator=g, dtype=torch.float64) * t + (1 - t) * codes[torch.arange(40) % 6]
        got = token_velocity(x.clone(), t, probs.clone(), codes.clone())
        want, _ = categorical_velocity(x, t, probs, codes)
        where = f"t = {t}"
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{where}: token_velocity must return a tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            raise AssertionError(f"{where}: returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if not torch.allclose(got.double(), want, atol=1e-6, rtol=1e-5):
            for slip in SLIPS:
                if torch.allclose(got.double(), _reference(x, t, probs, codes, slip), atol=1e-6, rtol=1e-5):
                    raise AssertionError(f"{where}: {SLIPS[slip]}")
            err = float((got.double() - want).abs().max())
            raise AssertionError(f"{where}: largest difference from the expected velocity {err:.3g}")
    # a code the teacher rules out (probability 0) must never pull the flow
    probs = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64).expand(5, 3)
    codes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.45]], dtype=torch.float64).expand(5, 2) + 0.01 * torch.arange(5.0)[:, None]
    got, (want, _) = token_velocity(x, 0.05, probs, codes), categorical_velocity(x, 0.05, probs, codes)
    if not torch.allclose(got.double(), want, atol=1e-6):
        raise AssertionError("near a code of probability 0 the velocity was pulled towards it: weight by probs")
