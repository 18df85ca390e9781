"""Sampling helpers every sampler shares: the knobs checked, logits warped, one token drawn per row.

Temperature, top-k (Fan et al. 2018) and top-p (Holtzman et al. 2020) reshape a next-token distribution;
classifier-free guidance (Ho & Salimans 2022) mixes conditional and unconditional logits; `sample_from_probs`
draws by inverting the cumulative distribution, reproducibly for a given generator, and never from
probabilities that are not finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_labels(labels, n_classes: int, n: int | None = None, allow_null: bool = False) -> torch.Tensor:
    """Validate class labels: integer, 1-D, in [0, n_classes) (or == n_classes, the null class)."""
    if n_classes == 0 and not allow_null:
        raise ValueError("this model is unconditional: pass labels=None")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.long().reshape(-1) if labels.dim() == 0 else labels.long()
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if n is not None and labels.numel() != n:
        raise ValueError(f"labels has {labels.numel()} entries for {n} images (one label per image)")
    hi = n_classes + 1 if allow_null else n_classes
    if labels.numel() and (labels.min() < 0 or labels.max() >= hi):
        raise ValueError(f"labels must lie in [0, {n_classes}), got min {int(labels.min())}, max {int(labels.max())}")
    return labels


MIN_TEMPERATURE = 1e-4  # a positive temperature below this would overflow the logits: use 0 (greedy) instead
MAX_CFG_SCALE = 1e3  # guidance scales in use lie between 1 and about 10; beyond this the logits overflow


def check_sampling_args(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0
):
    """Refuse sampling knobs that are out of range, naming the argument and what it accepts."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    if not (number(temperature) and (temperature == 0 or temperature >= MIN_TEMPERATURE)):
        raise ValueError(
            f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g} (smaller ones overflow the "
            f"logits), got {temperature!r}"
        )
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")
    if not (number(cfg_scale) and 0 <= cfg_scale <= MAX_CFG_SCALE):
        raise ValueError(f"cfg_scale must be a number in [0, {MAX_CFG_SCALE:g}], got {cfg_scale!r}")


def cfg_mix(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond). scale=1 is plain conditional."""
    return uncond_logits + scale * (cond_logits - uncond_logits)


def warp_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Logits (..., V) -> the probabilities (..., V) actually sampled from.

    Temperature 0 means greedy: all mass on the argmax. Speculative decoding needs this
    exact distribution for both draft and target, so it is a function of its own.
    """
    check_sampling_args(temperature, top_k, top_p)
    logits = logits if logits.dtype == torch.float64 else logits.float()  # float64 stays (exact tests)
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set whose mass reaches top_p: drop a token if the mass before it already does
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of probs (..., V) -> (...), by inverting the cumulative distribution
    with one uniform number per row (an order of magnitude cheaper than torch.multinomial on CPU).
    A zero-probability index is never drawn. Reproducible for a given generator, whatever device the
    probabilities live on (the uniform numbers are drawn on the generator's device)."""
    flat = probs.reshape(-1, probs.shape[-1]).float()  # (N, V)
    valid = torch.isfinite(flat).all() & (flat >= 0).all()  # else NaN rows would draw the last index, silently
    message = "the sampling probabilities are not finite and non-negative (the logits overflowed?)"
    if flat.is_cuda:
        torch._assert_async(valid, message)  # checked on the GPU, without waiting for it
    elif not bool(valid):
        raise ValueError(message)
    cdf = flat.cumsum(-1)  # (N, V)
    device = generator.device if generator is not None else flat.device
    u = torch.rand(flat.shape[0], 1, generator=generator, device=device).to(flat.device)  # (N, 1) in [0, 1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first index whose cdf exceeds u * total
    return idx.clamp_(max=flat.shape[-1] - 1).reshape(probs.shape[:-1])


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Warp logits (..., V) and draw one token per row -> (...) long."""
    return sample_from_probs(warp_logits(logits, temperature, top_k, top_p), generator)
