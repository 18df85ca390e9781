"""Checks for notebook 05's implement-it exercise: MaskGIT's decoding schedule (tokens still masked per step)."""

from __future__ import annotations

import math

import torch

from minigen.exercises import checked
from minigen.masked_ar import MaskGIT, masked_count, masked_schedule
from minigen.tokenizers import VQVAE, VQConfig

STEPS = (1, 2, 3, 4, 5, 8, 12, 16, 32, 49, 64, 100, 256)
CASES = [(n, t) for n in (1, 2, 5, 16, 49, 64, 100, 256) for t in STEPS if t <= n]  # (N tokens, T passes)


def _sampled_counts(num_iters) -> dict[int, list[int]]:
    """trace["masked"] of the library's sampler itself, on a tiny untrained MaskGIT over 7 x 7 = 49 tokens."""
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, n_res=1, latent_dim=4, n_codes=16))
    model = MaskGIT.from_tokenizer(vq, n_layer=1, n_head=2, n_embd=16, dropout=0.0).eval()
    out = {}
    for T in num_iters:
        gen = torch.Generator().manual_seed(T)
        _, trace = model.sample(1, torch.tensor([0]), num_iter=T, return_trace=True, return_tokens=True, generator=gen)
        out[T] = trace["masked"]
    return out


def _float_rounding(n_tokens: int, num_iter: int, got: list[int], want: list[int]) -> str | None:
    """Say so if `got` is the library's schedule computed in low precision: off by exactly one only at steps where
    N cos(pi/2 (t+1)/T) is an integer (or within 1e-5 of one), so that float32 lands on the other side of it."""
    exact = [n_tokens * math.cos(math.pi / 2 * (t + 1) / num_iter) for t in range(num_iter)]
    differ = [t for t, (a, b) in enumerate(zip(got, want)) if a != b]
    if not differ or any(abs(got[t] - want[t]) != 1 or abs(exact[t] - round(exact[t])) > 1e-5 for t in differ):
        return None
    t = differ[0]
    angle = torch.tensor(math.pi / 2 * (t + 1) / num_iter, dtype=torch.float32)
    in_float32 = float(n_tokens * torch.cos(angle))
    near = "" if abs(exact[t] - round(exact[t])) < 1e-9 else " (to within 1e-5)"
    return (
        f"you leave {got[t]} masked after step {t} (0-based), the library leaves {want[t]}: this is float rounding. "
        f"There N cos(pi/2 (t+1)/T) = {n_tokens} cos(pi/2 * {t + 1}/{num_iter}) is {round(exact[t])} exactly{near}, "
        f"and your arithmetic put it on the other side before floor (in float32 it comes out as {in_float32:.8g}). "
        "Compute in Python floats (math.cos) or float64, or round (say to 6 decimals) before floor; the library "
        "adds 1e-9 before floor"
    )


@checked(compares_with=(masked_schedule, masked_count))
def check_masked_counts(masked_counts):
    """masked_counts(n_tokens, num_iter) must return the list of tokens still masked after each of the num_iter
    decoding passes, exactly as MaskGIT.sample decodes (cosine schedule, floor, >= 1 new token a pass, 0 at the end)."""
    sampled = _sampled_counts((1, 2, 8, 12, 49))
    for T, counts in sampled.items():  # the reference is the sampler's own behaviour at N = 49
        assert masked_schedule(49, T) == counts, "internal: the check's reference disagrees with MaskGIT.sample"
    for n, T in CASES:
        got = masked_counts(n, T)
        where = f"for N={n} tokens and T={T} steps"
        got = [int(c) for c in got]  # accept ints, numpy or 0-d tensors
        assert len(got) == T, f"{where} you return {len(got)} counts, one per step means {T}"
        assert got[-1] == 0, f"{where} {got[-1]} tokens are still masked after the last step; all must be revealed"
        prev = n
        for t, c in enumerate(got):
            assert c < prev, (
                f"{where} step {t} reveals no token ({prev} masked before, {c} after): every step must reveal "
                "at least one"
            )
            prev = c
        want = masked_schedule(n, T)
        if got != want:
            rounding = _float_rounding(n, T, got, want)
            if rounding:
                raise AssertionError(f"{where} {rounding}")
            t = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            raise AssertionError(
                f"{where} you leave {got[t]} masked after step {t} (0-based), the library leaves {want[t]} "
                f"(yours {got}, library {want}); the library keeps floor(N cos(pi/2 (t+1)/T)) masked"
            )
