"""Notebook 11's implement-it check: the worked solution passes, each typical slip of a flow sampler is named."""

import pytest
from conftest import solution_function

from minigen.exercises.flow_ar import SLIPS, check_flow_sample


def planted(slip=None):
    """A flow sampler on any grid with one typical slip; slip=None is right."""

    def flow_sample(velocity, x1, times, method="euler"):
        if slip == "uniform grid":
            times = [1 - i / (len(times) - 1) for i in range(len(times))]
        x = x1
        for t, t_next in zip(times[:-1], times[1:]):
            dt = t_next - t
            v = velocity(x, t_next if slip == "slope at the end" else t)
            if method == "heun" and (t_next > 0 or slip == "heun on the last step"):
                v = 0.5 * (v + velocity(x if slip == "no predictor" else x + dt * v, t_next))
            if slip == "euler for heun":
                v = velocity(x, t)
            x = x - dt * v if slip == "sign" else x + dt * v
        return x

    return flow_sample


def test_the_worked_solution_and_a_right_answer_pass():
    assert check_flow_sample(solution_function("11_flow_ar.ipynb", "flow_sample")) is True
    assert check_flow_sample(planted()) is True


@pytest.mark.parametrize("slip", ["sign", "slope at the end", "no predictor", "heun on the last step", "uniform grid"])
def test_each_slip_is_named(slip):
    with pytest.raises(AssertionError, match=SLIPS[slip].split(":")[0][:30].replace("(", r"\(")):
        check_flow_sample(planted(slip))


def test_euler_for_heun_fails():
    with pytest.raises(AssertionError, match="Euler's answer|velocity calls"):
        check_flow_sample(planted("euler for heun"))


def test_the_stub_is_reported_not_raised(capsys):
    def flow_sample(velocity, x1, times, method="euler"):
        raise NotImplementedError  # your code here

    assert check_flow_sample(flow_sample) is False
    assert "not implemented yet" in capsys.readouterr().out
