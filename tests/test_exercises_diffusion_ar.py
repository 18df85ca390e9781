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
        x0_hat = (x - sign * root * eps) / a.sqrt()
        if mistake != "clamp the output":
            x0_hat = x0_hat.clamp(-bound, bound)
        x0_coef = (a if mistake == "sqrt(a) for sqrt(a_next)" else a_next).sqrt() * (1 - alpha)
        mean = (x0_coef * x0_hat + alpha.sqrt() * (1 - a_next) * x) / (1 - a)
        var = (1 - alpha) * (1 - a_next) / (1 - a)
        if mistake == "noise at the last step":
            var = 1 - alpha  # DDPM's other choice sigma^2 = beta: not the posterior's, and > 0 at the last step
        if mistake == "temperature squared":
            temperature = temperature**2
        if mistake == "temperature ignored":
            temperature = 1.0
        out = mean + temperature * var.sqrt() * noise
        return out.clamp(-bound, bound) if mistake == "clamp the output" else out

    return ddpm_step


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_ddpm_step(solution_function("06_diffusion_ar.ipynb", "ddpm_step")) is True
    assert check_ddpm_step(planted(None)) is True
    mistakes = ("alpha_bar for alpha", "missing sqrt", "wrong sign", "noise at the last step", "temperature squared")
    for mistake in mistakes:
        with pytest.raises(AssertionError):
            check_ddpm_step(planted(mistake))


NAMED = {  # mistake: what the check must say about it
    "sqrt(a) for sqrt(a_next)": "the x0_hat term has sqrt(alpha_bar_t) where the posterior mean has "
    "sqrt(alpha_bar_next)",
    "alpha_bar for alpha": "beta_t was taken as 1 - alpha_bar_t",
    "missing sqrt": "x0_hat subtracts (1 - alpha_bar_t) eps",
    "wrong sign": "x0_hat adds the predicted noise",
    "noise at the last step": "that is sqrt(beta_t), DDPM's other choice sigma^2 = beta_t",
    "temperature squared": "the temperature was squared",
    "temperature ignored": "the temperature was ignored",
    "clamp the output": "your step clamps its output; x0_hat",
}


@pytest.mark.parametrize("mistake", list(NAMED))
def test_each_planted_mistake_is_named(mistake):
    with pytest.raises(AssertionError) as caught:
        check_ddpm_step(planted(mistake))
    assert NAMED[mistake] in str(caught.value), str(caught.value)


def test_the_noise_scale_is_measured_per_unit_of_noise():
    with pytest.raises(AssertionError) as caught:
        check_ddpm_step(planted("temperature ignored"))
    message = str(caught.value)
    assert message.startswith("middle of 5 steps (alpha_bar 0.4923 -> 0.8459), temperature 0.7: the noise is scaled")
    assert "expected temperature * std = 0.249349" in message, message


def test_a_mean_off_in_no_known_way_names_its_coefficients():
    def ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
        return planted(None)(1.01 * x, eps, a, a_next, noise, temperature, bound)  # the x term 1% too large

    with pytest.raises(AssertionError) as caught:
        check_ddpm_step(ddpm_step)
    message = str(caught.value)
    assert "the posterior mean's coefficient on x is" in message and "on eps" in message, message
    assert "the eps coefficient is right" in message


def test_float32_is_named():
    def ddpm_step(x, eps, a, a_next, noise, temperature=1.0, bound=float("inf")):
        return planted(None)(x, eps, a, a_next, noise, temperature, bound).float()

    with pytest.raises(AssertionError, match="returned torch.float32 for float64 inputs"):
        check_ddpm_step(ddpm_step)


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
