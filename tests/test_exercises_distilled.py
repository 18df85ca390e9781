"""Notebook 12's implement-it check: the worked solution passes, each typical slip of the velocity is named."""

import pytest
import torch
from conftest import solution_function

from minigen.exercises.distilled import SLIPS, _reference, check_token_velocity


def test_the_worked_solution_and_the_reference_pass():
    assert check_token_velocity(solution_function("12_fewer_passes.ipynb", "token_velocity")) is True
    assert check_token_velocity(lambda x, t, probs, codes: _reference(x, t, probs, codes)) is True


@pytest.mark.parametrize("slip", list(SLIPS))
def test_each_slip_is_named(slip):
    with pytest.raises(AssertionError, match=SLIPS[slip][:25].replace("(", r"\(")):
        check_token_velocity(lambda x, t, probs, codes: _reference(x, t, probs, codes, slip))


def test_a_velocity_pulled_by_an_impossible_code_fails():
    def unweighted_at_late_times(x, t, probs, codes):  # right until the prior matters most
        return _reference(x, t, torch.full_like(probs, 1 / probs.shape[1]) if t < 0.1 else probs, codes)

    with pytest.raises(AssertionError, match="probability 0|prior"):
        check_token_velocity(unweighted_at_late_times)


def test_the_stub_is_reported_not_raised(capsys):
    def token_velocity(x, t, probs, codes):
        raise NotImplementedError  # your code here

    assert check_token_velocity(token_velocity) is False
    assert "not implemented yet" in capsys.readouterr().out
