"""Notebook 13's implement-it check: the worked solution passes, each typical slip of a residual draw is named."""

import pytest
import torch
from conftest import solution_function

from minigen.exercises.continuous_speculative import SLIPS, check_residual_draw


def planted(slip=None):
    """A residual draw of two Gaussians by acceptance-rejection with one typical slip; slip=None is right."""

    def residual_draw(mean_p, mean_q, std, generator=None):
        sd = 1.0 if slip == "std" else std
        out = torch.zeros_like(mean_p)
        todo = torch.arange(len(mean_p))
        while len(todo):
            y = mean_p[todo] + sd * torch.randn(len(todo), mean_p.shape[1], generator=generator)
            log_p = -0.5 * ((y - mean_p[todo]) / sd).square().sum(-1)
            log_q = -0.5 * ((y - mean_q[todo]) / sd).square().sum(-1)
            if slip == "ratio upside down":
                log_p, log_q = log_q, log_p
            keep = torch.rand(len(todo), generator=generator) < (1 - (log_q - log_p).exp()).clamp(min=0)
            if slip == "no rejection":
                keep[:] = True
            out[todo[keep]] = y[keep]
            todo = todo[~keep]
            if slip == "one try":
                break
        return out

    return residual_draw


def test_the_worked_solution_and_a_right_answer_pass():
    assert check_residual_draw(solution_function("13_continuous_speculative.ipynb", "residual_draw")) is True
    assert check_residual_draw(planted()) is True


@pytest.mark.parametrize("slip", list(SLIPS))
def test_each_slip_is_named(slip):
    with pytest.raises(AssertionError, match=SLIPS[slip][:40].replace("(", r"\(").replace(")", r"\)")):
        check_residual_draw(planted(slip))


def test_the_stub_is_reported_not_raised(capsys):
    def residual_draw(mean_p, mean_q, std, generator=None):
        raise NotImplementedError  # your code here

    assert check_residual_draw(residual_draw) is False
    assert "not implemented yet" in capsys.readouterr().out
