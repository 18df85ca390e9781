"""Checks for notebook 02's implement-it exercise: the vector-quantisation step of a VQ-VAE.

The learner writes `quantize(z, codebook, beta)`: nearest-code assignment, the straight-through estimator
and the codebook and commitment losses, i.e. what `VectorQuantizer.forward` does (without usage tracking and
dead-code restarts). The check compares values and gradients with the library on small random latents.
"""

from __future__ import annotations

import torch

from minigen.exercises import checked
from minigen.tokenizers import VectorQuantizer

CASES = [  # (batch, dim, height, width, n_codes, beta, seed)
    (2, 4, 3, 3, 8, 0.25, 0),
    (3, 2, 2, 5, 16, 1.5, 1),
    (1, 8, 4, 4, 5, 0.0, 2),
]


def _grads(out, z, codebook):
    """Gradients of a scalar with respect to the latents and the codebook (zeros where it does not depend on one)."""
    gz, gc = torch.autograd.grad(out, (z, codebook), retain_graph=True, allow_unused=True)
    return (torch.zeros_like(z) if gz is None else gz), (torch.zeros_like(codebook) if gc is None else gc)


def _close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@checked(compares_with=(VectorQuantizer.forward,))
def check_quantize(quantize):
    """quantize(z (B, D, h, w), codebook (K, D), beta) -> (quantised (B, D, h, w), codes (B, h, w), loss) must
    match minigen.tokenizers.VectorQuantizer in values and in the gradients it sends to z and to the codebook."""
    for B, D, h, w, K, beta, seed in CASES:
        case = f"case z {(B, D, h, w)}, {K} codes, beta={beta}"
        with torch.random.fork_rng():  # leave the caller's random state alone
            torch.manual_seed(seed)
            codebook_init = torch.randn(K, D)
            z_init = torch.randn(B, D, h, w) * 1.5
            w_quant = torch.randn(B, D, h, w)  # a random "decoder gradient" arriving at the quantised latents

        library = VectorQuantizer(K, D, beta=beta, restart_every=0).eval()  # eval: no usage tracking, no restarts
        with torch.no_grad():
            library.codebook.weight.copy_(codebook_init)
        z_ref = z_init.clone().requires_grad_(True)
        q_ref, codes_ref, loss_ref = library(z_ref)

        z = z_init.clone().requires_grad_(True)
        codebook = codebook_init.clone().requires_grad_(True)
        result = quantize(z, codebook, beta)
        assert isinstance(result, tuple) and len(result) == 3, (
            f"quantize must return (quantised, codes, loss), got {type(result).__name__}"
        )
        quant, codes, loss = result
        assert torch.is_tensor(codes) and codes.shape == codes_ref.shape, (
            f"{case}: codes must have shape {tuple(codes_ref.shape)} (one code per latent position), "
            f"got {tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__}"
        )
        wrong = int((codes.long() != codes_ref).sum())
        assert wrong == 0, (
            f"{case}: {wrong} of {codes.numel()} codes differ from the nearest codebook entries "
            "(distance from each D-dimensional latent vector to every code, argmin over the codes)"
        )
        assert torch.is_tensor(quant) and quant.shape == z.shape, (
            f"{case}: the quantised latents must have the shape of z {tuple(z.shape)}, "
            f"got {tuple(quant.shape) if torch.is_tensor(quant) else type(quant).__name__}"
        )
        assert _close(quant.detach(), q_ref.detach()), f"{case}: quantised latents are not the chosen codes' vectors"
        assert torch.is_tensor(loss) and loss.dim() == 0, f"{case}: the loss must be a scalar tensor"
        assert _close(loss.detach(), loss_ref.detach()), (
            f"{case}: loss {float(loss):.6f}, the library's {float(loss_ref):.6f} "
            "(mean squared codebook term + beta * mean squared commitment term)"
        )

        gz, gc = _grads((quant * w_quant).sum(), z, codebook)
        gz_ref = torch.autograd.grad((q_ref * w_quant).sum(), z_ref, retain_graph=True)[0]
        assert _close(gz, gz_ref), (
            f"{case}: the decoder's gradient does not reach z unchanged: the straight-through estimator is "
            "z + sg(e - z), so d(quantised)/dz is the identity"
        )
        assert _close(gc, torch.zeros_like(gc)), (
            f"{case}: the decoder's gradient reaches the codebook through the quantised latents; with the "
            "straight-through estimator only the codebook loss moves the codes"
        )

        gz, gc = _grads(loss, z, codebook)
        gz_ref, gc_ref = torch.autograd.grad(loss_ref, (z_ref, library.codebook.weight))
        assert _close(gc, gc_ref), (
            f"{case}: the loss sends the wrong gradient to the codebook: it should come from "
            "||sg(z) - e||^2 alone, with weight 1 (is beta on the wrong term, or is a stop-gradient missing?)"
        )
        assert _close(gz, gz_ref), (
            f"{case}: the loss sends the wrong gradient to z: it should come from beta * ||z - sg(e)||^2 alone "
            "(is beta on the wrong term, or is a stop-gradient missing?)"
        )
