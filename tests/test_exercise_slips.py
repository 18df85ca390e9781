"""Every implement-it check answers a learner's typical slip with one AssertionError saying what the function did
and what was expected: never a TypeError from inside the check."""

import pytest
import torch

from minigen.exercises.arnet import check_regulariser
from minigen.exercises.diffusion_ar import check_ddpm_step
from minigen.exercises.masked_ar import check_masked_counts
from minigen.exercises.pixel_ar import check_gated_layer
from minigen.exercises.scale_ar import check_multiscale_quantize
from minigen.exercises.speculative import check_verify
from minigen.exercises.token_ar import check_sample_tokens
from minigen.exercises.tokenizers import check_quantize

CHECKS = [
    check_regulariser,
    check_ddpm_step,
    check_masked_counts,
    check_gated_layer,
    check_multiscale_quantize,
    check_verify,
    check_sample_tokens,
    check_quantize,
]


def forgot_return(*args, **kwargs):
    _ = args  # computes, then falls off the end


SLIPS = {
    "forgot return": forgot_return,
    "tuple of None": lambda *a, **k: (None, None),
    "triple of None": lambda *a, **k: (None, None, None),
    "a string": lambda *a, **k: "done",
    "a number": lambda *a, **k: 3,
    "a list of None": lambda *a, **k: [None] * 4,
    "an empty tensor": lambda *a, **k: torch.empty(0),
    "a wrong-shape tensor": lambda *a, **k: torch.zeros(2, 3, 5),
    "raises": lambda *a, **k: 1 / 0,
}


@pytest.mark.parametrize("slip", list(SLIPS))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_a_slip_gets_an_assertion_that_says_what_the_function_did(check, slip):
    fn = SLIPS[slip]
    fn.__name__ = "my_function"
    with pytest.raises(AssertionError) as caught:
        check(fn)
    message = str(caught.value)
    if slip in ("forgot return", "tuple of None", "triple of None"):
        assert "forget `return`" in message, message
    if slip == "raises":
        assert "my_function raised ZeroDivisionError" in message
