import pytest
from conftest import solution_function

from minigen.exercises.pixel_ar import _variant, check_gated_layer


def planted(**mistake):
    """A hand-written layer with one typical mistake switched on: the check's own variant, which is written out
    independently of the library's GatedLayer that the check compares against."""
    return lambda layer, v, h, labels: _variant(layer, v, h, labels, **mistake)


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_gated_layer(solution_function("01_pixel_ar.ipynb", "gated_layer")) is True
    assert check_gated_layer(planted()) is True  # the planted versions differ from it only by their mistake
    for mistake, says in [
        (dict(swap_gates=True), "swapped"),
        (dict(shift_link=False), "shift_down"),
        (dict(mask_a=False), "mask A"),
        (dict(residual=False), "residual"),
    ]:
        with pytest.raises(AssertionError, match=says):
            check_gated_layer(planted(**mistake))


def test_a_wrong_return_value_is_reported():
    with pytest.raises(AssertionError, match="return"):
        check_gated_layer(lambda layer, v, h, labels: layer(v, h, labels)[0])


def test_the_stub_is_reported_not_raised(capsys):
    def gated_layer(layer, v, h, labels):
        raise NotImplementedError

    assert check_gated_layer(gated_layer) is False
    assert "not implemented yet" in capsys.readouterr().out
