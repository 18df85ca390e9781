import pytest
import torch
import torch.nn.functional as F
from conftest import solution_function

from minigen.exercises.pixel_ar import check_gated_layer
from minigen.pixel_ar import shift_down, shift_right


def planted(swap_gates=False, shift_link=True, mask_a=True, residual=True):
    """A hand-written layer with one typical mistake switched on."""

    def gated_layer(layer, v, h, labels):
        k = layer.k
        v_pre = layer.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))
        h_in = shift_right(h) if layer.first and mask_a else h
        link = shift_down(v_pre) if shift_link else v_pre
        h_pre = layer.h_conv(F.pad(h_in, (k // 2, 0, 0, 0))) + layer.v_to_h(link)
        if layer.cond is not None:
            cv, ch = layer.cond(labels)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + cv, h_pre + ch
        a, b = (torch.sigmoid, torch.tanh) if swap_gates else (torch.tanh, torch.sigmoid)
        fv, gv = v_pre.chunk(2, dim=1)
        fh, gh = h_pre.chunk(2, dim=1)
        gated = a(fh) * b(gh)
        h_new = layer.h_out(gated) + (h if residual and not layer.first else 0)
        return a(fv) * b(gv), h_new, layer.skip(gated)

    return gated_layer


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
