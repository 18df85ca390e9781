"""Checks for notebook 08's implement-it exercise: AR-Net's sparsity regulariser R(w)."""

from __future__ import annotations

import torch

from minigen.arnet import ARNet, ARNetConfig
from minigen.exercises import checked


def library_regulariser(weight: torch.Tensor, c1: float = 3.0, c2: float = 3.0) -> torch.Tensor:
    """The library's R(w): `ARNet.regulariser` of a model whose first-layer weight is `weight` (n_forecasts, p)."""
    h, p = weight.shape
    model = ARNet(ARNetConfig(p=p, n_forecasts=h, c1=c1, c2=c2))
    with torch.no_grad():
        model.net[0].weight.copy_(weight)
    value = model.regulariser()
    (grad,) = torch.autograd.grad(value, model.net[0].weight)
    return value.detach(), grad


@checked(compares_with=(ARNet.regulariser,))
def check_regulariser(regulariser):
    """`regulariser(weight, c1=3.0, c2=3.0)` must give the library's R(w) and its gradient: the mean over every
    entry of the weight matrix of 2 / (1 + exp(-c1 |w|^(1/c2))) - 1."""
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("one weight of 0.5", torch.tensor([[0.5]]), 3.0, 3.0),
        ("ten random weights", torch.randn(1, 10, generator=gen) * 0.5, 3.0, 3.0),
        ("mixed signs, tiny and large", torch.tensor([[-0.8, 1e-4, 0.02, -0.3, 2.0]]), 3.0, 3.0),
        ("c1 = 2, c2 = 1 (no root)", torch.randn(1, 7, generator=gen), 2.0, 1.0),
        ("c1 = 5, c2 = 2", torch.randn(1, 7, generator=gen) * 0.1, 5.0, 2.0),
        ("three forecasts x 6 lags", torch.randn(3, 6, generator=gen) * 0.3, 3.0, 3.0),
        ("100 lags, mostly near zero", torch.randn(1, 100, generator=gen) * 0.01, 3.0, 3.0),
    ]
    for name, w, c1, c2 in cases:
        want, want_grad = library_regulariser(w, c1, c2)
        weight = w.clone().requires_grad_(True)
        got = regulariser(weight, c1=c1, c2=c2)
        assert torch.is_tensor(got), f"{name}: return a tensor (so it can be back-propagated), got {type(got).__name__}"
        assert got.dim() == 0, f"{name}: R(w) is one number (a 0-d tensor), got shape {tuple(got.shape)}"
        assert got.requires_grad, f"{name}: the result does not depend on the weight through autograd (detached?)"
        value, ref = got.item(), want.item()
        why = (
            " (about p times larger: a sum instead of a mean?)"
            if abs(value - w.numel() * ref) < 1e-4 and w.numel() > 1
            else " (off by one: the '- 1' that makes R(0) = 0?)"
            if abs(value - ref - 1) < 1e-4
            else " (negative: the sign inside exp?)"
            if value < 0
            else ""
        )
        assert torch.isclose(got.detach(), want, rtol=1e-4, atol=1e-6), (
            f"{name}: R = {value:.6f}, the library gives {ref:.6f}{why}"
        )
        (grad,) = torch.autograd.grad(got, weight)
        assert torch.allclose(grad, want_grad, rtol=1e-3, atol=1e-5), (
            f"{name}: the gradient differs from the library's by up to {(grad - want_grad).abs().max().item():.3g}"
        )
    zero = regulariser(torch.zeros(1, 4, requires_grad=True))
    assert abs(zero.item()) < 1e-3, f"an all-zero weight must cost (almost) nothing, got R = {zero.item():.4f}"
