"""Checks for notebook 11's implement-it exercise: a flow sampler on any time grid.

The learner writes `flow_sample(velocity, x1, times, method="euler")`: from the noise x1 at times[0] = 1, step
along the decreasing grid `times` down to times[-1] = 0 with dx/dt = velocity(x, t), by Euler steps or by Heun's
(two slopes averaged, except on the last step to t = 0, which stays Euler, as in `minigen.flow_ar.integrate`).
On an even grid the answer must equal the library's `integrate`; on an uneven one, it must reach a Gaussian
target's closed form; the typical slips (a sign, the slope taken at the wrong end, Heun without its predictor,
the grid ignored) are named.
"""

from __future__ import annotations

import torch

from minigen.exercises import checked
from minigen.flow_ar import integrate


def gaussian_velocity(mu: float, sigma: float):
    """The exact velocity E[eps - x | x_t] of the straight path x_t = (1 - t) x + t eps, x ~ N(mu, sigma^2):
    integrated from t = 1 to 0 it carries noise eps to mu + sigma * eps."""

    def velocity(x, t):
        var = (1 - t) ** 2 * sigma**2 + t**2
        centred = x - (1 - t) * mu
        return t / var * centred - (mu + (1 - t) * sigma**2 / var * centred)

    return velocity


def _reference(velocity, x, times, method, slip=None):
    """The sampler on any grid, or with one typical slip, for naming what a learner's answer did."""
    for t, t_next in zip(times[:-1], times[1:]):
        dt = t_next - t  # negative: time runs from noise (1) to data (0)
        v = velocity(x, t_next if slip == "slope at the end" else t)
        if method == "heun" and (t_next > 0 or slip == "heun on the last step"):
            ahead = x if slip == "no predictor" else x + dt * v
            v = 0.5 * (v + velocity(ahead, t_next))
        x = x - dt * v if slip == "sign" else x + dt * v
    return x


SLIPS = {
    "sign": "the step went against the velocity (x - dt v with dt = t_next - t < 0, or -dt): the velocity points "
    "from data to noise, so going from t = 1 to t = 0 is x + (t_next - t) v",
    "slope at the end": "the slope was taken at t_next: Euler evaluates the velocity where the step starts, at t",
    "no predictor": "Heun's second slope was taken at the starting point: take it at the Euler prediction "
    "x + (t_next - t) v, at time t_next",
    "heun on the last step": "Heun also averaged on the last step, to t = 0: keep that step Euler, as "
    "minigen.flow_ar.integrate does (it saves a call: at t = 0 the ideal velocity is just -x, since E[eps | x] = 0, "
    "so that slope carries nothing the model learned)",
    "uniform grid": "the steps ignored `times` (an even grid was used): step from each time to the next one given",
}


def _field():
    """A velocity field with curvature in x and t (float64), so that every slip changes the answer."""
    exact = gaussian_velocity(1.5, 0.4)
    return lambda x, t: exact(x, t) + 0.3 * torch.sin(3 * x) * t


def _name_the_slip(got, velocity, x1, times, method, where):
    for slip in ("sign", "slope at the end", "no predictor", "heun on the last step"):
        if method == "euler" and slip in ("no predictor", "heun on the last step"):
            continue
        twin = _reference(velocity, x1, times, method, slip)
        if torch.allclose(got.double(), twin, atol=1e-6):
            raise AssertionError(f"{where}: {SLIPS[slip]}")
    even = torch.linspace(1.0, 0.0, len(times)).tolist()
    if even != times and torch.allclose(got.double(), _reference(velocity, x1, even, method), atol=1e-6):
        raise AssertionError(f"{where}: {SLIPS['uniform grid']}")
    if method == "heun" and torch.allclose(got.double(), _reference(velocity, x1, times, "euler"), atol=1e-6):
        raise AssertionError(f"{where}: method='heun' gave Euler's answer: average two slopes on each step")


def _compare(got, want, velocity, x1, times, method, where):
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{where}: flow_sample must return a tensor, got {type(got).__name__}")
    if got.shape != want.shape:
        raise AssertionError(f"{where}: flow_sample returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = float((got.double() - want).abs().max())
    if err > 1e-6 * (1 + float(want.abs().max())):
        _name_the_slip(got, velocity, x1, times, method, where)
        raise AssertionError(f"{where}: largest difference from the expected states {err:.3g}")


@checked(compares_with=(integrate,))
def check_flow_sample(flow_sample):
    """flow_sample(velocity, x1, times, method) returns the state at times[-1] (a tensor shaped like x1): equal to
    minigen.flow_ar.integrate on even grids, right on uneven ones, with one velocity call per Euler step."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(64, 7, 4, generator=g, dtype=torch.float64)
    velocity = _field()
    for method in ("euler", "heun"):
        # 1. even grids: exactly the library's integrate, counting the velocity calls
        for steps in (1, 2, 5, 25):
            calls = []
            counted = lambda x, t: calls.append(t) or velocity(x, t)
            times = torch.linspace(1.0, 0.0, steps + 1).tolist()
            got = flow_sample(counted, x1.clone(), times, method)
            want = integrate(velocity, x1, steps, method)
            _compare(got, want, velocity, x1, times, method, f"{method}, {steps} even steps")
            expected_calls = steps if method == "euler" else 2 * steps - 1
            if len(calls) != expected_calls:
                raise AssertionError(
                    f"{method}, {steps} even steps: {len(calls)} velocity calls, expected {expected_calls} "
                    "(Heun: two per step, one on the last step to t = 0)"
                )
        # 2. an uneven grid (fine near the data, as DiSA-like schedules are): the reference on that grid
        times = [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0]
        got = flow_sample(velocity, x1.clone(), times, method)
        _compare(got, _reference(velocity, x1, times, method), velocity, x1, times, method, f"{method}, uneven grid")
    # 3. many steps on the exact Gaussian field reach its closed form mu + sigma * x1
    times = torch.linspace(1.0, 0.0, 401).tolist()
    got = flow_sample(gaussian_velocity(1.5, 0.4), x1.clone(), times, "euler")
    err = float((got.double() - (1.5 + 0.4 * x1)).abs().max())
    if err > 1e-2:
        raise AssertionError(f"400 Euler steps on a Gaussian target end {err:.3g} from its closed form mu + sigma x1")
