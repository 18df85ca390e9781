"""Checks for notebook 06's implement-it exercise: one reverse step of MAR's diffusion head.

The learner writes `ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=inf)`, the body of the loop in
`DiffusionHead.sample`: from the noisy token and the predicted noise, the clean token they imply (kept within
+-bound), the DDPM posterior mean of the less noisy token, and the posterior's noise times the temperature.
The check first probes one step term by term (the output with no noise against the posterior mean, its change
per unit of noise against temperature * std) to name the term a wrong step gets wrong, then compares whole steps
and a whole trajectory with the library.
"""

from __future__ import annotations

import torch

from minigen.diffusion_ar import DiffusionHead
from minigen.exercises import checked


def _library_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf"), slip=None):
    """The loop body of DiffusionHead.sample, line for line (the check's reference on single steps), or the step
    with one typical slip in its mean (a key of MEAN_SLIPS), for naming what a learner's answer did."""
    beta = 1 - a if slip == "alpha_bar for alpha" else 1 - a / a_next
    root = 1 - a if slip == "no sqrt in x0_hat" else (1 - a).sqrt()
    x0_hat = x + root * eps if slip == "eps sign in x0_hat" else x - root * eps
    x0_hat = (x0_hat if slip == "x0_hat not divided" else x0_hat / a.sqrt()).clamp(-bound, bound)
    x0_coef = (a if slip == "sqrt(a) in the x0 term" else a_next).sqrt() * beta
    x_coef = (1 - beta if slip == "no sqrt on alpha_t" else (1 - beta).sqrt()) * (
        1 - a if slip == "1 - a on x" else 1 - a_next
    )
    mean = (x0_coef * x0_hat + x_coef * x) / (1 - a)
    std = (beta * (1 - a_next) / (1 - a)).sqrt()
    return mean + temperature * std * noise


MEAN_SLIPS = {
    "sqrt(a) in the x0 term": "the x0_hat term has sqrt(alpha_bar_t) where the posterior mean has "
    "sqrt(alpha_bar_next): mean = (sqrt(alpha_bar_next) beta_t x0_hat + sqrt(alpha_t) (1 - alpha_bar_next) x) "
    "/ (1 - alpha_bar_t)",
    "alpha_bar for alpha": "beta_t was taken as 1 - alpha_bar_t; on a respaced schedule this step's "
    "beta_t = 1 - alpha_t with alpha_t = alpha_bar_t / alpha_bar_next",
    "no sqrt on alpha_t": "the x term has alpha_t where the posterior mean has sqrt(alpha_t): "
    "sqrt(1 - beta_t) (1 - alpha_bar_next) / (1 - alpha_bar_t) x",
    "1 - a on x": "the x term has (1 - alpha_bar_t) where the posterior mean has (1 - alpha_bar_next): "
    "sqrt(alpha_t) (1 - alpha_bar_next) / (1 - alpha_bar_t) x",
    "no sqrt in x0_hat": "x0_hat subtracts (1 - alpha_bar_t) eps: the noise in x has the coefficient "
    "sqrt(1 - alpha_bar_t), so x0_hat = (x - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)",
    "eps sign in x0_hat": "x0_hat adds the predicted noise: x = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, "
    "so x0_hat = (x - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)",
    "x0_hat not divided": "x0_hat is not divided by sqrt(alpha_bar_t): x0_hat = (x - sqrt(1 - alpha_bar_t) eps) "
    "/ sqrt(alpha_bar_t)",
}

STD = "std = sqrt(beta_t (1 - alpha_bar_next) / (1 - alpha_bar_t))"  # the posterior's


def _usable(got, shape, where: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{where}: ddpm_step must return a tensor, got {type(got).__name__}")
    if got.shape != shape:
        raise AssertionError(f"{where}: ddpm_step returned shape {tuple(got.shape)}, expected {tuple(shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{where}: ddpm_step returned inf or nan")
    if got.dtype != torch.float64:
        raise AssertionError(
            f"{where}: ddpm_step returned {got.dtype} for float64 inputs: keep their dtype (no .float()); the "
            "check asks agreement to 1e-6, which float32 rounding misses near the top of the schedule"
        )
    return got


def _close(got, want) -> bool:
    """Agreement to 1e-6 of the largest value: what every exact form of the step reaches in float64."""
    return float((got - want).abs().max()) <= 1e-6 * (1.0 + float(want.abs().max()))


def _compare(got, want, where: str) -> None:
    got = _usable(got, want.shape, where)
    if not _close(got, want):
        err, top = float((got - want).abs().max()), float(want.abs().max())
        hint = " (a rounding-sized difference: computed in float32 somewhere?)" if err < 1e-4 * (1 + top) else ""
        raise AssertionError(f"{where}: largest difference from the library {err:.3g}{hint}")


def _name_the_term(ddpm_step, a, a_next, where: str, g: torch.Generator) -> None:
    """Probe one step term by term, and name the one that is off: the output with noise 0 must be the posterior
    mean (its coefficients on x and on eps), and its change per unit of noise the temperature times the std."""
    x, eps, noise = (torch.randn(64, 4, dtype=torch.float64, generator=g) for _ in range(3))
    zero, one = torch.zeros_like(x), torch.ones_like(x)

    def step(x, eps, noise, temperature):  # unclipped: the clamp is checked on its own later
        out = ddpm_step(x.clone(), eps.clone(), a, a_next, noise.clone(), temperature, float("inf"))
        return _usable(out, x.shape, where)

    # 1. the posterior mean: the output with no noise
    mean = _library_step(x, eps, a, a_next, zero)
    got = step(x, eps, zero, 1.0)
    if not _close(got, mean):
        for slip, text in MEAN_SLIPS.items():
            if _close(got, _library_step(x, eps, a, a_next, zero, slip=slip)):
                raise AssertionError(f"{where}, with noise 0 (the posterior mean): {text}")
        on_x, on_eps = step(one, zero, zero, 1.0), step(zero, one, zero, 1.0)
        want_x, want_eps = _library_step(one, zero, a, a_next, zero), _library_step(zero, one, a, a_next, zero)
        err = float((got - mean).abs().max())
        if not _close(got, on_x * x + on_eps * eps):
            raise AssertionError(
                f"{where}, with noise 0: your step is not the posterior mean, and not even linear in x and eps "
                f"(largest difference {err:.3g}); the mean is "
                "(sqrt(alpha_bar_next) beta_t x0_hat + sqrt(alpha_t) (1 - alpha_bar_next) x) / (1 - alpha_bar_t)"
            )
        cx, ce, wx, we = (float(v.mean()) for v in (on_x, on_eps, want_x, want_eps))
        terms = (
            f"the posterior mean's coefficient on x is {cx:.6g} (library {wx:.6g}), on eps {ce:.6g} (library {we:.6g})"
        )
        if _close(on_eps, want_eps):
            hint = (
                "the eps coefficient is right, so x0_hat's term is: look at the x term "
                "sqrt(alpha_t) (1 - alpha_bar_next) / (1 - alpha_bar_t) x"
            )
        elif _close(on_x, want_x):
            hint = (
                "the x coefficient is right: look at eps in "
                "x0_hat = (x - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)"
            )
        else:
            hint = (
                "both are off: look at x0_hat = (x - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) and its "
                "coefficient sqrt(alpha_bar_next) beta_t / (1 - alpha_bar_t)"
            )
        raise AssertionError(f"{where}, with noise 0: {terms}; {hint}")

    # 2. the noise: the output's change per unit of noise must be temperature * std
    std = float((1 - a / a_next) * (1 - a_next) / (1 - a)) ** 0.5
    beta = float(1 - a / a_next)
    for temperature in (1.0, 0.7, 0.0):
        out = step(x, eps, noise, temperature)
        scale = float(((out - mean) * noise).sum() / (noise * noise).sum())  # least squares: out - mean = scale noise
        if not _close(out, mean + scale * noise):
            raise AssertionError(
                f"{where}, temperature {temperature}: what your step adds to the posterior mean is not the noise "
                f"times one number; add temperature * std * noise with the posterior's {STD}"
            )
        want = temperature * std
        if abs(scale - want) <= 1e-6 * (1 + want):
            continue
        said = (
            f"{where}, temperature {temperature}: the noise is scaled by {scale:.6g}, expected temperature * std = "
            f"{want:.6g}, with the posterior's {STD}"
        )
        if temperature == 0.0:
            raise AssertionError(f"{said}: at temperature 0 the step is the posterior mean, no noise added")
        if temperature == 1.0:
            named = {
                0.0: "no noise was added",
                beta**0.5: "that is sqrt(beta_t), DDPM's other choice sigma^2 = beta_t; the posterior's std is "
                "smaller, and 0 at the last step",
                std**2: "that is the variance: take its square root",
            }
            fallback = "the noise term is temperature * std * noise"
        else:
            named = {
                std: "the temperature was ignored: multiply the noise by temperature * std",
                temperature**2 * std: "the temperature was squared: it multiplies the std once",
                temperature**0.5 * std: "the temperature scaled the variance: it multiplies the std",
                std / temperature: "the noise was divided by the temperature: multiply it",
            }
            fallback = "the noise must be temperature * std * noise"
        why = next((text for value, text in named.items() if abs(scale - value) <= 1e-6 * (1 + value)), fallback)
        raise AssertionError(f"{said}: {why}")


def _name_the_clamp(ddpm_step, got, args, bound: float, where: str) -> None:
    """A step that is wrong only with a bound (right without one) got the clamp wrong: say how."""
    x, eps, a, a_next, noise, temperature = args
    want = _library_step(*args, bound=bound)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or _close(got.double(), want):
        return
    if float((got - want).abs().max()) < 1e-4 * (1 + float(want.abs().max())):
        return  # a rounding-sized difference, not a clamp in the wrong place
    unclipped = _library_step(*args)
    free = ddpm_step(x.clone(), eps.clone(), a, a_next, noise.clone(), temperature, float("inf"))
    if not isinstance(free, torch.Tensor) or free.shape != want.shape or not _close(free.double(), unclipped):
        return  # wrong without a bound too: not (only) the clamp
    if _close(got.double(), unclipped):
        raise AssertionError(f"{where}: x0_hat must be clamped to [-bound, bound]; your step ignores the bound")
    if _close(got.double(), unclipped.clamp(-bound, bound)):
        raise AssertionError(
            f"{where}: your step clamps its output; x0_hat (the clean token the noise prediction implies) must be "
            "clamped to [-bound, bound], before the posterior mean is formed"
        )
    raise AssertionError(
        f"{where}: without a bound your step agrees, with bound {bound} it differs by up to "
        f"{float((got.double() - want).abs().max()):.3g}: clamp x0_hat, and only it, to [-bound, bound]"
    )


@checked(compares_with=(DiffusionHead.sample,))
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

        # 0. term by term, in the middle of 5 steps: the posterior mean (noise 0) and the noise's scale
        _, a_all, a_next_all = head.respaced(5)
        a, a_next = a_all[2], a_next_all[2]
        where = f"middle of 5 steps (alpha_bar {float(a):.4g} -> {float(a_next):.4g})"
        _name_the_term(ddpm_step, a, a_next, where, torch.Generator().manual_seed(1))

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
                        if bound < float("inf"):
                            _name_the_clamp(ddpm_step, got, (x, eps, a, a_next, noise, temperature), bound, where)
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
