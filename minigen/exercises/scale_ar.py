"""Checks for notebook 04's implement-it exercise: VAR's multi-scale residual quantisation."""

from __future__ import annotations

import torch

from minigen.exercises import checked
from minigen.tokenizers import MultiScaleVQ, MultiScaleVQConfig


def _tokenizer(scales, phi_mix: float, seed: int) -> MultiScaleVQ:
    """A small untrained MultiScaleVQ with a spread-out codebook (so nearest codes are never near-ties)."""
    with torch.random.fork_rng():  # leave the learner's global random state alone
        torch.manual_seed(seed)
        vq = MultiScaleVQ(
            MultiScaleVQConfig(channels=8, n_res=0, latent_dim=4, n_codes=32, scales=scales, phi_mix=phi_mix)
        )
        torch.nn.init.normal_(vq.quantizer.codebook.weight)
    return vq.eval()


@checked(compares_with=(MultiScaleVQ.quantize,))
def check_multiscale_quantize(multiscale_quantize):
    """multiscale_quantize(z, codebook, scales, phi, phi_mix) -> (codes per scale, f_hat) must match
    MultiScaleVQ.quantize on random latents, for several scale lists and phi_mix values."""
    cases = [((1, 2, 3, 4, 5, 7), 0.5), ((1, 2, 3, 4, 5, 7), 0.0), ((2, 4, 7), 1.0), ((1, 3, 5, 7), 0.5)]
    for case, (scales, phi_mix) in enumerate(cases):
        vq = _tokenizer(scales, phi_mix, seed=case)
        z = torch.randn(3, 4, 7, 7, generator=torch.Generator().manual_seed(100 + case))
        with torch.no_grad():
            want_codes, partial = vq.quantize(z)
            got = multiscale_quantize(z.clone(), vq.quantizer.codebook.weight.detach().clone(), scales, vq.phi, phi_mix)
        where = f"case {case} (scales {scales}, phi_mix {phi_mix})"
        assert isinstance(got, tuple) and len(got) == 2, f"{where}: return (codes, f_hat), got {type(got).__name__}"
        codes, f_hat = got
        assert len(codes) == len(scales), f"{where}: {len(codes)} token maps for {len(scales)} scales"
        for k, (c, w) in enumerate(zip(codes, want_codes)):
            c = torch.as_tensor(c)
            assert tuple(c.shape) == tuple(w.shape), (
                f"{where}: the token map of scale {k} has shape {tuple(c.shape)}, expected {tuple(w.shape)} "
                "(one s_k x s_k map per scale, coarsest first)"
            )
            wrong = int((c.long() != w).sum())
            assert wrong == 0, (
                f"{where}: {wrong} of {w.numel()} codes of scale {k} ({scales[k]}x{scales[k]}) differ from the "
                "library's"
                + (
                    " (the coarser scales agree: is the residual updated after each scale?)"
                    if k > 0
                    else " (scale 0 quantises the area-downsampled latent itself)"
                )
            )
        f_hat = torch.as_tensor(f_hat)
        shape = tuple(f_hat.shape)
        assert shape == tuple(z.shape), f"{where}: f_hat has shape {shape}, not {tuple(z.shape)}"
        err = float((f_hat - partial[-1]).abs().max())
        assert err < 1e-4, (
            f"{where}: the codes agree but f_hat differs from the library's by up to {err:.3g} (is each "
            "scale's contribution the bicubic upsampling of its code vectors, mixed with phi_k, summed over scales?)"
        )
