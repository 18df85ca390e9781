"""Notebook 02's implement-it check: the worked solution passes, typical mistakes fail, the stub is reported."""

import pytest
import torch
import torch.nn.functional as F
from conftest import solution_function

from minigen.exercises.tokenizers import check_quantize


def planted(straight_through=True, swap_weights=False, detach_losses=True, argmin_dim=1, permute=True):
    """The worked solution with one mistake switched on."""

    def quantize(z, codebook, beta=0.25):
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D) if permute else z.reshape(-1, D)
        dist = torch.cdist(flat.detach(), codebook.detach())  # (N, K)
        codes = dist.argmin(argmin_dim)
        quant = codebook[codes]
        if not detach_losses:
            loss = (1 + beta) * F.mse_loss(quant, flat)
        elif swap_weights:
            loss = beta * F.mse_loss(quant, flat.detach()) + F.mse_loss(flat, quant.detach())
        else:
            loss = F.mse_loss(quant, flat.detach()) + beta * F.mse_loss(flat, quant.detach())
        if straight_through:
            quant = flat + (quant - flat).detach()
        n = codes.numel()
        return quant.reshape(B, h, w, D).permute(0, 3, 1, 2) if n == B * h * w else quant, codes.view(B, h, w), loss

    return quantize


def test_the_worked_solution_passes_and_planted_mistakes_fail():
    assert check_quantize(solution_function("02_vq_tokenizer.ipynb", "quantize")) is True
    assert check_quantize(planted()) is True  # the planted family is right with every mistake off
    for mistake in (
        dict(straight_through=False),  # no stop-gradient: the decoder's gradient never reaches z
        dict(swap_weights=True),  # beta on the codebook term instead of the commitment term
        dict(detach_losses=False),  # one loss without stop-gradients: both terms move both sides
        dict(permute=False),  # channels not moved last: vectors mixed across positions
    ):
        with pytest.raises(AssertionError):
            check_quantize(planted(**mistake))


def test_argmin_over_the_wrong_axis_fails():
    def quantize(z, codebook, beta=0.25):
        dist = (z[:, None] - codebook[None, :, :, None, None]).square().sum(2)  # (B, K, h, w)
        codes = dist.argmin(0)  # over the batch, not over the codes
        quant = codebook[codes].permute(0, 3, 1, 2)
        return quant, codes, quant.square().mean()

    with pytest.raises(AssertionError, match="codes must have shape"):
        check_quantize(quantize)


def test_the_stub_is_reported_not_raised(capsys):
    def quantize(z, codebook, beta=0.25):
        raise NotImplementedError

    assert check_quantize(quantize) is False
    assert "not implemented yet" in capsys.readouterr().out
