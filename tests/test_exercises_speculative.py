"""The implement-it check of notebook 07 passes the worked solution and catches the usual mistakes."""

import pytest
import torch
from conftest import solution_function

from minigen.exercises.speculative import check_verify


def planted(bug):
    """The textbook verify with one planted mistake."""

    def verify(p, q, drafts, dice):
        B, g = drafts.shape
        p_x = p[:, :g].gather(-1, drafts[..., None])[..., 0]
        q_x = q.gather(-1, drafts[..., None])[..., 0]
        ratio = q_x / p_x if bug == "q/p" else p_x / q_x
        kept = dice.coin(ratio.clamp(max=1.0))
        if bug == "accept after a rejection":
            accepted = kept.long().sum(1)
        else:
            accepted = kept.long().cumprod(1).sum(1)
        if bug == "off by one":
            accepted = (accepted - 1).clamp(min=0)
        rows = torch.arange(B)
        at = accepted.clamp(max=g - 1)
        left = (p[rows, at] - q[rows, at]).clamp(min=0)
        dist = left if bug == "residual not normalised" else left / left.sum(-1, keepdim=True).clamp(min=1e-300)
        if bug == "residual from p":
            dist = p[rows, at]
        if bug != "no bonus token":
            dist = torch.where((accepted == g)[:, None], p[:, g], dist)
        return accepted, dice.categorical(dist)

    return verify


def test_the_worked_solution_passes():
    assert check_verify(solution_function("07_speculative.ipynb", "verify")) is True
    assert check_verify(planted(None)) is True


@pytest.mark.parametrize(
    "bug, message",
    [
        ("no bonus token", "bonus token"),
        ("residual not normalised", "normalise the residual"),
        ("residual from p", "norm(max(0, p - q))"),
        ("q/p", "min(1, q/p)"),
        ("accept after a rejection", "before the first rejection"),
        ("off by one", "before the first rejection"),
    ],
)
def test_planted_mistakes_fail_with_a_message_that_names_them(bug, message):
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_verify(planted(bug))


def test_the_stub_is_reported_not_raised(capsys):
    def verify(p, q, drafts, dice):
        raise NotImplementedError  # your code here

    assert check_verify(verify) is False
    assert "not implemented yet" in capsys.readouterr().out
