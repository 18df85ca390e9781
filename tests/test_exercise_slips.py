"""Every implement-it check answers a learner's typical slip with one AssertionError saying what the function did
and what was expected: never a TypeError from inside the check. That error is an ExerciseFailed, which a notebook
shows as its message alone, without the checker's traceback."""

import contextlib
import io

import pytest
import torch

from minigen.exercises import ExerciseFailed
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
    assert type(caught.value) is ExerciseFailed
    message = str(caught.value)
    if slip in ("forgot return", "tuple of None", "triple of None"):
        assert "forget `return`" in message, message
    if slip == "raises":
        assert "my_function raised ZeroDivisionError" in message


def wrong_regulariser(weight, c1=3.0, c2=3.0):
    return weight.abs().mean()  # no squashing: R(0.5) = 0.5


def test_a_failure_renders_as_its_message_alone():
    with pytest.raises(ExerciseFailed) as caught:
        check_regulariser(wrong_regulariser)
    error = caught.value
    assert isinstance(error, AssertionError)  # what pytest and `except AssertionError` see
    assert error.__cause__ is None and error.__suppress_context__  # raised `from None`: no chained traceback
    shown = error._render_traceback_()  # what IPython prints instead of the traceback
    assert shown == [f"ExerciseFailed: {error}"]
    assert "the library gives" in shown[0]
    assert not any("Traceback" in line or 'File "' in line or "check(recorded)" in line for line in shown)
    assert ExerciseFailed("first\nsecond")._render_traceback_() == ["ExerciseFailed: first", "second"]


def test_ipython_shows_the_message_without_the_checker_s_frames(tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell(config=config)
    shell.user_ns["wrong_regulariser"] = wrong_regulariser
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = shell.run_cell(
            "from minigen.exercises.arnet import check_regulariser\ncheck_regulariser(wrong_regulariser);"
        )
    assert isinstance(result.error_in_exec, ExerciseFailed)
    assert out.getvalue().strip() == f"ExerciseFailed: {result.error_in_exec}", out.getvalue()
    assert "Traceback" not in out.getvalue() + err.getvalue()
