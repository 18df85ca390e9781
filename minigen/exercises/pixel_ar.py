"""Checks for notebook 01's implement-it exercise: one layer of the Gated PixelCNN (both stacks, the gates,
the shifted vertical-to-horizontal link, the residual), compared with `minigen.pixel_ar.GatedLayer`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigen.exercises import checked
from minigen.pixel_ar import GatedLayer, shift_down, shift_right

# (in_ch, ch, k, n_classes, first): a first layer (mask A, no residual) and later ones, with and without classes
CASES = [(1, 4, 3, 0, True), (1, 4, 5, 3, True), (4, 4, 3, 0, False), (4, 4, 5, 3, False)]


def _variant(layer, v, h, labels, swap_gates=False, shift_link=True, mask_a=True, residual=True):
    """The library's layer, or one of the typical mistakes, to say what a wrong answer got wrong."""
    k = layer.k
    v_pre = layer.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))
    h_in = shift_right(h) if layer.first and mask_a else h
    link = shift_down(v_pre) if shift_link else v_pre
    h_pre = layer.h_conv(F.pad(h_in, (k // 2, 0, 0, 0))) + layer.v_to_h(link)
    if layer.cond is not None:
        cv, ch = layer.cond(labels)[:, :, None, None].chunk(2, dim=1)
        v_pre, h_pre = v_pre + cv, h_pre + ch

    def gate(x):
        f, g = x.chunk(2, dim=1)
        return torch.sigmoid(f) * torch.tanh(g) if swap_gates else torch.tanh(f) * torch.sigmoid(g)

    gated = gate(h_pre)
    h_new = layer.h_out(gated) + (h if residual and not layer.first else 0)
    return gate(v_pre), h_new, layer.skip(gated)


MISTAKES = {
    "tanh and sigmoid are swapped: tanh goes on the first half of the channels (f), sigmoid on the second (g)": dict(
        swap_gates=True
    ),
    "the link v_to_h gets v_pre without shift_down: pixel (r, c) then sees its own row, right of c included": dict(
        shift_link=False
    ),
    "the first layer's horizontal input is not shifted right (mask A): pixel (r, c) then sees itself": dict(
        mask_a=False
    ),
    "the residual (+ h) on the horizontal stack is missing in a layer after the first": dict(residual=False),
}


def _diagnose(layer, v, h, labels, got) -> str:
    for what, mistake in MISTAKES.items():
        wrong = _variant(layer, v, h, labels, **mistake)
        if all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, wrong)):
            return f"; it looks like {what}"
    return ""


@checked(compares_with=(GatedLayer.forward,))
def check_gated_layer(gated_layer):
    names = ("v_out", "h_out", "skip")
    for i, (in_ch, ch, k, n_classes, first) in enumerate(CASES):
        torch.manual_seed(i)
        layer = GatedLayer(in_ch, ch, k, n_classes, first).eval()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.5)
        v, h = torch.randn(2, in_ch, 6, 7), torch.randn(2, in_ch, 6, 7)
        labels = torch.tensor([0, n_classes - 1]) if n_classes else None
        case = f"case {i} ({'first layer' if first else 'later layer'}, k={k}, {n_classes or 'no'} classes)"
        with torch.no_grad():
            want = layer(v, h, labels)
            got = gated_layer(layer, v, h, labels)
        assert isinstance(got, (tuple, list)) and len(got) == 3, f"{case}: return (v_out, h_out, skip), got {got!r}"
        for name, g, w in zip(names, got, want):
            assert isinstance(g, torch.Tensor), f"{case}: {name} is a {type(g).__name__}, not a tensor"
            assert g.shape == w.shape, f"{case}: {name} has shape {tuple(g.shape)}, the library's {tuple(w.shape)}"
        for name, g, w in zip(names, got, want):
            if not torch.allclose(g, w, atol=1e-5):
                err = (g - w).abs().max().item()
                hint = _diagnose(layer, v, h, labels, got)
                raise AssertionError(f"{case}: {name} differs from the library's by up to {err:.3g}{hint}")
