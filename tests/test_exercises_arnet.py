import pytest
import torch
from conftest import solution_function

from minigen.exercises.arnet import check_regulariser


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    solution = solution_function("08_arnet.ipynb", "regulariser")
    assert check_regulariser(solution) is True

    def no_minus_one(weight, c1=3.0, c2=3.0):  # forgets the constant that makes R(0) = 0
        return (2 / (1 + torch.exp(-c1 * (weight.abs() + 1e-12) ** (1 / c2)))).mean()

    def wrong_sign(weight, c1=3.0, c2=3.0):  # exp(+...) instead of exp(-...)
        return (2 / (1 + torch.exp(c1 * (weight.abs() + 1e-12) ** (1 / c2))) - 1).mean()

    def summed(weight, c1=3.0, c2=3.0):  # a sum over the weights, not a mean
        return (2 * torch.sigmoid(c1 * (weight.abs() + 1e-12) ** (1 / c2)) - 1).sum()

    def power_not_root(weight, c1=3.0, c2=3.0):  # |w|^c2 instead of |w|^(1/c2)
        return (2 * torch.sigmoid(c1 * (weight.abs() + 1e-12) ** c2) - 1).mean()

    def detached(weight, c1=3.0, c2=3.0):  # right value, no gradient
        return solution(weight.detach(), c1, c2)

    def first_row_only(weight, c1=3.0, c2=3.0):  # ignores the other forecast horizons
        return solution(weight[:1], c1, c2)

    for wrong in (no_minus_one, wrong_sign, summed, power_not_root, detached, first_row_only):
        with pytest.raises(AssertionError):
            check_regulariser(wrong)


def test_the_stub_is_reported_not_raised(capsys):
    def regulariser(weight, c1=3.0, c2=3.0):
        raise NotImplementedError

    assert check_regulariser(regulariser) is False
    assert "not implemented yet" in capsys.readouterr().out
