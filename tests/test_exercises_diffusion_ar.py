"""Notebook 06's implement-it check: the worked solution passes, typical mistakes in a DDPM step fail."""

import pytest
from conftest import solution_function

from minigen.exercises.diffusion_ar import check_ddpm_step


def planted(mistake):
    """A DDPM step with one typical mistake; mistake=None is the correct step (in the epsilon-free form)."""

    def ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
        alpha = a / a_next  # this step's alpha_t = alpha_bar_t / alpha_bar_next
        if mistake == "alpha_bar for alpha":
            alpha = a
        root = (1 - a) if mistake == "missing sqrt" else (1 - a).sqrt()
        sign = -1 if mistake == "wrong sign" else 1
        x0_hat = ((x - sign * root * eps) / a.sqrt()).clamp(-bound, bound)
        mean = (a_next.sqrt() * (1 - alpha) * x0_hat + alpha.sqrt() * (1 - a_next) * x) / (1 - a)
        var = (1 - alpha) * (1 - a_next) / (1 - a)
        if mistake == "noise at the last step":
            var = 1 - alpha  # DDPM's other choice sigma^2 = beta: not the posterior's, and > 0 at the last step
        if mistake == "temperature squared":
            temperature = temperature**2
        return mean + temperature * var.sqrt() * noise

    return ddpm_step


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_ddpm_step(solution_function("06_diffusion_ar.ipynb", "ddpm_step")) is True
    assert check_ddpm_step(planted(None)) is True
    mistakes = ("alpha_bar for alpha", "missing sqrt", "wrong sign", "noise at the last step", "temperature squared")
    for mistake in mistakes:
        with pytest.raises(AssertionError):
            check_ddpm_step(planted(mistake))


def test_a_missing_clamp_is_named():
    def unclamped(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
        return planted(None)(x, eps, a, a_next, noise, temperature)

    with pytest.raises(AssertionError, match="clamped"):
        check_ddpm_step(unclamped)


def test_the_stub_is_reported_not_raised(capsys):
    def ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
        raise NotImplementedError  # your code here

    assert check_ddpm_step(ddpm_step) is False
    assert "not implemented yet" in capsys.readouterr().out
