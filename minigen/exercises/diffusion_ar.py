"""Checks for notebook 06's implement-it exercise: one reverse step of MAR's diffusion head.

The learner writes `ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=inf)`, the body of the loop in
`DiffusionHead.sample`: from the noisy token and the predicted noise, the clean token they imply (kept within
+-bound), the DDPM posterior mean of the less noisy token, and the posterior's noise times the temperature.
"""

from __future__ import annotations

import torch

from minigen.diffusion_ar import DiffusionHead
from minigen.exercises import checked


def _library_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
    """The loop body of DiffusionHead.sample, line for line (the check's reference on single steps)."""
    beta = 1 - a / a_next
    x0_hat = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-bound, bound)
    mean = (a_next.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - a_next) * x) / (1 - a)
    std = (beta * (1 - a_next) / (1 - a)).sqrt()
    return mean + temperature * std * noise


def _compare(got, want, where: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{where}: ddpm_step must return a tensor, got {type(got).__name__}")
    if got.shape != want.shape:
        raise AssertionError(f"{where}: ddpm_step returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{where}: ddpm_step returned inf or nan")
    err = float((got.double() - want.double()).abs().max())
    tol = 1e-6 * (1.0 + float(want.double().abs().max()))
    if err > tol:
        raise AssertionError(f"{where}: largest difference from the library {err:.3g}")


@checked
def check_ddpm_step(ddpm_step):
    """ddpm_step against the library: single steps at the top, middle and bottom of respaced schedules, with
    and without noise and clipping, then a whole 10-step trajectory of a random head replayed step by step."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        head = DiffusionHead(data_dim=4, cond_dim=3, width=16, depth=1).double()
        head.alpha_bar = head.alpha_bar.double()  # the check runs in float64: every exact form of the step agrees
        for p in head.parameters():  # random weights everywhere, so the predicted noise is not zero
            p.data = 0.3 * torch.randn_like(p)
        head.x0_bound.fill_(2.5)
        g = torch.Generator().manual_seed(0)

        # 1. single steps
        x, eps, noise = (torch.randn(64, 4, dtype=torch.float64, generator=g) for _ in range(3))
        for steps in (50, 5):
            t, a_all, a_next_all = head.respaced(steps)
            for i, place in ((0, "first"), (steps // 2, "middle"), (steps - 2, "second-to-last")):
                a, a_next = a_all[i], a_next_all[i]
                for temperature in (1.0, 0.7, 0.0):
                    for bound in (float("inf"), 2.5):
                        if i == 0 and bound == float("inf"):
                            continue  # at the top sqrt(alpha_bar) ~ 5e-5: unclipped x0_hat is meaningless there
                        want = _library_step(x, eps, a, a_next, noise, temperature, bound)
                        got = ddpm_step(x.clone(), eps.clone(), a, a_next, noise.clone(), temperature, bound)
                        where = (
                            f"{place} of {steps} steps (t = {int(t[i])}, alpha_bar {float(a):.4g} -> "
                            f"{float(a_next):.4g}), temperature {temperature}, bound {bound}"
                        )
                        unclipped = _library_step(x, eps, a, a_next, noise, temperature)
                        if bound < float("inf") and isinstance(got, torch.Tensor) and got.shape == want.shape:
                            if not torch.allclose(got, want) and torch.allclose(got, unclipped):
                                raise AssertionError(f"{where}: x0_hat must be clamped to [-bound, bound]")
                        if temperature == 0.0 and isinstance(got, torch.Tensor) and got.shape == want.shape:
                            if not torch.allclose(got, want, atol=1e-6):
                                raise AssertionError(
                                    f"{where}: at temperature 0 the step is the posterior mean (no noise); "
                                    f"largest difference {float((got - want).abs().max()):.3g}"
                                )
                        _compare(got, want, where)

        # 2. the last step: alpha_bar_next = 1, the posterior is a point mass at x0_hat, no noise is added
        a, a_next = head.respaced(50)[1][-1], torch.tensor(1.0, dtype=torch.float64)
        x0_hat = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-2.5, 2.5)
        got = ddpm_step(x.clone(), eps.clone(), a, a_next, noise.clone(), 1.0, 2.5)
        if isinstance(got, torch.Tensor) and got.shape == x0_hat.shape and not torch.allclose(got, x0_hat, atol=1e-6):
            raise AssertionError(
                "at the last step (alpha_bar_next = 1) the step must return the clean token x0_hat itself, "
                "with no noise added (the posterior's std is 0 there); "
                f"largest difference {float((got - x0_hat).abs().max()):.3g}"
            )

        # 3. a whole trajectory: DiffusionHead.sample replayed with the same noise draws
        z = torch.randn(8, 3, dtype=torch.float64, generator=g)
        for temperature in (1.0, 0.5):
            old_default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)  # the head's own noise draws in float64 too
            try:
                _, path = head.sample(
                    z,
                    diffusion_steps=10,
                    temperature=temperature,
                    generator=torch.Generator().manual_seed(1),
                    return_trajectory=True,
                )
                replay = torch.Generator().manual_seed(1)
                xs = torch.randn(8, 4, generator=replay)
                for k, (t, a, a_next) in enumerate(zip(*head.respaced(10))):
                    eps = head(xs, t.expand(8), z)
                    xs = ddpm_step(xs, eps, a, a_next, torch.randn(8, 4, generator=replay), temperature, 2.5)
                    _compare(xs, path[k + 1], f"10-step trajectory at temperature {temperature}, step {k + 1}")
            finally:
                torch.set_default_dtype(old_default)
